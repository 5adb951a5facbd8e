"""The benchmarks run and print the JSON they promise (figures are measured by `make bench`, not here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pretrain_throughput_prints_json():
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "pretrain_throughput.py"),
        "--size",
        "tiny",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--seconds",
        "1",
        "--clone_batch",
        "4",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for version in ("v1", "v2"):
        assert report[version]["samples_per_s"] > 0 and report[version]["masked_targets_per_s"] > 0
        assert report[version]["peak_mem_mb"] >= 0
    assert report["v2"]["clone_batch"] == 4
    expected = report["v2"]["masked_targets_per_s"] / report["v1"]["masked_targets_per_s"]
    assert abs(report["targets_per_s_ratio"] - expected) < 1e-2
