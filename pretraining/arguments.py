"""Command-line arguments of the pretraining scripts: the parser of the typed run configuration
(:mod:`.run_config`), the recipe defaults, and the validation of the parsed flags.

Optimisation flags whose default depends on ``--version`` (learning rate, betas, schedule, ...) and the
modality flags that belong to a released recipe are filled from the recipe after parsing, so that
``--help`` can show both versions' defaults and an explicit flag always wins.
"""

from __future__ import annotations

import argparse
import ast
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .run_config import SHARED_ARGUMENTS, RunConfig, modality_arguments
from .spec import ArgumentError, ConfigError, ModalitySpec
from .typed_flags import FlagParser


def build_parser(spec: ModalitySpec) -> FlagParser:
    """The parser of a pretraining script: the dataclasses of :mod:`.run_config`, the script's own
    (``spec.add_arguments``: a dataclass, or a function adding flags to a group) and the online evaluation
    flags. ``parse_args`` returns one flat namespace; the flags of ``spec.defaults`` are None there until
    :func:`apply_recipe_defaults` fills them, and ``--help`` shows each version's recipe value."""
    from data2vec_hf.evaluation.settings import OnlineEvaluationArguments

    modality = modality_arguments(spec)
    dataclass_types = [*SHARED_ARGUMENTS, *([modality] if modality is not None else [])]
    parser = FlagParser(
        [*dataclass_types, OnlineEvaluationArguments],
        description=f"data2vec {spec.name} pretraining with Accelerate. Run with `accelerate launch` for "
        "several processes/GPUs/nodes; without any dataset argument it trains on a small embedded corpus.",
    )
    if modality is None:  # a script that adds its flags itself (an argparse group)
        spec.add_arguments(parser.add_argument_group(spec.name))
    recipe = {name for values in spec.defaults.values() for name in values}
    for action in parser._actions:
        if action.dest == "version":
            action.choices = sorted(spec.model_classes)
        elif action.dest in recipe and action.option_strings:
            action.help = f"{action.help} (default: {recipe_default(spec, action.dest)})"
    return parser


def parse_run_config(
    spec: ModalitySpec, argv: list[str] | None = None
) -> tuple[argparse.Namespace, RunConfig]:
    """Parse a script's flags, fill the recipe defaults and validate them (:func:`validate_arguments`;
    ``parser.error``, exit status 2, on a bad value); the flat namespace and its typed :class:`RunConfig`."""
    parser = build_parser(spec)
    args = parser.parse_args(argv)
    apply_recipe_defaults(spec, args)
    try:
        validate_arguments(args, parser)
    except ArgumentError as error:
        parser.error(str(error))
    return args, RunConfig.from_namespace(spec, args)


def recipe_default(spec: ModalitySpec, name: str) -> str:
    """How ``--help`` shows a default that depends on ``--version``."""
    versions = sorted(spec.defaults.items())
    return ", ".join(f"v{version}: {values[name]}" for version, values in versions if name in values)


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


# --------------------------------------------------------------------------------------------------
# Validation of the parsed flags: one declarative table of rules per command, checked before any work


