"""Online evaluation wired into the pretraining loop: probes while training, in the summary, the
trackers and the progress bar, the same with one process or two (the probes themselves are tested in
test_evaluation*.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_pretraining_scripts import ROOT, TINY_TEXT, TINY_V2, common  # noqa: E402
from test_scale_out import FSDP, port  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "train.txt"
    path.write_text(
        "\n".join(f"the quick brown fox number {i} jumps over the lazy dog {i % 5}" for i in range(80))
    )
    return path


def run_text(out: Path, text_file: Path, processes: int, *launcher: str, version: int = 1, steps: int = 2):
    args = common(out, steps, batch=4, train_file=text_file, max_seq_length=64, bpe_vocab_size=300)
    config = TINY_TEXT if version == 1 else TINY_V2["text"]
    args += ["--config_overrides", config, "--version", str(version), "--eval_embedded", "--eval_at_start",
             "--eval_steps", "1", "--with_tracking"]  # fmt: skip
    how = list(launcher) or (["--multi_gpu"] if processes > 1 else ["--cpu"])
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *how, "--num_processes", str(processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port(),
        str(ROOT / "pretraining" / "pretrain_text.py"), *args,
    ]  # fmt: skip
    result = subprocess.run(command, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((out / "train_summary.json").read_text()), result.stderr


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, text_file):
    out = tmp_path_factory.mktemp("one") / "out"
    return out, *run_text(out, text_file, 1)


def test_probes_run_while_training_and_land_in_summary_trackers_and_bar(one_process):
    out, summary, stderr = one_process
    history = summary["eval_history"]
    assert [entry["update"] for entry in history] == [0, 1, 2]  # at start, every update, at the end
    for entry in history:
        assert 0 <= entry["eval/linear_best"] <= 1 and 0 <= entry["eval/knn_best"] <= 1
        assert entry["eval/seconds"] > 0 and "eval/linear_layer_0" in entry
    assert summary["eval_seconds"] > 0 and summary["train_seconds"] > 0
    assert summary["last"]["eval/linear_best"] == history[-1]["eval/linear_best"]
    assert "probe=" in stderr  # the latest best-layer accuracy in the progress bar
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((out / "runs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "eval/linear_best" in tags and "eval/knn_best" in tags
    assert [event.step for event in events.Scalars("eval/linear_best")] == [0, 1, 2]


def test_two_processes_report_the_accuracy_of_one(one_process, text_file, tmp_path):
    two, _ = run_text(tmp_path / "two", text_file, 2)
    one = one_process[1]
    assert two["num_processes"] == 2
    # every probe of both runs is compared (zip would stop at the shorter history): at start, after 2 updates
    assert len(one["eval_history"]) == len(two["eval_history"]) == 3
    for a, b in zip(one["eval_history"], two["eval_history"], strict=True):
        assert a["update"] == b["update"]
        # the same weights (update 0) give exactly the same accuracies; after training, the weights of
        # one and two processes differ by float rounding (~1e-5), which may flip a test example or two
        tolerance = 1e-6 if a["update"] == 0 else 0.01
        for key in ("eval/linear_best", "eval/knn_best"):
            assert b[key] == pytest.approx(a[key], abs=tolerance), (a["update"], key)


def test_probes_of_a_sharded_model(text_file, tmp_path):
    """FSDP2: the encoder is evaluated with its root parameters gathered."""
    summary, _ = run_text(tmp_path / "fsdp", text_file, 2, *FSDP, version=2, steps=1)
    assert "FSDP2" in summary["parallelism"] and len(summary["eval_history"]) == 2
