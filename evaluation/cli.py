"""``data2vec-probe``: how good are a checkpoint's frozen features? Per-layer k-NN and linear probes, and a
learned softmax-weighted sum over layers (SUPERB's convention), on a labelled dataset.

    data2vec-probe MODEL --embedded                       # the embedded probe set of MODEL's modality
    data2vec-probe MODEL --dataset_name NAME [--dataset_config_name C] [--label_column label]
    data2vec-probe MODEL --data_dir DIR | --data_file manifest.csv
    python -m data2vec_hf.evaluation MODEL ...            # the same

MODEL is anything ``AutoModel.from_pretrained`` loads as a data2vec encoder: the output folder of our
pretraining scripts, a converted fairseq checkpoint, or a native transformers data2vec checkpoint (Hub id
or local folder). Prints a table and writes JSON (``--output_json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from data2vec_hf.pretraining.arguments import (
    COUNT,
    SEED,
    ArgumentError,
    Rule,
    check_needs,
    check_sources,
    check_values,
    greater_than,
    within,
)
from data2vec_hf.pretraining.typed_flags import FlagParser

from .baselines import baseline_accuracy
from .data import LabelledData, load_labelled_data
from .features import (
    ENCODER_TYPES,
    EncoderInputs,
    NotAnEncoderError,
    default_processor,
    encoder_kind,
    extract_features,
    sampling_rate_of,
    student_encoder,
)
from .online import chance
from .probes import KNN_TEMPERATURE, knn_accuracy, linear_probe, weighted_layer_probe
from .settings import ProbeSettings

logger = logging.getLogger("data2vec_hf.evaluation")


class ProbeError(RuntimeError):
    """A problem with the command's input that the user can fix; the message says what."""


@dataclass
class ProbeCommand:
    """The flags of ``data2vec-probe`` beside the shared :class:`~.settings.ProbeSettings`."""

    _argument_group_name = "model and output"

    processor: str | None = field(
        default=None,
        metadata={
            "help": "where to load the feature extractor / image processor / tokenizer from (default: MODEL; "
            "audio and images fall back to what the pretraining scripts export: 16 kHz normalised audio, "
            "ImageNet mean/std)"
        },
    )
    device: str | None = field(
        default=None, metadata={"help": "cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)"}
    )
    random_init: bool = field(
        default=False,
        metadata={
            "help": "also probe a randomly initialised encoder of the same configuration (a reference row)"
        },
    )
    baseline: bool = field(
        default=False,
        metadata={
            "help": "also score the hand-crafted baseline (log-mel statistics, raw pixels or bag of words)"
        },
    )
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache folder"})
    output_json: str = field(
        default="probe_results.json", metadata={"help": "where the results are written ('' to skip)"}
    )


def build_parser() -> FlagParser:
    """The parser of ``data2vec-probe``: :class:`~.settings.ProbeSettings`, :class:`ProbeCommand` and
    the positional MODEL; ``parse_args`` returns a flat namespace of both dataclasses' fields."""
    parser = FlagParser(
        (ProbeSettings, ProbeCommand),
        prog="data2vec-probe",
        description=__doc__.split("\n\n")[0]
        + " Exit status 2 on bad input (the message says what to change).",
    )
    parser.add_argument(
        "model",
        help="checkpoint folder or Hub id that AutoModel loads: our pretraining output (its encoder), a converted "
        "fairseq checkpoint, a native transformers data2vec model (data2vec 1.0 or 2.0, audio/vision/text)",
    )
    return parser


# Every numeric flag of data2vec-probe, with the rule machinery of the pretraining scripts
# (tests/test_argument_validation.py fails for a numeric flag without a rule here).
PROBE_RULES: dict[str, Rule] = {
    "test_fraction": within(0, 1, low_open=True, high_open=True),
    "max_examples": COUNT,
    "max_seconds": greater_than(0),
    "batch_size": COUNT,
    "knn_k": COUNT,
    "knn_temperature": greater_than(0),
    "probe_iterations": COUNT,
    "seed": SEED,
}
PROBE_SOURCES = ("embedded", "dataset_name", "data_dir", "data_file")


