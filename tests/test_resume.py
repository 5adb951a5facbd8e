"""Never lose a checkpoint: a checkpoint of another model stops the run before anything is written,
rotation deletes only the run's own checkpoints, and a topology change is either exact or refused."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from data2vec_hf.pretraining import pretrain_text
from data2vec_hf.pretraining.checkpoints import write_manifest
from data2vec_hf.pretraining.run_record import RUN_RECORD, check_topology

sys.path.insert(0, str(Path(__file__).parent))
from test_faults import train  # noqa: E402
from test_pretraining_scripts import TINY_TEXT, TINY_V2  # noqa: E402


def text_args(tmp_path: Path, *extra: str) -> list[str]:
    data = tmp_path / "train.txt"
    if not data.exists():
        data.write_text(
            "\n".join(f"the quick brown fox number {i} jumps over the lazy dog" for i in range(40))
        )
    return ["--train_file", str(data), "--max_seq_length", "64", "--bpe_vocab_size", "300", *extra]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def v1_run(tmp_path_factory):
    """A finished data2vec 1.0 text run with checkpoints step-2 and step-4."""
    root = tmp_path_factory.mktemp("v1")
    out = root / "out"
    args = text_args(root, "--config_overrides", TINY_TEXT, "--checkpointing_steps", "2")
    assert train(pretrain_text.SPEC, out, *args, steps=4) == 0
    return out, args


@pytest.mark.parametrize(
    "change, named",
    [
        (
            ["--version", "2", "--config_overrides", TINY_V2["text"]],
            "it is a data2vec 1.0 text checkpoint (Data2VecTextForPreTraining) and this run is data2vec 2.0 text",
        ),
        (
            ["--config_overrides", TINY_TEXT.replace("hidden_size=32", "hidden_size=48")],
            "config hidden_size=32 -> 48",
        ),
        (
            ["--config_overrides", TINY_TEXT.replace("num_hidden_layers=2", "num_hidden_layers=3")],
            "weight shape(s) differ",
        ),
    ],
    ids=["version", "size", "layers"],
)
def test_a_checkpoint_of_another_model_stops_the_run_before_anything_is_written(
    v1_run, change, named, tmp_path, capsys
):
    """The issue's case: a 1.0 run's folder resumed with --version 2 (or another size) used to report
    every checkpoint as unloadable, start from scratch in the same folder and let rotation delete them."""
    out = tmp_path / "run"
    shutil.copytree(v1_run[0], out)
    before = snapshot(out)
    args = [a for a in v1_run[1] if a not in ("--config_overrides", TINY_TEXT)] + change
    code = train(pretrain_text.SPEC, out, *args, "--resume_from_checkpoint", "latest", steps=6)
    error = capsys.readouterr().err
    assert code == 2, error[-2000:]
    assert f"checkpoint {out / 'checkpoints' / 'step-4'} does not fit this run's model" in error
    assert named in error and "Nothing was loaded or deleted" in error
    after = snapshot(out)
    assert {k: v for k, v in after.items() if not k.startswith(".")} == {
        k: v for k, v in before.items() if not k.startswith(".")
    }  # not a byte of the user's run changed (only the start-up token is new)


def test_an_older_checkpoint_without_a_record_that_does_not_fit_is_refused_not_skipped(
    v1_run, tmp_path, capsys
):
    out = tmp_path / "run"
    shutil.copytree(v1_run[0], out)
    for folder in (out / "checkpoints").iterdir():  # as written before checkpoints had a record
        (folder / RUN_RECORD).unlink()
        write_manifest(folder)
    before = snapshot(out / "checkpoints")
    args = [a for a in v1_run[1] if a not in ("--config_overrides", TINY_TEXT)]
    args += ["--config_overrides", TINY_TEXT.replace("hidden_size=32", "hidden_size=48")]
    code = train(pretrain_text.SPEC, out, *args, "--resume_from_checkpoint", "latest", steps=6)
    error = capsys.readouterr().err
    assert code == 2 and "does not fit this run's model" in error and "size mismatch" in error, error[-2000:]
    assert snapshot(out / "checkpoints") == before


def test_rotation_never_deletes_the_checkpoints_of_an_earlier_run(v1_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(v1_run[0], out)
    earlier = snapshot(out / "checkpoints" / "step-4")
    args = [*v1_run[1][:-2], "--checkpointing_steps", "1", "--checkpoints_total_limit", "1"]
    assert train(pretrain_text.SPEC, out, *args, "--overwrite_output_dir", "--seed", "7", steps=3) == 0
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    # the new run keeps its own last checkpoint; the earlier run's step-4 is untouched
    # (its step-2 was replaced by the new run's step-2 -- --overwrite_output_dir -- then rotated away)
    assert kept == ["step-3", "step-4"]
    assert snapshot(out / "checkpoints" / "step-4") == earlier
    records = {
        p.name: json.loads((p / RUN_RECORD).read_text())["run_id"] for p in (out / "checkpoints").iterdir()
    }
    assert records["step-3"] != records["step-4"]


def test_a_resumed_run_keeps_its_run_id_and_rotates_its_own_checkpoints(v1_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(v1_run[0], out)
    run_id = json.loads((out / "checkpoints" / "step-4" / RUN_RECORD).read_text())["run_id"]
    args = [*v1_run[1][:-2], "--checkpointing_steps", "1", "--checkpoints_total_limit", "2"]
    assert train(pretrain_text.SPEC, out, *args, "--resume_from_checkpoint", "latest", steps=6) == 0
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["step-5", "step-6"]  # step-2 and step-4 were the same run's: rotated away
    assert {json.loads((out / "checkpoints" / k / RUN_RECORD).read_text())["run_id"] for k in kept} == {
        run_id
    }


def test_a_fresh_start_refuses_a_folder_that_holds_checkpoints(v1_run, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(v1_run[0] / "checkpoints" / "step-4", out / "checkpoints" / "step-4")
    before = snapshot(out / "checkpoints")
    code = train(pretrain_text.SPEC, out, *v1_run[1], steps=2)
    error = capsys.readouterr().err
    assert code == 2 and "is not empty (it holds checkpoints)" in error and "--overwrite_output_dir" in error
    assert snapshot(out / "checkpoints") == before


TOPOLOGY = {
    "num_processes": 2, "gradient_accumulation_steps": 1, "per_device_train_batch_size": 4, "max_tokens": None,
    "streaming": False, "stream_workers": None, "sharded": False,
}  # fmt: skip


@pytest.mark.parametrize(
    "change, refused",
    [
        ({"num_processes": 1, "gradient_accumulation_steps": 2}, None),  # the same update, split otherwise
        ({"num_processes": 4, "gradient_accumulation_steps": 1}, "this run would take 4 process(es) x 1"),
        ({"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2}, "a different batch"),
        ({"sharded": True}, "holds a replicated (DDP) model and this run is sharded (FSDP2)"),
    ],
)
def test_a_topology_change_is_exact_or_refused(change, refused, caplog):
    from data2vec_hf.pretraining.checkpoints import CheckpointError

    caplog.set_level("INFO", logger="data2vec_hf.pretraining")
    current = TOPOLOGY | change
    if refused is None:
        check_topology(Path("step-6"), TOPOLOGY, current)
        assert (
            "resuming on another topology: 1 process(es) x 2 micro-batch(es) x 4 examples per update"
            in caplog.text
        )
        assert "written with 2 process(es) x 1 micro-batch(es) x 4 examples" in caplog.text
    else:
        with pytest.raises(CheckpointError, match=refused.replace("(", r"\(").replace(")", r"\)")):
            check_topology(Path("step-6"), TOPOLOGY, current)


def test_a_streaming_run_refuses_any_topology_change():
    from data2vec_hf.pretraining.checkpoints import CheckpointError

    stream = TOPOLOGY | {"streaming": True, "stream_workers": 2}
    check_topology(Path("step-6"), stream, dict(stream))  # unchanged: fine
    for change in ({"stream_workers": 1}, {"num_processes": 1, "gradient_accumulation_steps": 2}):
        with pytest.raises(CheckpointError, match="resumed only on the topology that wrote it"):
            check_topology(Path("step-6"), stream, stream | change)


def test_resuming_with_another_per_update_batch_is_refused_end_to_end(v1_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(v1_run[0], out)
    before = snapshot(out / "checkpoints")
    args = [*v1_run[1], "--gradient_accumulation_steps", "2", "--resume_from_checkpoint", "latest"]
    code = train(pretrain_text.SPEC, out, *args, steps=6)
    error = capsys.readouterr().err
    assert code == 2 and "1 process(es) x 1 micro-batch(es) x 4 examples per update" in error, error[-2000:]
    assert snapshot(out / "checkpoints") == before
