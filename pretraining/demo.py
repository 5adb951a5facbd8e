#!/usr/bin/env python
"""`make demo`: pretrain a small data2vec audio model for a few minutes on the embedded speech corpus
(synthesised offline with espeak-ng), then load it with ``AutoModel`` and report what it learned: the loss,
and what a linear probe on its frozen features scores on the embedded spoken-word probe set (unseen
speakers) before and after pretraining (``data2vec-probe --embedded --random_init --baseline``).

    python pretraining/demo.py [--output_dir demo_output/audio] [--max_train_steps 150]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SMALL_MODEL = (
    "hidden_size=128,num_hidden_layers=4,num_attention_heads=4,intermediate_size=512,"
    "conv_dim=(128,128,128,128,128,128,128),num_conv_pos_embedding_groups=8,average_top_k_layers=3,"
    "ema_anneal_end_step={steps}"
)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--output_dir", default="demo_output/audio", help="where the demo model is written (replaced)"
    )
    parser.add_argument(
        "--max_train_steps", type=int, default=100, help="optimizer updates (about 2 s each on 2 cores)"
    )
    args = parser.parse_args()
    output_dir = Path(args.output_dir)
    minutes = pretrain(output_dir, args.max_train_steps)
    model, clip, seconds, hidden = load_as_a_user_would(output_dir)
    probed = probe_features(output_dir)
    if probed is None:
        print("the probe failed (see above)", file=sys.stderr)
        return 1
    report(output_dir, minutes, model, clip, seconds, hidden, probed)
    return 0


def pretrain(output_dir: Path, steps: int) -> float:
    """Pretrain the small audio model with ``accelerate launch``; returns the minutes it took."""
    shutil.rmtree(output_dir, ignore_errors=True)
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        str(HERE / "pretrain_audio.py"),
        "--output_dir", str(output_dir),
        "--config_overrides", SMALL_MODEL.format(steps=steps),
        "--max_train_steps", str(steps),
        "--per_device_train_batch_size", "8",
        "--max_length_seconds", "4",
        "--logging_steps", "10",
        "--checkpointing_steps", "50",
    ]  # fmt: skip
    shown = " ".join(command[command.index("--output_dir") :])
    print(f"$ accelerate launch pretraining/pretrain_audio.py {shown}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return (time.perf_counter() - started) / 60


def load_as_a_user_would(output_dir: Path):
    """Plain transformers, no data2vec_hf import needed for 1.0: the model and one clip's features."""
    import soundfile
    import torch
    from data2vec_hf.pretraining.data.corpora import build_speech_corpus
    from transformers import AutoFeatureExtractor, AutoModel

    model = AutoModel.from_pretrained(output_dir).eval()
    extractor = AutoFeatureExtractor.from_pretrained(output_dir)
    clip = sorted(build_speech_corpus().glob("*.wav"))[0]
    audio, rate = soundfile.read(clip, dtype="float32")
    with torch.no_grad():
        hidden = model(**extractor(audio, sampling_rate=rate, return_tensors="pt")).last_hidden_state
    return model, clip, len(audio) / rate, hidden


def probe_features(output_dir: Path) -> dict | None:
    """What did it learn? Probe the frozen features as ``data2vec-probe MODEL --embedded`` does."""
    from data2vec_hf.evaluation.cli import main as probe

    probe_json = output_dir / "probe_results.json"
    arguments = [
        str(output_dir),
        "--embedded",
        "--random_init",
        "--baseline",
        "--output_json",
        str(probe_json),
    ]
    print(f"\n$ data2vec-probe {' '.join(arguments)}")
    if probe(arguments):
        return None
    return json.loads(probe_json.read_text())


def report(output_dir: Path, minutes: float, model, clip: Path, seconds: float, hidden, probed: dict) -> None:
    summary = json.loads((output_dir / "train_summary.json").read_text())
    history = summary["history"]
    head, tail = history[:3], history[-3:]

    def mean(rows, column):
        return sum(r[column] for r in rows) / len(rows)

    print("\n=== data2vec audio demo ===")
    print(f"trained {summary['updates']} updates in {minutes:.1f} min; output: {output_dir}")
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"AutoModel.from_pretrained -> {type(model).__name__} ({parameters:.2f} M parameters)")
    print(f"{clip.name}: {seconds:.2f} s of speech -> hidden states {tuple(hidden.shape)}")
    print(f"regression loss (mean of first 3 vs last 3 logged): {mean(head, 1):.3f} -> {mean(tail, 1):.3f}")
    print(f"target std over features (collapse monitor):         {mean(head, 2):.3f} -> {mean(tail, 2):.3f}")
    trained, random = probed["results"]["model"]["best"], probed["results"]["random init"]["best"]
    print(
        f"linear probe, spoken words of unseen speakers ({len(probed['data']['classes'])} classes, best layer): "
        f"random init {100 * random['linear']:.1f}% -> trained {100 * trained['linear']:.1f}% "
        f"(layer {trained['layer']}); log-mel baseline {100 * probed['baseline']['linear']:.1f}%, "
        f"chance {100 * probed['data']['chance']:.1f}%"
    )


if __name__ == "__main__":
    sys.exit(main())