def validate_probe_arguments(args, parser: argparse.ArgumentParser) -> None:
    """Check the parsed flags before anything is loaded: every numeric flag against
    :data:`PROBE_RULES`, exactly one labelled data source, and ``--dataset_config_name`` only with
    ``--dataset_name``. Raises :class:`~data2vec_hf.pretraining.arguments.ArgumentError`; pure."""
    check_values(args, PROBE_RULES)
    check_sources(args, PROBE_SOURCES, required=True)
    check_needs(args, parser, {"dataset_config_name": ("dataset_name",)})


# --------------------------------------------------------------------------------------------------
# Loading


def load_encoder(path: str, device: str | torch.device = "cpu"):
    """``(encoder, (modality, version))`` of a checkpoint; clear errors when it is not a data2vec encoder."""
    import data2vec_hf  # noqa: F401  (registers the data2vec configs and models with the Auto classes)
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as error:
        raise ProbeError(f"cannot read a model configuration from {path!r}: {error}") from error
    if config.model_type not in ENCODER_TYPES:
        raise NotAnEncoderError(
            f"{path} holds a {config.model_type!r} model ({', '.join(getattr(config, 'architectures', None) or [])}), "
            f"not a data2vec encoder: data2vec-probe reads data2vec 1.0/2.0 encoders "
            f"({', '.join(sorted(ENCODER_TYPES))})"
        )
    try:
        model = AutoModel.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ProbeError(f"cannot load the model in {path!r}: {error}") from error
    encoder = student_encoder(model)
    return encoder.to(device).eval(), encoder_kind(encoder)


def load_processor(path: str, modality: str, config):
    """The checkpoint's processor, or (audio, images) the one the pretraining scripts would export."""
    from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer

    loader = {"audio": AutoFeatureExtractor, "vision": AutoImageProcessor, "text": AutoTokenizer}[modality]
    try:
        return loader.from_pretrained(path)
    except (OSError, ValueError, KeyError) as error:
        if modality == "text":
            raise ProbeError(
                f"no tokenizer found in {path!r} ({error}); pass the one the model was trained with via --processor"
            ) from error
        logger.info("no processor in %s: using the pretraining scripts' default", path)
        return default_processor(modality, config)


def random_init_like(encoder):
    """A freshly initialised encoder of the same class and configuration (seeded by the caller)."""
    return type(encoder)(encoder.config).eval()


# --------------------------------------------------------------------------------------------------
# Probing


def probe_encoder(
    encoder,
    data: LabelledData,
    processor,
    *,
    batch_size: int = 16,
    knn_k: int = 20,
    knn_temperature: float = KNN_TEMPERATURE,
    probe_iterations: int = 100,
    seed: int = 0,
    max_seconds: float | None = 30.0,
    device=None,
    weighted_sum: bool = True,
) -> dict:
    """Per-layer k-NN and linear accuracy, the best layer, and the weighted-sum probe of one encoder.

    Returns ``{"layers": [{"layer", "pooling", "knn", "linear"}...], "best": {...}, "weighted_sum": {...},
    "seconds"}`` (accuracies as fractions)."""
    started = time.perf_counter()
    values = list(data.train.values) + list(data.test.values)
    inputs = EncoderInputs(data.modality, values, processor, encoder.config, max_seconds)
    features = extract_features(encoder, inputs, batch_size=batch_size, device=device)
    n_train = len(data.train)
    feature_device = next(iter(features.values())).device
    y_train = torch.tensor(data.train.labels, device=feature_device)
    y_test = torch.tensor(data.test.labels, device=feature_device)
    rows = []
    for pooling, value in features.items():
        train, test = value[:, :n_train], value[:, n_train:]
        knn = knn_accuracy(
            train, y_train, test, y_test, data.num_classes, k=knn_k, temperature=knn_temperature
        )
        linear = linear_probe(
            train, y_train, test, y_test, data.num_classes, max_iter=probe_iterations, seed=seed
        )
        for layer in range(value.shape[0]):
            rows.append(
                {
                    "layer": layer,
                    "pooling": pooling,
                    "knn": float(knn[layer]),
                    "linear": float(linear.accuracy[layer]),
                }
            )
    best = max(rows, key=lambda row: row["linear"])
    result = {
        "layers": rows,
        "best": {
            "layer": best["layer"],
            "pooling": best["pooling"],
            "linear": best["linear"],
            "knn": max(row["knn"] for row in rows),
        },
    }
    if weighted_sum:
        mean = features["mean"]
        weighted = weighted_layer_probe(
            mean[:, :n_train],
            y_train,
            mean[:, n_train:],
            y_test,
            data.num_classes,
            max_iter=probe_iterations,
            seed=seed,
        )
        result["weighted_sum"] = {
            "linear": weighted.accuracy,
            "layer_weights": weighted.layer_weights,
            "l2": weighted.l2,
        }
    result["seconds"] = time.perf_counter() - started
    return result