@dataclass(frozen=True)
class Rule:
    """The values a numeric flag accepts: a finite number from ``low`` to ``high`` (None: unbounded),
    each bound included unless ``low_open``/``high_open``; ``note`` says what a boundary value means."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""

    def accepts(self, value: float) -> bool:
        """Whether ``value`` is finite and within the bounds."""
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.high_open and value == self.high))

    def describe(self, integer: bool = False) -> str:
        """``"a finite number > 0"``, ``"an integer >= 1"``, ``"a number in [0, 1)"``, ..."""
        bounded = self.low is not None and self.high is not None
        what = "an integer" if integer else "a number" if bounded else "a finite number"
        if bounded:
            text = (
                f"{what} in {'(' if self.low_open else '['}{_number(self.low)}, "
                f"{_number(self.high)}{')' if self.high_open else ']'}"
            )
        elif self.low is not None:
            text = f"{what} {'>' if self.low_open else '>='} {_number(self.low)}"
        elif self.high is not None:
            text = f"{what} {'<' if self.high_open else '<='} {_number(self.high)}"
        else:
            text = what
        return f"{text} ({self.note})" if self.note else text


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def at_least(low: float, note: str = "") -> Rule:
    """``value >= low``."""
    return Rule(low=low, note=note)


def greater_than(low: float, note: str = "") -> Rule:
    """``value > low``."""
    return Rule(low=low, low_open=True, note=note)


def within(low: float, high: float, *, low_open=False, high_open=False, note: str = "") -> Rule:
    """``low <= value <= high``, either bound excluded when asked."""
    return Rule(low=low, high=high, low_open=low_open, high_open=high_open, note=note)


# accelerate's set_seed also seeds numpy, whose seeds are 32-bit; numpy's generators refuse negative seeds
SEED = within(0, 2**32 - 1)
COUNT = at_least(1)
FRACTION = within(0, 1)

# Every numeric flag of the three pretraining scripts (shared, modality and online-evaluation flags); a flag
# that a script does not have is not checked. tests/test_argument_validation.py fails for a numeric flag
# without a rule here.
PRETRAINING_RULES: dict[str, Rule] = {
    # model
    "version": COUNT,  # (its choices are argparse's)
    # data
    "max_train_samples": COUNT,
    "preprocessing_num_workers": at_least(0, "0 = in the main process"),
    "dataloader_num_workers": at_least(0, "0 = in the main process"),
    # optimisation
    "per_device_train_batch_size": COUNT,
    "gradient_accumulation_steps": COUNT,
    "learning_rate": greater_than(0),
    "weight_decay": at_least(0),
    "adam_beta1": within(0, 1, high_open=True),
    "adam_beta2": within(0, 1, high_open=True),
    "adam_epsilon": greater_than(0),
    "max_grad_norm": at_least(0, "0 = no clipping"),
    "max_train_steps": COUNT,
    "num_warmup_steps": at_least(0),
    "seed": SEED,
    # (0 would stop at the first skipped update, as 1 does)
    "max_nonfinite_updates": COUNT,
    # checkpointing and logging
    "checkpointing_steps": COUNT,
    "checkpoints_total_limit": COUNT,
    "logging_steps": COUNT,
    # audio
    "sampling_rate": COUNT,
    "max_length_seconds": greater_than(0),
    "min_length_seconds": at_least(0, "0 = only the model's receptive field"),
    "max_tokens": at_least(0, "0 = no limit"),
    # vision
    "crop_min_scale": within(0, 1, low_open=True),
    "color_jitter": at_least(0, "0 = none"),
    "hflip": within(0, 1, note="a probability"),
    # text: a byte-level BPE always holds the 256 bytes and the 5 special tokens, so a smaller size would
    # silently be this one
    "bpe_vocab_size": at_least(261, "the 256 bytes and 5 special tokens"),
    "max_seq_length": at_least(3, "<s>, one token, </s>"),
    # online evaluation
    "eval_test_fraction": within(0, 1, low_open=True, high_open=True),
    "eval_steps": at_least(0, "0 = only after the last update"),
    "eval_knn_k": COUNT,
    "eval_knn_temperature": greater_than(0),
    "eval_probe_iterations": COUNT,
    "eval_max_examples": COUNT,
    "eval_batch_size": COUNT,
    "eval_max_seconds": greater_than(0),
    "eval_seed": SEED,
}

# Schedules the loop can step with nothing but the update count: transformers' others need extra
# arguments (cosine_with_min_lr, warmup_stable_decay) or a metric at every step (reduce_lr_on_plateau).
LR_SCHEDULERS = (
    "tri_stage", "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt",
)  # fmt: skip
DATA_SOURCES = ("dataset_name", "train_dir", "train_file")
EVAL_SOURCES = ("eval_dataset_name", "eval_dir", "eval_file", "eval_embedded")
# flag → the flags of which one must be set for it to be used at all (otherwise it would be silently
# ignored); every other --eval_* flag needs one of EVAL_SOURCES
PRETRAINING_NEEDS: dict[str, tuple[str, ...]] = {
    "dataset_config_name": ("dataset_name",),
    "train_split_name": ("dataset_name",),
    "torch_compile_mode": ("torch_compile",),
    "torch_compile_backend": ("torch_compile",),
    "hub_token": ("push_to_hub",),
    "hub_private_repo": ("push_to_hub",),
    "eval_dataset_config_name": ("eval_dataset_name",),
}


def check_values(args, rules: Mapping[str, Rule]) -> None:
    """Raise :class:`ArgumentError` for the first flag of ``args`` whose value breaks its rule (flags
    ``args`` does not have, and unset optional ones (None), are not checked)."""
    for name, rule in rules.items():
        value = getattr(args, name, None)
        if value is None or isinstance(value, bool):
            continue
        if not rule.accepts(value):
            raise ArgumentError(f"--{name} {value}: must be {rule.describe(isinstance(value, int))}")


def is_given(args, parser: argparse.ArgumentParser, name: str) -> bool:
    """Whether flag ``name`` holds a value other than its default (what the user asked for)."""
    value = getattr(args, name, None)
    return value is not None and value is not False and value != parser.get_default(name)


def check_needs(args, parser: argparse.ArgumentParser, needs: Mapping[str, Iterable[str]]) -> None:
    """Refuse a flag that is set while none of the flags it needs is (it would be silently ignored)."""
    for name, required in needs.items():
        required = tuple(required)
        if is_given(args, parser, name) and not any(getattr(args, r, None) for r in required):
            value = getattr(args, name)
            flag = f"--{name}" if value is True else f"--{name} {value}"
            raise ArgumentError(f"{flag}: only used with {' or '.join(f'--{r}' for r in required)}")


def check_sources(args, names: Iterable[str], *, required: bool = False) -> None:
    """At most one (``required``: exactly one) of the source flags ``names`` is set."""
    names = tuple(names)
    given = [f"--{n}" for n in names if getattr(args, n, None)]
    if len(given) > 1:
        raise ArgumentError(f"{' and '.join(given)}: give only one of {', '.join(f'--{n}' for n in names)}")
    if required and not given:
        raise ArgumentError(f"give one of {', '.join(f'--{n}' for n in names)}")


def validate_arguments(args, parser: argparse.ArgumentParser) -> None:
    """Check the parsed flags of a pretraining script, after the recipe defaults were filled in: every
    numeric flag against :data:`PRETRAINING_RULES`, then the combinations that cannot work together.
    Raises :class:`ArgumentError` naming the flag, the value and the rule. Pure: reads ``args`` and the
    parser's defaults only."""
    check_values(args, PRETRAINING_RULES)
    check_sources(args, DATA_SOURCES)
    check_sources(args, EVAL_SOURCES)
    evaluation = {n: EVAL_SOURCES for n in vars(args) if n.startswith("eval_") and n not in EVAL_SOURCES}
    check_needs(args, parser, evaluation | PRETRAINING_NEEDS)
    check_schedule(args, parser)
    samples = args.max_train_samples
    if samples is not None and args.streaming:
        # the scripts cut only a map-style dataset; a stream would silently train on all of it
        raise ArgumentError(f"--max_train_samples {samples}: not supported with --streaming")
    if samples is not None and samples < args.gradient_accumulation_steps:
        raise ArgumentError(
            f"--max_train_samples {samples}: an update needs at least one example for each of the "
            f"--gradient_accumulation_steps {args.gradient_accumulation_steps} micro-batches"
        )
    check_audio_lengths(args)


