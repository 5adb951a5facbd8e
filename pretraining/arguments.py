"""Command-line arguments of the pretraining scripts.

Optimisation flags whose default depends on ``--version`` (learning rate, betas, schedule, ...) and the
modality flags that belong to a released recipe are filled from the recipe after parsing, so that
``--help`` can show both versions' defaults and an explicit flag always wins.
"""

from __future__ import annotations

import argparse
import ast
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .trainer import ModalitySpec

WEIGHT_DECAY_SCOPES = ("all", "no_1d_bias", "matrices")


class ConfigError(ValueError):
    """The model configuration asked for on the command line cannot be built; the message says why."""


def build_parser(spec: ModalitySpec) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=f"data2vec {spec.name} pretraining with Accelerate. Run with `accelerate launch` for "
        "several processes/GPUs/nodes; without any dataset argument it trains on a small embedded corpus.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = parser.add_argument_group("model")
    g.add_argument(
        "--version", type=int, choices=sorted(spec.model_classes), default=1, help="data2vec version"
    )
    g.add_argument(
        "--model_name_or_path",
        default=None,
        help="continue from a checkpoint (ours, or a native transformers data2vec one)",
    )
    g.add_argument(
        "--config_name",
        default=None,
        help="config to start from (path or name); default: the released base config",
    )
    g.add_argument(
        "--config_overrides",
        default=None,
        help='comma-separated overrides, e.g. "hidden_size=64,num_hidden_layers=2,conv_dim=(32,32)"',
    )

    g = parser.add_argument_group("data")
    g.add_argument("--dataset_name", default=None, help="a datasets hub name or loading script")
    g.add_argument("--dataset_config_name", default=None, help="the dataset configuration name")
    g.add_argument("--train_split_name", default="train", help="split to train on")
    g.add_argument("--streaming", action="store_true", help="stream the dataset instead of downloading it")
    g.add_argument("--train_dir", default=None, help="local folder of training files")
    g.add_argument("--train_file", default=None, help="local training file (csv/json/jsonl/txt)")
    g.add_argument("--cache_dir", default=None, help="where datasets and the embedded corpus are cached")
    g.add_argument(
        "--max_train_samples", type=int, default=None, help="truncate the training set (debugging)"
    )
    g.add_argument(
        "--preprocessing_num_workers", type=int, default=None, help="processes for dataset preprocessing"
    )
    g.add_argument("--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes")

    g = parser.add_argument_group("optimisation")
    g.add_argument(
        "--per_device_train_batch_size",
        type=int,
        default=None,
        help="examples per process and micro-batch (default: 8, or unlimited with --max_tokens)",
    )
    g.add_argument(
        "--gradient_accumulation_steps", type=int, default=1, help="micro-batches per optimizer update"
    )
    recipe_flags = {
        "learning_rate": (float, "peak learning rate"),
        "weight_decay": (float, "decoupled (AdamW) weight decay; --weight_decay_scope says which parameters"),
        "adam_beta1": (float, "AdamW beta1"),
        "adam_beta2": (float, "AdamW beta2"),
        "adam_epsilon": (float, "AdamW epsilon"),
        "max_grad_norm": (float, "gradient clipping norm (0 disables)"),
    }
    for name, (kind, text) in recipe_flags.items():
        g.add_argument(
            f"--{name}",
            type=kind,
            default=argparse.SUPPRESS,
            help=f"{text} (default: {recipe_default(spec, name)})",
        )
    g.add_argument(
        "--weight_decay_scope",
        choices=WEIGHT_DECAY_SCOPES,
        default="all",
        help="which parameters are decayed: 'all' trainable ones (what fairseq's released recipes do), "
        "'no_1d_bias' (exempts 1-D parameters, biases and ALiBi scales, as data2vec2.py intends) or "
        "'matrices' (only Linear/Conv weights)",
    )
    g.add_argument("--max_train_steps", type=int, default=1000, help="number of optimizer updates")
    g.add_argument(
        "--lr_scheduler_type",
        default=argparse.SUPPRESS,
        help="tri_stage (fairseq's) or any transformers scheduler name (cosine, linear, constant_with_warmup, ...) "
        f"(default: {recipe_default(spec, 'lr_scheduler_type')})",
    )
    g.add_argument(
        "--num_warmup_steps",
        type=int,
        default=None,
        help="warmup updates (default: 3%% of the run for tri_stage, else the recipe's warmup fraction)",
    )
    g.add_argument(
        "--tri_stage_ratios",
        default="0.03,0.9,0.07",
        help="warmup/hold/decay fractions of the tri_stage schedule",
    )
    g.add_argument("--seed", type=int, default=42, help="random seed (masks, init, data order)")
    g.add_argument(
        "--mixed_precision",
        choices=["no", "fp16", "bf16"],
        default=None,
        help="overrides accelerate's config",
    )
    g.add_argument(
        "--gradient_checkpointing",
        action="store_true",
        help="recompute the student's block activations in the backward pass (less memory, ~30%% more time)",
    )
    g.add_argument(
        "--torch_compile",
        action="store_true",
        help="compile the transformer blocks of student and teacher with torch.compile (dynamic shapes, so "
        "clips of other lengths do not recompile)",
    )
    g.add_argument(
        "--torch_compile_mode",
        default=None,
        help="torch.compile mode (default, reduce-overhead, max-autotune)",
    )
    g.add_argument(
        "--torch_compile_backend", default="inductor", help="torch.compile backend (inductor, aot_eager, ...)"
    )
    g.add_argument(
        "--keep_host_memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="CPU training on glibc: malloc keeps freed memory for the next step instead of unmapping it "
        "(almost no page faults in steady state; base steps 10-24%% faster on 2 cores, peak RSS a little higher)",
    )
    g.add_argument(
        "--max_nonfinite_updates",
        type=int,
        default=5,
        help="stop after this many updates in a row with a NaN/inf loss (they are skipped)",
    )

    g = parser.add_argument_group("checkpointing and logging")
    g.add_argument("--output_dir", required=True, help="where the encoder, checkpoints and logs are written")
    g.add_argument(
        "--overwrite_output_dir", action="store_true", help="allow a non-empty output dir without resuming"
    )
    g.add_argument(
        "--checkpointing_steps",
        type=int,
        default=500,
        help="save a resumable checkpoint every N updates (and at the end)",
    )
    g.add_argument("--checkpoints_total_limit", type=int, default=2, help="keep only the last K checkpoints")
    g.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help="a checkpoint folder, or 'latest' (starts fresh when none exists)",
    )
    g.add_argument("--logging_steps", type=int, default=10, help="log metrics every N updates")
    g.add_argument("--with_tracking", action="store_true", help="log metrics to the trackers in --report_to")
    g.add_argument(
        "--report_to", default="tensorboard", help="accelerate tracker(s): tensorboard, wandb, all, ..."
    )
    g.add_argument(
        "--push_to_hub", action="store_true", help="upload the output folder to the Hub at the end"
    )
    g.add_argument(
        "--remote_code",
        action="store_true",
        help="data2vec 2.0: write the modelling code into the exported folders (auto_map), so that "
        "AutoModel.from_pretrained(dir, trust_remote_code=True) works without data2vec-hf installed",
    )
    g.add_argument(
        "--hub_model_id", default=None, help="repository id for --push_to_hub (default: output dir name)"
    )
    g.add_argument("--hub_token", default=None, help="Hub token (default: the logged-in one)")
    g.add_argument("--hub_private_repo", action="store_true", help="create the Hub repository as private")

    spec.add_arguments(parser.add_argument_group(spec.name))
    from data2vec_hf.evaluation import add_arguments as add_evaluation_arguments

    add_evaluation_arguments(
        parser.add_argument_group(
            "online evaluation", "probe the frozen student on a labelled task while training (off by default)"
        )
    )
    return parser


