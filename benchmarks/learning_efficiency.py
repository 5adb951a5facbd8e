#!/usr/bin/env python
"""Learning efficiency: probe accuracy vs pretraining time, data2vec 1.0 vs 2.0, for every modality.

For each modality, a small data2vec 1.0 and a small 2.0 model with the same encoder (hidden 128, 4 blocks,
4 heads, FFN 512) are pretrained on the embedded corpus for the same wall-clock budget of *training*
time (evaluation time is excluded and reported apart). Their frozen student features are probed on the
embedded probe set of the modality (:mod:`data2vec_hf.evaluation.probe_sets`) before the first update
(the random-init row) and at regular points, with the online evaluator that ``--eval_*`` runs use
(k-NN and linear probes per layer, best layer reported). The hand-crafted baseline (log-mel statistics,
raw pixels, bag of words) is probed the same way.

    python benchmarks/learning_efficiency.py [--budget_seconds 150] [--modalities audio,vision,text]

Writes ``learning_efficiency.json`` (per run: best-layer probe accuracy vs training seconds and vs
updates) and ``learning_efficiency.png`` (accuracy vs seconds, one line per version, baselines as
horizontal lines) into ``--output_dir``, and prints a table. Runs in one process, on the CPU cores of
the machine (or its GPU). The short runs use a constant learning rate after a short warm-up (the
released schedules are sized for 400k-1M updates) and an EMA decay annealed over ``--ema_anneal_steps``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import PIL
import torch

SMALL = (
    "hidden_size=128,num_hidden_layers=4,num_attention_heads=4,intermediate_size=512,average_top_k_layers=3"
)
TINY = "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64,average_top_k_layers=2"
V2_DECODER = {"small": "decoder_dim=128,decoder_layers=2", "tiny": "decoder_dim=16,decoder_layers=1"}
MODALITY_OVERRIDES = {
    "audio": {
        "small": "conv_dim=(64,64,64,64,64,64,64),num_conv_pos_embedding_groups=8",
        "tiny": "conv_dim=(32,32,32),conv_kernel=(10,3,3),conv_stride=(5,2,2),num_conv_pos_embedding_groups=4,"
        "conv_pos_kernel_size=7,num_conv_pos_embeddings=2",
    },
    "vision": {"small": "image_size=32,patch_size=4", "tiny": "image_size=32,patch_size=8"},
    "text": {"small": "", "tiny": ""},
}
VERSION_OVERRIDES = {
    ("audio", 1): "",
    # the teacher keeps its own EMA copy of the CNN (fairseq's ema_local_encoder, the image recipe's
    # setting): with the audio recipe's CNN shared by student and teacher, this small model collapses
    ("audio", 2): "decoder_groups=8,ema_local_encoder=True",
    ("vision", 1): "min_mask_patches_per_block=4",
    ("vision", 2): "prenet_depth=0",  # the same 4 blocks as 1.0 (the base recipe adds 2 prenet blocks)
    ("text", 1): "",
    ("text", 2): "decoder_groups=1",
}
BATCH = {"audio": 8, "vision": 32, "text": 16}
MODALITY_FLAGS = {
    "audio": ["--max_length_seconds", "2"],
    "vision": [],
    "text": ["--max_seq_length", "128"],
}


def config_overrides(
    modality: str, version: int, size: str, clone_batch: int, ema_anneal_steps: int, extra: str = ""
) -> str:
    parts = [
        SMALL if size == "small" else TINY,
        MODALITY_OVERRIDES[modality][size],
        VERSION_OVERRIDES[(modality, version)],
    ]
    if version == 2:
        parts += [V2_DECODER[size], f"clone_batch={clone_batch}"]
    parts.append(f"ema_anneal_end_step={ema_anneal_steps}")
    parts.append(extra)
    return ",".join(p for p in parts if p)


def spec_of(modality: str):
    if modality == "audio":
        from data2vec_hf.pretraining.pretrain_audio import SPEC
    elif modality == "vision":
        from data2vec_hf.pretraining.pretrain_vision import SPEC
    else:
        from data2vec_hf.pretraining.pretrain_text import SPEC
    return SPEC


def reset_accelerate() -> None:
    """Forget the accelerate state of the previous run (one process runs them all)."""
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(True)
    PartialState._reset_state()


class BudgetedEvaluation:
    """The loop callback: evaluates at every ``budget / points`` seconds of training time (time spent
    evaluating does not count) and stops the run once the budget is spent."""

    def __init__(self, evaluator, budget: float, points: int):
        self.evaluator, self.budget = evaluator, budget
        self.marks = [budget * (i + 1) / points for i in range(points)]
        self.curve: list[dict] = []
        self.eval_seconds = 0.0
        self.started: float | None = None

    def training_seconds(self) -> float:
        return time.perf_counter() - self.started - self.eval_seconds

    def record(self, loop, updates: int, seconds: float) -> None:
        started = time.perf_counter()
        metrics = self.evaluator.evaluate(loop.unwrapped, updates)
        self.eval_seconds += time.perf_counter() - started
        self.curve.append(
            {"updates": updates, "seconds": round(seconds, 2), **{k: v for k, v in metrics.items()}}
        )
        print(
            f"  {updates:>5} updates, {seconds:6.1f} s: linear {100 * metrics['eval/linear_best']:.1f}% "
            f"(layer {int(metrics['eval/best_layer'])}), k-NN {100 * metrics['eval/knn_best']:.1f}%, "
            f"eval {metrics['eval/seconds']:.1f} s",
            flush=True,
        )

    def __call__(self, loop, metrics) -> None:
        seconds = self.training_seconds()
        if self.marks and seconds >= self.marks[0]:
            while self.marks and seconds >= self.marks[0]:
                self.marks.pop(0)
            self.record(loop, loop.progress.num_updates, seconds)
        if seconds >= self.budget or not self.marks:
            loop.args.max_train_steps = loop.progress.num_updates  # the loop stops after this update
        self.last_loss = metrics["loss"]


def run_one(modality: str, version: int, data, args, workdir: Path) -> dict:
    """Pretrain one small model for the budget, probing it along the way; returns its curve."""
    from data2vec_hf.evaluation import OnlineEvaluator
    from data2vec_hf.pretraining.arguments import apply_recipe_defaults, build_parser
    from data2vec_hf.pretraining.trainer import PretrainingLoop

    spec = spec_of(modality)
    overrides = config_overrides(
        modality, version, args.size, args.clone_batch, args.ema_anneal_steps, args.extra_overrides
    )
    argv = [
        "--version", str(version), "--output_dir", str(workdir / f"{modality}-v{version}"),
        "--config_overrides", overrides, "--max_train_steps", "10000000",
        "--lr_scheduler_type", "constant_with_warmup", "--num_warmup_steps", str(args.warmup_steps),
        "--per_device_train_batch_size", str(BATCH[modality]), "--logging_steps", "10",
        "--checkpointing_steps", "100000000", "--checkpoints_total_limit", "1", "--seed", str(args.seed),
        *MODALITY_FLAGS[modality],
    ]  # fmt: skip
    if args.learning_rate:
        argv += ["--learning_rate", str(args.learning_rate)]
    if args.max_train_samples:
        argv += ["--max_train_samples", str(args.max_train_samples)]
    argv += shlex.split(args.extra_args)
    parsed = build_parser(spec).parse_args(argv)
    apply_recipe_defaults(spec, parsed)
    reset_accelerate()
    print(f"{modality} data2vec {version}.0: {overrides}", flush=True)
    budget = BudgetedEvaluation(None, args.budget_seconds, args.eval_points)
    loop = PretrainingLoop(spec, parsed, callbacks=[budget])
    budget.evaluator = OnlineEvaluator(
        data, loop.processor, loop.accelerator, knn_k=args.knn_k, probe_iterations=args.probe_iterations
    )
    parameters = sum(
        p.numel() for p in getattr(loop.unwrapped, loop.unwrapped.base_model_prefix).parameters()
    )
    budget.started = time.perf_counter()
    budget.record(loop, 0, 0.0)  # the random init, before the first update
    loop.train()
    total = time.perf_counter() - budget.started
    summary = {
        "modality": modality,
        "version": version,
        "config_overrides": overrides,
        "extra_args": args.extra_args,
        "encoder_parameters": parameters,
        "learning_rate": parsed.learning_rate,
        "batch_size": BATCH[modality],
        "updates": loop.progress.num_updates,
        "training_seconds": round(total - budget.eval_seconds, 1),
        "eval_seconds": round(budget.eval_seconds, 1),
        "eval_share": round(budget.eval_seconds / max(total - budget.eval_seconds, 1e-9), 3),
        "final_loss": getattr(budget, "last_loss", None),
        "curve": budget.curve,
    }
    reset_accelerate()
    return summary


def best(point: dict, probe: str = "linear") -> float:
    return point["eval/linear_best"] if probe == "linear" else point["eval/knn_best"]


def plot(report: dict, path: Path) -> None:
    """Accuracy vs training seconds, one panel per modality, one line per version, baselines as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modalities = list(report["modalities"])
    figure, axes = plt.subplots(1, len(modalities), figsize=(5 * len(modalities), 4), squeeze=False)
    for axis, modality in zip(axes[0], modalities):
        entry = report["modalities"][modality]
        for run, colour in zip(entry["runs"], ("tab:blue", "tab:orange")):
            curve = run["curve"]
            axis.plot([p["seconds"] for p in curve], [100 * best(p) for p in curve], "o-", color=colour,
                      label=f"data2vec {run['version']}.0 (linear)")  # fmt: skip
            axis.plot([p["seconds"] for p in curve], [100 * best(p, "knn") for p in curve], "x--", color=colour,
                      alpha=0.6, label=f"data2vec {run['version']}.0 (k-NN)")  # fmt: skip
        base = entry["baseline"]
        axis.axhline(100 * base["linear"], color="gray", linestyle="-.", label=f"{base['name']} (linear)")
        axis.axhline(100 * base["chance"], color="lightgray", linestyle=":", label="chance")
        axis.set_title(f"{modality}: {entry['probe_set']}")
        axis.set_xlabel("pretraining seconds (evaluation excluded)")
        axis.set_ylabel("best-layer probe accuracy (%)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modalities", default="audio,vision,text", help="comma-separated modalities")
    parser.add_argument("--versions", default="1,2", help="data2vec versions to compare")
    parser.add_argument(
        "--budget_seconds", type=float, default=150.0,
        help="training seconds per model (default: 6 models x 150 s + evaluation, about 20 min on 2 cores)",
    )  # fmt: skip
    parser.add_argument(
        "--eval_points", type=int, default=4, help="evaluations within the budget (plus the init)"
    )
    parser.add_argument(
        "--size", choices=("small", "tiny"), default="small", help="model size (tiny: for tests)"
    )
    parser.add_argument(
        "--clone_batch", type=int, default=4, help="data2vec 2.0 masked clones per sample (M)"
    )
    parser.add_argument("--warmup_steps", type=int, default=20, help="learning-rate warm-up updates")
    parser.add_argument(
        "--ema_anneal_steps", type=int, default=1000, help="EMA decay anneal length (updates)"
    )
    parser.add_argument(
        "--learning_rate", type=float, default=None, help="peak learning rate (default: the recipe's)"
    )
    parser.add_argument(
        "--extra_overrides",
        default="",
        help="further --config_overrides for every model (e.g. ema_decay=0.99)",
    )
    parser.add_argument(
        "--extra_args",
        default="",
        help="further pretraining flags for every model, as one string; every modality run must accept them "
        "(e.g. '--bpe_vocab_size 2048' with --modalities text)",
    )
    parser.add_argument("--knn_k", type=int, default=20, help="k of the k-NN probe")
    parser.add_argument(
        "--probe_iterations", type=int, default=100, help="L-BFGS iterations of the linear probe"
    )
    parser.add_argument("--max_probe_examples", type=int, default=None, help="cap each probe split (tests)")
    parser.add_argument(
        "--max_train_samples", type=int, default=None, help="cap the pretraining corpus (tests)"
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of the pretraining runs")
    parser.add_argument(
        "--output_dir", default="learning_efficiency_output", help="where the JSON and the PNG are written"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from data2vec_hf.evaluation import baseline_accuracy, load_labelled_data
    from data2vec_hf.evaluation.probe_sets import build_probe_set

    try:  # fail now, not after the whole budget
        import matplotlib  # noqa: F401
    except ImportError:
        print("error: the plot needs matplotlib: pip install matplotlib (or data2vec-hf[benchmarks])",
              file=sys.stderr)  # fmt: skip
        return 2
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="learning-efficiency-"))
    report = {
        "budget_seconds_per_model": args.budget_seconds,
        "size": args.size,
        "clone_batch": args.clone_batch,
        "threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "pillow": PIL.__version__,  # renders the image probe set (see evaluation/probe_sets.py)
        "modalities": {},
    }
    started = time.perf_counter()
    try:
        for modality in args.modalities.split(","):
            data = load_labelled_data(modality, embedded=True, max_examples=args.max_probe_examples)
            description = json.loads((build_probe_set(modality) / "probe_set.json").read_text())
            baseline = baseline_accuracy(data, knn_k=args.knn_k, max_iter=args.probe_iterations)
            print(f"{modality}: {data.describe()}; baseline {baseline['name']}: linear "
                  f"{100 * baseline['linear']:.1f}%, k-NN {100 * baseline['knn']:.1f}%", flush=True)  # fmt: skip
            runs = [run_one(modality, int(v), data, args, workdir) for v in args.versions.split(",")]
            report["modalities"][modality] = {
                "probe_set": description["name"],
                "train_examples": len(data.train),
                "test_examples": len(data.test),
                "classes": data.classes,
                "baseline": baseline,
                "runs": runs,
            }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    (output / "learning_efficiency.json").write_text(json.dumps(report, indent=1))
    plot(report, output / "learning_efficiency.png")
    print(format_table(report))
    print(f"written: {output / 'learning_efficiency.json'}, {output / 'learning_efficiency.png'}")
    return 0


def format_table(report: dict) -> str:
    lines = [
        f"{'modality':<8} {'model':<12} {'updates':>8} {'train s':>8} {'eval s':>7} "
        f"{'init lin':>9} {'final lin':>9} {'init kNN':>9} {'final kNN':>9}"
    ]
    for modality, entry in report["modalities"].items():
        for run in entry["runs"]:
            first, last = run["curve"][0], run["curve"][-1]
            lines.append(
                f"{modality:<8} {'v' + str(run['version']):<12} {run['updates']:>8} {run['training_seconds']:>8.0f} "
                f"{run['eval_seconds']:>7.0f} {100 * best(first):>8.1f}% {100 * best(last):>8.1f}% "
                f"{100 * best(first, 'knn'):>8.1f}% {100 * best(last, 'knn'):>8.1f}%"
            )
        base = entry["baseline"]
        lines.append(f"{modality:<8} {'baseline':<12} {'':>8} {'':>8} {'':>7} {'':>9} "
                     f"{100 * base['linear']:>8.1f}% {'':>9} {100 * base['knn']:>8.1f}%")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