def format_table(results: dict[str, dict]) -> str:
    """A plain-text table: one row per layer (and pooling), one column pair per probed model."""
    names = list(results)
    header = f"{'layer':<12}" + "".join(f"{name[:22]:>24}" for name in names)
    sub = f"{'':<12}" + "".join(f"{'k-NN':>12}{'linear':>12}" for _ in names)
    lines = [header, sub]
    first = results[names[0]]
    for index, row in enumerate(first["layers"]):
        label = f"{row['layer']}" + (" (CLS)" if row["pooling"] == "cls" else "")
        cells = ""
        for name in names:
            other = results[name]["layers"][index]
            cells += f"{100 * other['knn']:>11.1f}%{100 * other['linear']:>11.1f}%"
        lines.append(f"{label:<12}{cells}")
    lines.append(
        f"{'best':<12}"
        + "".join(
            f"{100 * results[n]['best']['knn']:>11.1f}%{100 * results[n]['best']['linear']:>11.1f}%"
            for n in names
        )
    )
    if all("weighted_sum" in results[n] for n in names):
        lines.append(
            f"{'weighted sum':<12}"
            + "".join(f"{'':>12}{100 * results[n]['weighted_sum']['linear']:>11.1f}%" for n in names)
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        validate_probe_arguments(args, parser)
    except ArgumentError as error:
        parser.error(str(error))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    from data2vec_hf.pretraining.data import DataError

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        encoder, (modality, version) = load_encoder(args.model, device)
        processor = load_processor(args.processor or args.model, modality, encoder.config)
        data = load_labelled_data(
            modality,
            embedded=args.embedded,
            dataset_name=args.dataset_name,
            dataset_config_name=args.dataset_config_name,
            data_dir=args.data_dir,
            data_file=args.data_file,
            label_column=args.label_column,
            input_column=args.input_column,
            train_split=args.train_split,
            test_split=args.test_split,
            test_fraction=args.test_fraction,
            max_examples=args.max_examples,
            sampling_rate=sampling_rate_of(processor) if modality == "audio" else 16000,
            max_seconds=args.max_seconds,
            seed=args.seed,
            cache_dir=args.cache_dir,
        )
    except (ProbeError, NotAnEncoderError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    options = dict(
        batch_size=args.batch_size, knn_k=args.knn_k, knn_temperature=args.knn_temperature,
        probe_iterations=args.probe_iterations, seed=args.seed, max_seconds=args.max_seconds, device=device,
    )  # fmt: skip
    print(f"{args.model}: data2vec {version}.0 {modality} encoder; {data.describe()}", flush=True)
    results = {"model": probe_encoder(encoder, data, processor, **options)}
    if args.random_init:
        torch.manual_seed(args.seed)
        results["random init"] = probe_encoder(
            random_init_like(encoder).to(device), data, processor, **options
        )
    report = {
        "model": args.model,
        "modality": modality,
        "version": version,
        "data": {
            "source": data.source,
            "classes": data.classes,
            "train": len(data.train),
            "test": len(data.test),
            "chance": chance(data.test.labels),
        },
        "probes": {
            "knn_k": args.knn_k,
            "knn_temperature": args.knn_temperature,
            "probe_iterations": args.probe_iterations,
            "seed": args.seed,
        },  # fmt: skip
        "results": results,
    }
    if args.baseline:
        report["baseline"] = baseline_accuracy(
            data, knn_k=args.knn_k, max_iter=args.probe_iterations, seed=args.seed,
            sampling_rate=sampling_rate_of(processor) if modality == "audio" else 16000,
        )  # fmt: skip
    print(format_table(results))
    print(f"chance (most frequent class): {100 * report['data']['chance']:.1f}%")
    if "baseline" in report:
        base = report["baseline"]
        print(f"baseline ({base['name']}): k-NN {100 * base['knn']:.1f}%, linear {100 * base['linear']:.1f}%")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(report, indent=2))
        print(f"results written to {args.output_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