def check_schedule(args, parser: argparse.ArgumentParser) -> None:
    """``--lr_scheduler_type`` is one the loop can step; ``--tri_stage_ratios`` are three fractions
    summing to 1 (set only for tri_stage); ``--num_warmup_steps`` fits in the run and is not given to
    tri_stage, whose warmup is its first ratio."""
    schedule = args.lr_scheduler_type
    if schedule not in LR_SCHEDULERS:
        raise ArgumentError(f"--lr_scheduler_type {schedule}: must be one of {', '.join(LR_SCHEDULERS)}")
    text = args.tri_stage_ratios
    try:
        ratios = [float(r) for r in text.split(",")]
    except ValueError:
        ratios = []
    if len(ratios) != 3 or not all(FRACTION.accepts(r) for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        raise ArgumentError(
            f"--tri_stage_ratios {text}: must be three fractions in [0, 1] (warmup, hold, decay) summing to 1"
        )
    if schedule != "tri_stage" and is_given(args, parser, "tri_stage_ratios"):
        raise ArgumentError(f"--tri_stage_ratios {text}: only used with --lr_scheduler_type tri_stage")
    warmup = args.num_warmup_steps
    if warmup is not None and schedule == "tri_stage":
        raise ArgumentError(
            f"--num_warmup_steps {warmup}: not used by --lr_scheduler_type tri_stage, whose warmup is the "
            "first of --tri_stage_ratios"
        )
    if warmup is not None and warmup > args.max_train_steps:
        raise ArgumentError(
            f"--num_warmup_steps {warmup}: must not exceed --max_train_steps {args.max_train_steps}"
        )


def check_audio_lengths(args) -> None:
    """The audio clip bounds fit together: the minimum is at most the crop length, and a batch of
    ``--max_tokens`` samples holds at least one clip of the minimum length."""
    shortest, longest = getattr(args, "min_length_seconds", None), getattr(args, "max_length_seconds", None)
    if shortest is None or longest is None:
        return
    if shortest > longest:
        raise ArgumentError(
            f"--min_length_seconds {shortest}: must not exceed --max_length_seconds {longest} "
            "(longer clips are cropped to it)"
        )
    max_tokens, minimum = args.max_tokens, int(shortest * args.sampling_rate)
    if args.group_by_length and 0 < max_tokens < minimum:
        # every clip kept is longer than a batch may hold
        raise ArgumentError(
            f"--max_tokens {max_tokens}: must be 0 (no limit) or at least --min_length_seconds x "
            f"--sampling_rate = {minimum} samples"
        )
