"""The benchmark runs and prints the JSON it promises (figures are measured by `make bench`, not here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_pretrain_throughput_reports_mfu_for_every_config():
    command = [
        sys.executable, str(ROOT / "benchmarks" / "pretrain_throughput.py"), "--size", "tiny",
        "--configs", "audio-v1,audio-v2,vision-v2,text-v2", "--steps", "1", "--warmup", "0", "--clone_batch", "2",
        "--peak_matmul_size", "1024",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["peak"]["measured_tflops"] > 0 and report["precision"] == "fp32"
    assert set(report["configs"]) == {"audio-v1", "audio-v2", "vision-v2", "text-v2"}
    for name, config in report["configs"].items():
        assert (
            config["samples_per_s"] > 0 and config["masked_targets_per_s"] > 0 and config["peak_mem_mb"] >= 0
        )
        assert config["flops_per_step"] > 0
        # seconds_per_step is rounded to 1 ms, which tiny steps of ~10 ms feel
        seconds = config["flops_per_step"] / config["achieved_flops_per_s"]
        assert abs(seconds - config["seconds_per_step"]) <= 0.0005 + 1e-9, (name, seconds, config)
        expected = config["achieved_flops_per_s"] / (report["peak"]["measured_tflops"] * 1e12)
        assert config["mfu"] == pytest.approx(expected, rel=2e-3, abs=1e-4), name
    peaks = report["peak"]["all_measurements_tflops"]
    assert len(peaks) == 5 and report["peak"]["measured_tflops"] == pytest.approx(max(peaks), abs=1e-4)
    assert report["configs"]["audio-v2"]["clone_batch"] == 2
    ratio = (
        report["configs"]["audio-v2"]["masked_targets_per_s"]
        / report["configs"]["audio-v1"]["masked_targets_per_s"]
    )
    assert abs(report["audio_targets_per_s_ratio_v2_v1"] - ratio) < 1e-2


def test_grouped_convolution_flops_are_counted_once():
    """torch's formula counts a grouped convolution's weight gradient `groups` times; ours does not."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch
    from pretrain_throughput import count_flops

    class Conv(torch.nn.Module):
        def __init__(self, groups):
            super().__init__()
            self.conv = torch.nn.Conv1d(16, 16, 5, groups=groups, bias=False)

        def forward(self, x):
            out = self.conv(x)
            return type("Out", (), {"loss": out.square().mean()})()

    x = torch.randn(2, 16, 50, requires_grad=False)
    forward = 2 * 2 * 46 * 16 * 16 * 5  # batch x length x out x in x kernel, per group: / groups
    for groups in (1, 4):
        # forward + weight gradient (no input gradient: x needs none)
        assert count_flops(Conv(groups), {"x": x}) == 2 * forward // groups


def test_learning_efficiency_writes_curves_baselines_and_plot(tmp_path):
    """A tiny budget: every modality and version gets a random-init point and a trained point, in JSON
    and in the PNG (the full run is `make bench-learning`)."""
    command = [
        sys.executable, str(ROOT / "benchmarks" / "learning_efficiency.py"), "--size", "tiny",
        "--budget_seconds", "2", "--eval_points", "1", "--max_probe_examples", "40",
        "--max_train_samples", "64", "--output_dir", str(tmp_path),
        "--extra_args", "--learning_rate 0.0003",  # passed on to every pretraining run's parser
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "learning_efficiency.json").read_text())
    png = (tmp_path / "learning_efficiency.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert report["budget_seconds_per_model"] == 2 and set(report["modalities"]) == {
        "audio",
        "vision",
        "text",
    }
    for modality, entry in report["modalities"].items():
        base = entry["baseline"]
        assert 0 <= base["chance"] < 1 and 0 <= base["linear"] <= 1 and 0 <= base["knn"] <= 1
        assert [run["version"] for run in entry["runs"]] == [1, 2]
        for run in entry["runs"]:
            assert run["learning_rate"] == 3e-4 and run["extra_args"] == "--learning_rate 0.0003"
            curve = run["curve"]
            assert curve[0]["updates"] == 0 and curve[0]["seconds"] == 0  # the random init
            assert len(curve) == 2 and curve[1]["updates"] == run["updates"] > 0, (modality, run)
            assert curve[1]["seconds"] >= 2 and run["training_seconds"] >= 2
            for point in curve:
                layers = [k for k in point if k.startswith("eval/linear_layer_")]
                assert len(layers) >= 3  # block input + 2 blocks (+ CLS rows for 2.0 images)
                assert point["eval/linear_best"] == max(point[k] for k in layers)
        assert entry["train_examples"] == entry["test_examples"] == 40  # --max_probe_examples
    assert "init lin" in result.stdout and "baseline" in result.stdout
