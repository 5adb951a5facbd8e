"""`make bench-loop` (benchmarks/pretrain_loop.py) runs the real pretraining script on real files and
reports the loop against the pure step (figures are measured by `make bench-loop`, not here)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_loop_mode_times_a_real_run_on_resampled_flac_files(tmp_path):
    """Tiny audio 2.0, 1 worker, 1 + 2 updates on 44.1 kHz FLAC files: every figure is there and finite,
    and the run trained on the files, resampled to 16 kHz."""
    command = [
        sys.executable, str(ROOT / "benchmarks" / "pretrain_loop.py"), "--configs", "audio-v2",
        "--size", "tiny", "--num_workers", "1", "--threads", "1", "--warmup", "1", "--updates", "2",
        "--audio_seconds", "2.0", "2.5", "--max_tokens", "40000", "--work_dir", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["mode"] == "loop" and report["size"] == "tiny" and report["version"] == 2
    assert report["timed_updates"] == 2 and report["warmup_updates"] == 1
    config = report["configs"]["audio-v2"]
    for key in (
        "loop_seconds_per_update", "step_seconds_per_update", "main_cpu_seconds_per_update",
        "step_cpu_seconds_per_update", "parameters_m",
    ):  # fmt: skip
        assert math.isfinite(config[key]) and config[key] > 0, (key, config)
    for key in ("overhead_ratio", "overhead_ratio_with_checkpoints", "loop_compute_over_step"):
        assert math.isfinite(config[key]) and config[key] > -1, (key, config)
    assert 0 <= config["data_wait_fraction"] <= 1 and config["worker_cpu_seconds_per_update"] >= 0
    parts = config["loop_seconds_per_update_by_part"]
    assert set(parts) == {"data_wait", "micro_batch", "update", "log", "checkpoint", "other"}
    assert parts["micro_batch"] > 0 and parts["update"] > 0 and all(v >= -1e-4 for v in parts.values())
    assert abs(sum(parts.values()) - config["loop_seconds_per_update"]) < 1e-3
    assert config["checkpoint"]["seconds"] > 0 and config["checkpoint"]["every_updates"] == 500
    assert config["dataloader_num_workers"] == 1 and config["epochs_crossed_in_window"] == 0
    assert config["torch_threads"] == report["threads"] == 1
    assert config["examples_seen"] > 0 and config["batch"]["examples_per_update"] >= 1
    # the pipeline read the 44.1 kHz files and resampled every one of them to 16 kHz
    files, pipeline = config["files"], config["pipeline"]
    assert files["format"].startswith("FLAC") and files["sampling_rate"] == 44_100
    assert pipeline["kept"] == files["files"] == pipeline["notes"]["resampled"] > 0
    assert abs(pipeline["decoded_samples_16k"] - 16_000 * files["total_seconds"]) <= files["files"]
    assert len(list((tmp_path / "audio-v2" / "data").glob("*.flac"))) == files["files"]
