"""Start-up of a multi-process run: the output folder is claimed once, never raced on, and a folder that
not every process sees (node-local disks) stops the run before anything is written."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))
from test_pretraining_scripts import ROOT, TINY_TEXT  # noqa: E402
from test_scale_out import port  # noqa: E402

ROUNDS = 25  # start-ups of 4 processes at once
WORLD = 4


def claim(folder: Path, rank: int, world: int, **flags):
    """``claim_output_dir`` as process ``rank`` of ``world``; returns None or the error message."""
    from data2vec_hf.pretraining.output_dir import OutputDirError, claim_output_dir

    args = SimpleNamespace(
        output_dir=str(folder),
        resume_from_checkpoint=flags.get("resume"),
        overwrite_output_dir=flags.get("overwrite", False),
    )
    accelerator = SimpleNamespace(is_main_process=rank == 0, num_processes=world, process_index=rank)
    try:
        claim_output_dir(args, accelerator)
    except OutputDirError as error:
        return str(error)
    return None


def start_up_many_times(rank: int, world: int, port: int, root: str, results: str) -> None:
    """Every process claims fresh folders at the same moment, ROUNDS times; then a folder with earlier
    checkpoints, and folders that differ between processes (node-local disks)."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    lines = []
    try:
        root = Path(root)
        for i in range(ROUNDS):
            dist.barrier()  # all processes start the round together
            lines.append(f"fresh {i}: {claim(root / f'fresh{i}', rank, world)}")
        dist.barrier()
        lines.append(f"earlier: {claim(root / 'earlier', rank, world)}")
        lines.append(f"resumed: {claim(root / 'earlier', rank, world, resume='latest')}")
        # every process its own folder, as with a disk per node
        lines.append(f"local: {claim(root / f'local{rank}', rank, world)}")
    except Exception:
        lines.append(traceback.format_exc())
    finally:
        dist.destroy_process_group()
        Path(results, f"rank{rank}.txt").write_text("\n".join(lines))


def test_start_up_from_several_processes_never_races(tmp_path):
    root, results = tmp_path / "runs", tmp_path / "results"
    results.mkdir()
    (root / "earlier" / "checkpoints" / "step-3").mkdir(parents=True)  # someone else's run
    context = mp.start_processes(
        start_up_many_times,
        args=(WORLD, int(port()), str(root), str(results)),
        nprocs=WORLD,
        start_method="spawn",
        join=False,
    )
    deadline = time.monotonic() + 120
    while not context.join(timeout=5):  # a process out of step with the others would hang the rest
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError("the start-up hung: the processes disagreed about the output folder")
    outcome = {rank: (results / f"rank{rank}.txt").read_text().splitlines() for rank in range(WORLD)}
    for rank, lines in outcome.items():
        assert len(lines) == ROUNDS + 3, (rank, lines)
        assert lines[:ROUNDS] == [f"fresh {i}: None" for i in range(ROUNDS)], (rank, lines)
        # the same verdict on every process: none goes on while another stops
        assert (
            lines[ROUNDS].startswith("earlier: --output_dir ")
            and "is not empty (it holds checkpoints)" in lines[ROUNDS]
        )
        assert lines[ROUNDS + 1] == "resumed: None"
        assert (
            lines[ROUNDS + 2].startswith("local: --output_dir ")
            and "of the main process is not shared by all processes" in lines[ROUNDS + 2]
        )
        assert lines[ROUNDS:] == outcome[0][ROUNDS:]
    # the main process's folder is the one named; processes 1-3 are the ones that cannot see it
    assert (
        "process 1 on" in outcome[0][-1]
        and "process 3 on" in outcome[0][-1]
        and "process 0 on" not in outcome[0][-1]
    )
    left = sorted(p.name for p in (root / "fresh0").iterdir())
    assert left == [".data2vec-run-token"]  # no probe file of any process left behind


def test_a_folder_with_only_an_empty_checkpoints_folder_counts_as_empty(tmp_path):
    (tmp_path / "out" / "checkpoints").mkdir(parents=True)
    assert claim(tmp_path / "out", 0, 1) is None


def test_two_loopback_nodes_with_their_own_output_dirs_stop_before_any_checkpoint(tmp_path):
    """Two torchrun "nodes" on 127.0.0.1, each given its own --output_dir (as with node-local disks):
    both exit with code 2 and the message, and no checkpoint is written anywhere."""
    text = tmp_path / "train.txt"
    text.write_text("\n".join(f"the quick brown fox number {i} jumps over the lazy dog" for i in range(40)))
    rendezvous = port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    nodes = []
    for rank in (0, 1):
        out = tmp_path / f"node{rank}" / "out"
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
            "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", rendezvous,
            # the training process's stderr into a file, apart from torchrun's own failure report
            "--log-dir", str(tmp_path / f"logs{rank}"), "--redirects", "2",
            str(ROOT / "pretraining" / "pretrain_text.py"), "--output_dir", str(out), "--train_file", str(text),
            "--config_overrides", TINY_TEXT, "--max_seq_length", "64", "--bpe_vocab_size", "300",
            "--max_train_steps", "2", "--checkpointing_steps", "1", "--cache_dir", str(tmp_path / f"cache{rank}"),
        ]  # fmt: skip
        nodes.append(
            subprocess.Popen(
                command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
        )
    reports = [node.communicate(timeout=300)[1] for node in nodes]
    assert all(node.returncode != 0 for node in nodes)
    errors = [next((tmp_path / f"logs{rank}").rglob("stderr.log")).read_text() for rank in (0, 1)]
    # a node that died by a signal shows why in its own stderr, not in torchrun's report
    assert all("exitcode  : 2" in report for report in reports), (
        reports[0][-1500:] + reports[1][-1500:] + errors[0][-3000:] + errors[1][-3000:]
    )
    assert "of the main process is not shared by all processes: process 1 on" in errors[0], errors[0][-3000:]
    assert "(--output_dir " in errors[0] and "node1" in errors[0]
    assert errors[1].count("error: ") == 0  # printed once, by the main process
    assert "Traceback" not in errors[0] + errors[1], errors[0][-3000:] + errors[1][-3000:]
    for rank in (0, 1):
        assert not (tmp_path / f"node{rank}" / "out" / "checkpoints").exists()