def recipe_default(spec: ModalitySpec, name: str) -> str:
    """How ``--help`` shows a default that depends on ``--version``."""
    return ", ".join(f"v{version}: {values[name]}" for version, values in sorted(spec.defaults.items()))


def apply_recipe_defaults(spec: ModalitySpec, args) -> None:
    """Fill the optimisation flags the user did not set from the released recipe of ``--version``."""
    for name, value in spec.defaults[args.version].items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)


def parse_config_overrides(text: str | None) -> dict[str, Any]:
    """Parse ``"a=1,b=0.5,c=(32,32),d=true,e=gelu"`` into typed values."""
    if not text:
        return {}
    items, depth, current = [], 0, ""
    for char in text:  # split on commas outside brackets
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    overrides = {}
    for item in filter(None, (i.strip() for i in items)):
        if "=" not in item:
            raise ConfigError(f"--config_overrides: {item!r} is not of the form key=value")
        key, raw = (s.strip() for s in item.split("=", 1))
        lowered = raw.lower()
        if lowered in ("true", "false"):
            value = lowered == "true"
        elif lowered in ("none", "null"):
            value = None
        else:
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw
        overrides[key] = value
    return overrides


def check_overrides(overrides: dict[str, Any], defaults) -> None:
    """Reject keys the config does not have and values of the wrong type (compared with the default
    config ``defaults``), naming them — instead of a failure deep inside the model."""
    unknown = sorted(k for k in overrides if not hasattr(defaults, k))
    if unknown:
        raise ConfigError(
            f"--config_overrides: {type(defaults).__name__} has no field {', '.join(unknown)} "
            "(see the config class's documentation for the fields)"
        )
    for key, value in overrides.items():
        default = getattr(defaults, key)
        if default is None or value is None:
            continue
        kinds = (
            (int, float)
            if isinstance(default, float)
            else (list, tuple)
            if isinstance(default, list | tuple)
            else type(default)
        )
        if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, kinds):
            raise ConfigError(
                f"--config_overrides: {key}={value!r} is a {type(value).__name__}, expected a "
                f"{type(default).__name__} like the default {default!r}"
            )


def check_config(config) -> None:
    """Consistency checks the model classes would only fail on later, with a worse message."""
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if hidden and heads and hidden % heads:
        raise ConfigError(f"hidden_size={hidden} is not divisible by num_attention_heads={heads}")
