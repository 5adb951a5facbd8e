"""Faults in a two-process run: a non-finite loss on one process, SIGTERM to one process, a full disk on
one process during a save. Every process skips or stops together, the last complete checkpoint
loads, and nothing hangs (every launch has a timeout)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from test_pretraining_scripts import NO_DROPOUT, ROOT, TINY_AUDIO, audio_folder  # noqa: E402
from test_scale_out import ENV, crash_lines, port  # noqa: E402

SCRIPT = Path(__file__).parent / "faulty_pretraining.py"
MANIFEST = "checkpoint_manifest.json"


def command(out: Path, data: Path, steps: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port(),
        str(SCRIPT), "--output_dir", str(out), "--train_dir", str(data), "--config_overrides", TINY_AUDIO + NO_DROPOUT,
        "--min_length_seconds", "0", "--max_train_steps", str(steps), "--per_device_train_batch_size", "2",
        "--learning_rate", "1e-3", "--logging_steps", "1", "--checkpointing_steps", "1",
        "--checkpoints_total_limit", "20", "--cache_dir", str(out.parent / "cache"), *extra,
    ]  # fmt: skip


def launch(args: list[str], fault: str = "none::", timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, env={**ENV, "FAULT": fault}, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def summary(out: Path) -> dict:
    return json.loads((out / "train_summary.json").read_text())


def complete_checkpoints(out: Path) -> list[int]:
    folders = (out / "checkpoints").glob("step-*")
    return sorted(int(p.name[5:]) for p in folders if (p / MANIFEST).exists())


def test_a_nonfinite_loss_on_one_process_skips_the_update_on_every_process(tmp_path):
    data = audio_folder(tmp_path / "data", count=8, seconds=(0.5, 0.5))
    out = tmp_path / "out"
    result = launch(command(out, data, 5), fault="nonfinite:1:2,3")
    assert result.returncode == 0, crash_lines(result.stderr) + result.stderr[-3000:]
    done = summary(out)
    # updates 2 and 3 were skipped everywhere (process 0's own losses were finite) and not counted
    assert done["updates"] == 5 and done["skipped_nonfinite_updates"] == 2
    assert [step for step, *_ in done["history"]] == [1, 2, 3, 4, 5]
    assert result.stderr.count("NaN/inf loss: update skipped") == 4  # both processes, both updates
    weights = load_file(out / "pretraining_model" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_sigterm_to_one_process_stops_both_after_the_same_update(tmp_path):
    data = audio_folder(tmp_path / "data", count=8, seconds=(0.5, 0.5))
    out = tmp_path / "out"
    args = command(out, data, 400)
    process = subprocess.Popen(args, env={**ENV, "FAULT": "none::"}, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 300
        while not complete_checkpoints(out) or not (out / ".pid-1").exists():
            assert process.poll() is None and time.time() < deadline
            time.sleep(0.05)
        os.kill(int((out / ".pid-1").read_text()), signal.SIGTERM)  # process 1 only
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0
    stops = [line for line in stderr.splitlines() if "stopped by SIGTERM after update" in line]
    assert len(stops) == 2, stderr[-3000:]  # both processes say so, for the same update
    stopped_at = {int(line.split("after update ")[1].split(";")[0]) for line in stops}
    assert len(stopped_at) == 1
    (update,) = stopped_at
    assert complete_checkpoints(out)[-1] == update and update < 400
    assert not list((out / "checkpoints").glob(".incomplete-*"))
    resumed = launch(command(out, data, update + 2, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, crash_lines(resumed.stderr) + resumed.stderr[-3000:]
    assert f"step-{update} at update {update}" in resumed.stderr
    assert summary(out)["updates"] == update + 2


def test_a_full_disk_on_one_process_stops_both_and_keeps_the_last_checkpoint(tmp_path):
    data = audio_folder(tmp_path / "data", count=8, seconds=(0.5, 0.5))
    out = tmp_path / "out"
    result = launch(command(out, data, 6), fault="enospc:1:3")
    assert result.returncode == 1, crash_lines(result.stderr) + result.stderr[-3000:]
    assert "the disk is full: writing checkpoint" in result.stderr and "step-3 failed" in result.stderr
    assert f"the previous checkpoint {out / 'checkpoints' / 'step-2'} is intact" in result.stderr
    assert "failed on another process" in result.stderr  # process 0 stopped too, instead of waiting
    assert complete_checkpoints(out) == [1, 2]
    assert not list((out / "checkpoints").glob(".incomplete-*")) and not (out / "config.json").exists()
    resumed = launch(command(out, data, 4, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, crash_lines(resumed.stderr) + resumed.stderr[-3000:]
    assert "step-2 at update 2" in resumed.stderr and summary(out)["updates"] == 4
