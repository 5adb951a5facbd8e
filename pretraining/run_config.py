"""The typed run configuration of the pretraining scripts: one dataclass per concern, parsed with
transformers' ``HfArgumentParser`` (see :func:`~data2vec_hf.pretraining.arguments.build_parser`).

A field typed ``X | None = None`` whose name is a key of the modality's recipe (``ModalitySpec.defaults``)
is filled from the recipe of ``--version`` after parsing, unless given; its ``--help`` shows both
versions' values. Each entry script adds a dataclass of its own flags (``AudioArguments``, ...), and the
online evaluation flags are the probe settings of ``data2vec-probe`` behind ``--eval_``
(:data:`~data2vec_hf.evaluation.settings.OnlineEvaluationArguments`).

The parser still returns one flat namespace (``args.learning_rate``); :meth:`RunConfig.from_namespace`
gives the typed view of it, grouped as below.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from .typed_flags import from_namespace

WEIGHT_DECAY_SCOPES = ("all", "no_1d_bias", "matrices")


@dataclass
class ModelArguments:
    _argument_group_name = "model"

    version: int = field(default=1, metadata={"help": "data2vec version"})
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "continue from a checkpoint (ours, or a native transformers data2vec one)"},
    )
    config_name: str | None = field(
        default=None,
        metadata={"help": "config to start from (path or name); default: the released base config"},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": 'comma-separated overrides, e.g. "hidden_size=64,num_hidden_layers=2,conv_dim=(32,32)"'
        },
    )


@dataclass
class DataArguments:
    _argument_group_name = "data"

    dataset_name: str | None = field(default=None, metadata={"help": "a datasets hub name or loading script"})
    dataset_config_name: str | None = field(default=None, metadata={"help": "the dataset configuration name"})
    train_split_name: str = field(default="train", metadata={"help": "split to train on"})
    streaming: bool = field(default=False, metadata={"help": "stream the dataset instead of downloading it"})
    train_dir: str | None = field(default=None, metadata={"help": "local folder of training files"})
    train_file: str | None = field(
        default=None, metadata={"help": "local training file (csv/json/jsonl/txt)"}
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "where datasets and the embedded corpus are cached"}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "truncate the training set (debugging)"}
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "processes for dataset preprocessing"}
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})


@dataclass
class OptimizationArguments:
    """The update and its schedule; the fields typed ``X | None = None`` without a help default come
    from the recipe of ``--version``."""

    _argument_group_name = "optimisation"

    per_device_train_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "examples per process and micro-batch (default: 8, or unlimited with --max_tokens)"
        },
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "micro-batches per optimizer update"}
    )
    learning_rate: float | None = field(default=None, metadata={"help": "peak learning rate"})
    weight_decay: float | None = field(
        default=None,
        metadata={"help": "decoupled (AdamW) weight decay; --weight_decay_scope says which parameters"},
    )
    adam_beta1: float | None = field(default=None, metadata={"help": "AdamW beta1"})
    adam_beta2: float | None = field(default=None, metadata={"help": "AdamW beta2"})
    adam_epsilon: float | None = field(default=None, metadata={"help": "AdamW epsilon"})
    max_grad_norm: float | None = field(
        default=None, metadata={"help": "gradient clipping norm (0 disables)"}
    )
    weight_decay_scope: Literal["all", "no_1d_bias", "matrices"] = field(
        default="all",
        metadata={
            "help": "which parameters are decayed: 'all' trainable ones (what fairseq's released recipes do), "
            "'no_1d_bias' (exempts 1-D parameters, biases and ALiBi scales, as data2vec2.py intends) or "
            "'matrices' (only Linear/Conv weights)"
        },
    )
    max_train_steps: int = field(default=1000, metadata={"help": "number of optimizer updates"})
    lr_scheduler_type: str | None = field(
        default=None,
        metadata={
            "help": "tri_stage (fairseq's) or any transformers scheduler name (cosine, linear, "
            "constant_with_warmup, ...)"
        },
    )
    num_warmup_steps: int | None = field(
        default=None,
        metadata={
            "help": "warmup updates (default: 3%% of the run for tri_stage, else the recipe's warmup fraction)"
        },
    )
    tri_stage_ratios: str = field(
        default="0.03,0.9,0.07", metadata={"help": "warmup/hold/decay fractions of the tri_stage schedule"}
    )


@dataclass
class CheckpointArguments:
    """Where the run writes, how it resumes and when it stops on its own."""

    _argument_group_name = "training and checkpointing"

    output_dir: str = field(metadata={"help": "where the encoder, checkpoints and logs are written"})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "allow a non-empty output dir without resuming"}
    )
    seed: int = field(default=42, metadata={"help": "random seed (masks, init, data order)"})
    checkpointing_steps: int = field(
        default=500, metadata={"help": "save a resumable checkpoint every N updates (and at the end)"}
    )
    checkpoints_total_limit: int = field(default=2, metadata={"help": "keep only the last K checkpoints"})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "a checkpoint folder, or 'latest' (starts fresh when none exists)"}
    )
    max_nonfinite_updates: int = field(
        default=5,
        metadata={"help": "stop after this many updates in a row with a NaN/inf loss (they are skipped)"},
    )


@dataclass
class PerformanceArguments:
    """Precision, memory and compilation: how fast a step runs, not what it computes."""

    _argument_group_name = "precision and speed"

    mixed_precision: Literal["no", "fp16", "bf16"] | None = field(
        default=None, metadata={"help": "overrides accelerate's config"}
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "recompute the student's block activations in the backward pass (less memory, ~30%% more time)"
        },
    )
    torch_compile: bool = field(
        default=False,
        metadata={
            "help": "compile the transformer blocks of student and teacher with torch.compile (dynamic shapes, "
            "so clips of other lengths do not recompile)"
        },
    )
    torch_compile_mode: str | None = field(
        default=None, metadata={"help": "torch.compile mode (default, reduce-overhead, max-autotune)"}
    )
    torch_compile_backend: str = field(
        default="inductor", metadata={"help": "torch.compile backend (inductor, aot_eager, ...)"}
    )
    keep_host_memory: bool = field(
        default=True,
        metadata={
            "help": "CPU training on glibc: malloc keeps freed memory for the next step instead of unmapping it "
            "(almost no page faults in steady state; base steps 10-24%% faster on 2 cores, peak RSS a little "
            "higher)"
        },
    )


@dataclass
class TrackingArguments:
    _argument_group_name = "logging and tracking"

    logging_steps: int = field(default=10, metadata={"help": "log metrics every N updates"})
    with_tracking: bool = field(
        default=False, metadata={"help": "log metrics to the trackers in --report_to"}
    )
    report_to: str = field(
        default="tensorboard", metadata={"help": "accelerate tracker(s): tensorboard, wandb, all, ..."}
    )


@dataclass
class HubArguments:
    _argument_group_name = "export and Hub"

    push_to_hub: bool = field(
        default=False, metadata={"help": "upload the output folder to the Hub at the end"}
    )
    remote_code: bool = field(
        default=False,
        metadata={
            "help": "data2vec 2.0: write the modelling code into the exported folders (auto_map), so that "
            "AutoModel.from_pretrained(dir, trust_remote_code=True) works without data2vec-hf installed"
        },
    )
    hub_model_id: str | None = field(
        default=None, metadata={"help": "repository id for --push_to_hub (default: output dir name)"}
    )
    hub_token: str | None = field(default=None, metadata={"help": "Hub token (default: the logged-in one)"})
    hub_private_repo: bool = field(default=False, metadata={"help": "create the Hub repository as private"})


SHARED_ARGUMENTS = (
    ModelArguments,
    DataArguments,
    OptimizationArguments,
    CheckpointArguments,
    PerformanceArguments,
    TrackingArguments,
    HubArguments,
)


@dataclass
class RunConfig:
    """The typed view of a pretraining script's parsed flags, one dataclass per concern; ``modality``
    is the entry script's dataclass (None for a script that declares its flags another way)."""

    model: ModelArguments
    data: DataArguments
    optimization: OptimizationArguments
    training: CheckpointArguments
    performance: PerformanceArguments
    tracking: TrackingArguments
    hub: HubArguments
    modality: Any
    evaluation: Any

    @classmethod
    def from_namespace(cls, spec, args) -> RunConfig:
        """Split the flat namespace ``build_parser(spec).parse_args(argv)`` returned (after the recipe
        defaults were filled) into the typed groups."""
        from data2vec_hf.evaluation.settings import OnlineEvaluationArguments

        shared = [from_namespace(dtype, args) for dtype in SHARED_ARGUMENTS]
        modality = modality_arguments(spec)
        return cls(
            *shared,
            modality=from_namespace(modality, args) if modality is not None else None,
            evaluation=from_namespace(OnlineEvaluationArguments, args),
        )


def modality_arguments(spec) -> type | None:
    """The dataclass of a script's own flags: its ``ModalitySpec.add_arguments`` when that is a
    dataclass (None when it is a function that adds flags to an argparse group)."""
    hook = spec.add_arguments
    return hook if isinstance(hook, type) and dataclasses.is_dataclass(hook) else None
