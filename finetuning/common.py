"""What the three fine-tuning scripts share: arguments, model loading through the Auto classes, resume,
the train → evaluate → predict stages, layer-wise learning-rate decay, the model card and the Hub push.

The scripts follow transformers' examples (``run_glue.py``, ``run_speech_recognition_ctc.py``,
``run_image_classification.py``): ``TrainingArguments`` plus model and data dataclasses parsed by
``HfArgumentParser`` (or one ``.json``/``.yaml`` file), the standard ``Trainer``, ``all_results.json`` /
``eval_results.json`` / ``train_results.json`` / ``trainer_state.json`` in ``--output_dir``.
Two deliberate differences: ``--push_to_hub`` goes through :func:`data2vec_hf.hub.push_folder_to_hub`
(one commit of the finished folder, safetensors only — the same path as pretraining and conversion)
instead of ``Trainer.push_to_hub``, and the model card is rendered from this package's templates.

Models are loaded with ``AutoConfig`` and the task's Auto class, so a data2vec 1.0 checkpoint gets
transformers' own head (``Data2VecTextForSequenceClassification``, ``Data2VecAudioForCTC``,
``Data2VecVisionForImageClassification``) and a data2vec 2.0 checkpoint gets the ``Data2Vec2*`` head
that ``import data2vec_hf`` registers with the same Auto classes.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import data2vec_hf  # noqa: F401  (registers the data2vec 2.0 classes with the Auto classes)
import datasets
import transformers
from data2vec_hf.cards import render_model_card
from data2vec_hf.hub import push_folder_to_hub
from huggingface_hub import EvalResult, ModelCardData
from torch import nn
from transformers import AutoConfig, HfArgumentParser, Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint


class BadInput(ValueError):
    """Input the script cannot use (arguments, data, checkpoint); reported without a traceback."""


def reports_bad_input(main):
    """Wrap a script's ``main``: bad input (:class:`BadInput` or the data pipeline's ``DataError``)
    prints ``error: <what is wrong>`` and returns exit code 2."""
    import functools

    from data2vec_hf.pretraining.data import DataError

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (BadInput, DataError) as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            return 2

    return wrapper


logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Arguments


@dataclass
class ModelArguments:
    """Which checkpoint to fine-tune (fields shared by the three scripts; each script adds its own)."""

    model_name_or_path: str = field(
        metadata={
            "help": "checkpoint to fine-tune: a folder written by the pretraining scripts or the converters "
            "(data2vec 1.0 or 2.0), or a Hub id"
        }
    )
    config_name: str | None = field(
        default=None, metadata={"help": "config name or path, if not the same as model_name_or_path"}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": 'config fields to override, e.g. "hidden_dropout_prob=0.1,classifier_dropout=0.2"'},
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "where downloaded models/datasets are cached"}
    )
    model_revision: str = field(default="main", metadata={"help": "model version (branch, tag or commit)"})
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "re-initialise a head whose size differs (e.g. another number of labels)"},
    )
    base_model_id: str | None = field(
        default=None,
        metadata={
            "help": "Hub id recorded as base_model in the model card (default: model_name_or_path when it "
            "is not a local folder)"
        },
    )
    remote_code: bool = field(
        default=False,
        metadata={
            "help": "data2vec 2.0: also write self-contained configuration and modelling files and an auto_map "
            "into --output_dir (and push them), so that transformers loads the model with "
            "trust_remote_code=True where data2vec_hf is not installed"
        },
    )


def parse_arguments(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple:
    """Parse the command line (or a single ``.json``/``.yaml`` file) into the dataclasses, as
    transformers' examples do; ``argv`` defaults to ``sys.argv[1:]``."""
    parser = HfArgumentParser(dataclass_types)
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(yaml_file=os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(args=argv)


@dataclass
class HubSettings:
    """``--push_to_hub`` and friends, taken out of ``TrainingArguments`` so that ``Trainer`` neither
    creates the repository at start nor pushes checkpoints: the finished folder is pushed at the end."""

    push: bool
    repo_id: str
    token: str | None
    private: bool | None


def take_hub_settings(training_args: TrainingArguments) -> HubSettings:
    settings = HubSettings(
        push=bool(training_args.push_to_hub),
        repo_id=training_args.hub_model_id or Path(training_args.output_dir).name,
        token=training_args.hub_token,
        private=training_args.hub_private_repo,
    )
    training_args.push_to_hub = False
    return settings


def setup_logging(training_args: TrainingArguments) -> None:
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()
    level = training_args.get_process_log_level()
    logger.setLevel(level)
    logging.getLogger("data2vec_hf").setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logger.info(f"Training/evaluation parameters {training_args}")


def resolve_checkpoint(training_args: TrainingArguments) -> str | None:
    """The checkpoint to resume from: ``--resume_from_checkpoint PATH``, ``latest`` (the newest
    ``checkpoint-*`` in ``--output_dir``), or — as transformers' examples do — the newest checkpoint
    found in ``--output_dir`` when none is given."""
    if not training_args.do_train:
        return None
    given = training_args.resume_from_checkpoint
    output_dir = training_args.output_dir
    last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if given in ("latest", "last", "True", "true"):
        if last is None:
            raise BadInput(f"--resume_from_checkpoint {given}: no checkpoint-* in {output_dir}")
        return last
    if given:
        if not os.path.isdir(given):
            raise BadInput(f"--resume_from_checkpoint {given} is not a folder")
        return given
    if last is not None:
        logger.info(
            f"Checkpoint detected, resuming training from {last}; use a new --output_dir to start over."
        )
    return last


def load_config(model_args: ModelArguments, **kwargs: Any):
    """``AutoConfig`` of the checkpoint with task fields (``kwargs``) and ``--config_overrides`` applied."""
    from data2vec_hf.pretraining.trainer import parse_config_overrides

    overrides = parse_config_overrides(model_args.config_overrides)
    source = model_args.config_name or model_args.model_name_or_path
    try:
        config, unused = AutoConfig.from_pretrained(
            source,
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
            return_unused_kwargs=True,
            **kwargs,
        )
    except (OSError, ValueError) as error:
        where = (
            "a folder without config.json"
            if os.path.isdir(source)
            else "neither a local folder nor a model on the Hub"
        )
        raise BadInput(f"--model_name_or_path {source!r}: {where} ({str(error).splitlines()[0]})") from None
    if unused:
        # e.g. feat_proj_dropout for a data2vec 2.0 speech model, which has none: the config drops it,
        # so say so instead of silently training without it
        logger.warning(
            f"{type(config).__name__} ({config.model_type}) has no field(s) {', '.join(sorted(unused))}: "
            "ignored"
        )
    unknown = [key for key in overrides if not hasattr(config, key)]
    if unknown:
        raise BadInput(f"unknown config field(s) in --config_overrides: {', '.join(unknown)}")
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def load_model(auto_class, model_args: ModelArguments, config):
    """The task model of ``config``'s type through ``auto_class``; a clear error for a config that has no
    such head (e.g. a pretraining checkpoint's ``pretraining_model/`` folder instead of the encoder)."""
    if type(config) not in auto_class._model_mapping:
        raise BadInput(
            f"{auto_class.__name__} has no model for config type {config.model_type!r}. Pass the "
            "exported encoder (the pretraining OUTPUT_DIR itself, not OUTPUT_DIR/pretraining_model) or a "
            "converted checkpoint"
        )
    model = auto_class.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
    )
    # Every head fine-tuned here (transformers' 1.0 heads and the Data2Vec2* heads alike) returns the mean
    # loss of its micro-batch and ignores ``num_items_in_batch``. Their ``forward`` takes ``**kwargs``,
    # from which the Trainer would conclude that the model normalises the loss by the item count itself:
    # it would then neither divide the loss by --gradient_accumulation_steps nor leave it per device
    # (``average_tokens_across_devices`` multiplies it by the number of processes), so the logged loss and
    # the gradient (hence gradient clipping) would grow with the accumulation steps and the processes.
    model.accepts_loss_kwargs = False
    return model


def data2vec_version(config) -> str:
    """``"2.0"`` for the ``data2vec2-*`` model types, else ``"1.0"``."""
    return "2.0" if config.model_type.startswith("data2vec2") else "1.0"


# --------------------------------------------------------------------------------------------------
# Layer-wise learning-rate decay (BEiT / data2vec fine-tuning)

# Block index in transformers' naming (``encoder.layer.3.``) and in timm/fairseq-style naming
# (``blocks.3.``, ``layers.3.``).
_BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|blocks)\.(\d+)\.")
# Layer 0: everything before the blocks. 1.0: ``embeddings`` (patch projection, CLS token; text: token and
# position embeddings), audio's convolutional feature encoder, projection and positional convolution. 2.0
# (as fairseq's data2vec2 fine-tuning): the whole modality encoder — local encoder (patch embedding, CNN +
# projection, token + position embeddings and their norm), relative positions, ALiBi scale, extra (CLS)
# tokens, context norm and prenet blocks.
_EMBEDDING = re.compile(
    r"(?:^|\.)(?:embeddings|word_embeddings|position_embeddings|embedding_norm|patch_embed\w*|cls_token"
    r"|mask_token|pos_embed\w*|extra_tokens|context_norm|prenet|relative_positions|alibi_scale|local_encoder"
    r"|feature_extractor|feature_projection|pos_conv_embed|masked_spec_embed)(?:\.|$)"
)
# The backbone of a Data2Vec2* task model: in it, ``blocks.i`` is block i and everything else is the
# modality encoder.
_V2_BACKBONE = re.compile(r"^data2vec2_(?:audio|vision|text)\.")
_V2_BLOCK = re.compile(r"blocks\.(\d+)\.")
# No weight decay, as BEiT: every 1-D parameter (biases, norms, layer scales), plus these tokens/tables.
NO_WEIGHT_DECAY = ("cls_token", "mask_token", "position_embeddings", "pos_embed", "extra_tokens")


def layer_id(name: str, num_layers: int) -> int:
    """BEiT's layer id of a parameter: embeddings (2.0: the modality encoder) 0, block ``i`` → ``i + 1``,
    everything after the blocks (final norm/pooler, head, a relative position bias shared by all blocks)
    ``num_layers + 1``."""
    backbone = _V2_BACKBONE.match(name)
    if backbone:
        block = _V2_BLOCK.match(name, backbone.end())
        return int(block.group(1)) + 1 if block else 0
    block, embedding = _BLOCK.search(name), _EMBEDDING.search(name)
    # the outer of the two decides: ``encoder.pos_conv_embed.layers.0.conv`` (the positional convolution
    # before the blocks) is part of the embeddings, not block 0
    if embedding is not None and (block is None or embedding.start() < block.start()):
        return 0
    if block is not None:
        return int(block.group(1)) + 1
    return num_layers + 1


def layer_decay_parameter_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    layer_decay: float,
    num_layers: int | None = None,
) -> list[dict]:
    """Optimizer parameter groups with ``lr = learning_rate * layer_decay ** (num_layers + 1 - layer_id)``.

    timm has the same idea in ``timm.optim.param_groups_layer_decay``, but it is not reused here: it
    finds the blocks through a timm model's ``group_matcher()`` (``blocks.N``, ``patch_embed``), which
    transformers' modules (``encoder.layer.N``, ``embeddings``) do not have — without it, timm falls back
    to cutting the parameter list into equal chunks regardless of block boundaries — and it returns an
    ``lr_scale`` per group that only timm's schedulers apply (transformers' LambdaLR schedules ignore
    it). So the groups here carry the scaled ``lr`` itself, which every torch scheduler preserves.
    """
    if num_layers is None:
        num_layers = model.config.num_hidden_layers
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = layer_id(name, num_layers)
        decay = not (param.ndim <= 1 or name.endswith(".bias") or any(k in name for k in NO_WEIGHT_DECAY))
        scale = layer_decay ** (num_layers + 1 - layer)
        group = groups.setdefault(
            (layer, decay),
            {
                "params": [],
                "param_names": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr": learning_rate * scale,
                "lr_scale": scale,
                "layer_id": layer,
            },
        )
        group["params"].append(param)
        group["param_names"].append(name)
    # head first: the Trainer logs the first group's learning rate, which is then the undecayed one
    return [groups[key] for key in sorted(groups, key=lambda key: (-key[0], key[1]))]


class LayerDecayTrainer(Trainer):
    """``Trainer`` whose AdamW (or any ``--optim``) gets layer-wise decayed learning rates when
    ``layer_decay`` < 1; the schedule then scales every group's own ``lr``."""

    def __init__(self, *args, layer_decay: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.layer_decay = layer_decay

    def create_optimizer(self, model=None):
        if self.optimizer is not None or self.layer_decay >= 1.0:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        groups = layer_decay_parameter_groups(
            model, self.args.learning_rate, self.args.weight_decay, self.layer_decay
        )
        for group in groups:
            group.pop("param_names")
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer


# --------------------------------------------------------------------------------------------------
# Stages


def train(trainer: Trainer, checkpoint: str | None, num_samples: int) -> dict:
    """Train (resuming from ``checkpoint``), save the model (safetensors) with its processor, and write
    ``train_results.json`` and ``trainer_state.json``."""
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()
    metrics = {**result.metrics, "train_samples": num_samples}
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    return metrics


def evaluate(trainer: Trainer, dataset, *, suffix: str = "", save: bool = True) -> dict:
    """``trainer.evaluate`` with ``eval_samples``; ``suffix`` renames every key (MNLI mismatched: ``_mm``)."""
    metrics = trainer.evaluate(eval_dataset=dataset)
    metrics["eval_samples"] = len(dataset)
    metrics = {f"{key}{suffix}": value for key, value in metrics.items()}
    trainer.log_metrics("eval", metrics)
    if save:
        trainer.save_metrics("eval", metrics)
    return metrics


def split_metrics(metrics: dict, prefix: str = "eval_", suffix: str = "") -> dict[str, float]:
    """The task metrics of an ``evaluate``/``predict`` result without the Trainer's bookkeeping keys."""
    skip = ("loss", "runtime", "samples_per_second", "steps_per_second", "samples", "epoch")
    result = {}
    for key, value in metrics.items():
        if not key.startswith(prefix) or (suffix and not key.endswith(suffix)):
            continue
        name = key[len(prefix) : len(key) - len(suffix) if suffix else None]
        if name not in skip and isinstance(value, int | float):
            result[name] = float(value)
    return result


# --------------------------------------------------------------------------------------------------
# Model card and push

# metric key → (model-index metric type, pretty name)
METRIC_NAMES = {
    "accuracy": ("accuracy", "Accuracy"),
    "top5_accuracy": ("top_5_accuracy", "Top-5 accuracy"),
    "f1": ("f1", "F1"),
    "matthews_correlation": ("matthews_correlation", "Matthews correlation"),
    "pearson": ("pearsonr", "Pearson correlation"),
    "spearmanr": ("spearmanr", "Spearman correlation"),
    "wer": ("wer", "WER"),
    "cer": ("cer", "CER"),
}


@dataclass
class DatasetDescription:
    """Where the data came from, for the card: a Hub dataset (``hub_id``) or local files (``name``)."""

    name: str
    hub_id: str | None = None
    config: str | None = None

    @classmethod
    def from_args(cls, data_args, fallback: str = "local files") -> DatasetDescription:
        hub_id = getattr(data_args, "dataset_name", None)
        config = getattr(data_args, "dataset_config_name", None)
        if hub_id:
            return cls(name=f"{hub_id} ({config})" if config else hub_id, hub_id=hub_id, config=config)
        sources = [
            getattr(data_args, key, None)
            for key in ("train_file", "train_dir", "validation_file", "validation_dir")
        ]
        source = next((s for s in sources if s), None)
        return cls(name=Path(source).name if source else fallback)


def base_model_id(model_args: ModelArguments) -> str | None:
    if model_args.base_model_id:
        return model_args.base_model_id
    path = model_args.model_name_or_path
    return None if os.path.exists(path) else path


def eval_results(
    results: Sequence[tuple[str, dict[str, float]]],
    *,
    task_type: str,
    task_name: str,
    dataset: DatasetDescription,
) -> list[EvalResult]:
    """One ``EvalResult`` per (split, metric) for the card's model-index."""
    entries = []
    for split, metrics in results:
        for key, value in metrics.items():
            metric_type, metric_name = METRIC_NAMES.get(key, (key, key))
            entries.append(
                EvalResult(
                    task_type=task_type,
                    task_name=task_name,
                    dataset_type=dataset.hub_id or "local",
                    dataset_name=dataset.name,
                    dataset_config=dataset.config,
                    dataset_split=split,
                    metric_type=metric_type,
                    metric_name=metric_name,
                    metric_value=round(float(value), 6),
                )
            )
    return entries


def training_table(trainer: Trainer, extra: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    args = trainer.args
    batch = f"{args.per_device_train_batch_size} x {args.gradient_accumulation_steps} x {args.world_size}"
    return [
        ("updates", trainer.state.global_step),
        ("epochs", round(trainer.state.epoch or 0.0, 3)),
        ("peak learning rate", args.learning_rate),
        ("schedule", f"{_plain(args.lr_scheduler_type)}, warmup {args.warmup_steps}"),
        ("optimizer", f"{_plain(args.optim)}, weight decay {args.weight_decay}"),
        ("batch size per device x accumulation x processes", batch),
        ("seed", args.seed),
        *extra,
    ]


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)  # enum members as their plain value


def write_card_and_push(
    trainer: Trainer,
    hub: HubSettings,
    *,
    template: str,
    model_args: ModelArguments,
    dataset: DatasetDescription,
    task_type: str,
    task_name: str,
    modality: str,
    results: Sequence[tuple[str, dict[str, float]]],
    usage: str,
    extra_training: Sequence[tuple[str, Any]] = (),
    tags: Sequence[str] = (),
    **variables: Any,
) -> Path | None:
    """Render ``model_cards/<template>.md`` into ``OUTPUT_DIR/README.md`` and push the folder when asked
    (main process only). ``results`` are ``(split, {metric: value})`` pairs; ``variables`` are extra
    template variables. Returns the card's path."""
    if not trainer.is_world_process_zero():
        return None
    output_dir = Path(trainer.args.output_dir)
    config = trainer.model.config
    version = data2vec_version(config)
    model_name = hub.repo_id
    remote_code = model_args.remote_code and write_remote_code(trainer.model, output_dir, version)
    if remote_code:  # the card's usage loads the folder's own code instead of importing data2vec_hf
        usage = usage.replace('model="{model}"', 'model="{model}", trust_remote_code=True')
    # combined_score (run_glue's mean of several metrics) stays in the JSON files, not in the card
    results = [(split, {k: v for k, v in m.items() if k != "combined_score"}) for split, m in results]
    metric_types = sorted({METRIC_NAMES.get(k, (k, k))[0] for _, metrics in results for k in metrics})
    card = render_model_card(
        template,
        ModelCardData(
            model_name=model_name,
            base_model=base_model_id(model_args),
            datasets=[dataset.hub_id] if dataset.hub_id else None,
            library_name="transformers",
            pipeline_tag=task_type,
            tags=["data2vec", f"data2vec-{version}", modality, task_type, "data2vec-hf", *tags],
            metrics=metric_types or None,
            eval_results=eval_results(results, task_type=task_type, task_name=task_name, dataset=dataset)
            or None,
        ),
        model_name=model_name,
        base_model=base_model_id(model_args) or model_args.model_name_or_path,
        version=version,
        model_type=config.model_type,
        architecture=type(trainer.model).__name__,
        dataset=dataset.name,
        usage=usage.format(model=model_name, import_data2vec_hf="" if remote_code else _import_line(version)),
        training_table=training_table(trainer, extra_training),
        results_table=[
            (split, METRIC_NAMES.get(key, (key, key))[1], f"{value:.4f}")
            for split, metrics in results
            for key, value in metrics.items()
        ],
        **variables,
    )
    path = output_dir / "README.md"
    card.save(path)
    if hub.push:
        info = push_folder_to_hub(
            output_dir,
            hub.repo_id,
            token=hub.token,
            private=hub.private,
            commit_message=f"Fine-tuned {config.model_type} ({task_name}) with data2vec-hf",
        )
        logger.info(f"Pushed {output_dir} to {info.commit_url}")
    return path


def write_remote_code(model, output_dir: Path, version: str) -> bool:
    """``--remote_code``: the generated modelling files and ``auto_map`` next to the saved model (see
    ``data2vec_hf.remote_code``); False, with a warning, where there is nothing to do."""
    if version != "2.0":
        logger.warning("--remote_code ignored: a data2vec 1.0 model loads in plain transformers already")
        return False
    if not (output_dir / "config.json").is_file():
        logger.warning(f"--remote_code ignored: no model was saved in {output_dir} (train with --do_train)")
        return False
    from data2vec_hf.remote_code import export_remote_code

    files = export_remote_code(model, output_dir)
    logger.info(f"wrote {', '.join(p.name for p in files)} and the auto_map of {output_dir / 'config.json'}")
    return True


def _import_line(version: str) -> str:
    return "import data2vec_hf  # registers the data2vec 2.0 classes\n" if version == "2.0" else ""


@dataclass
class SplitSourceArguments:
    """Where the train/validation/test splits come from (read by :func:`load_split`); a script's data
    arguments subclass this and redefine ``train_dir``/``train_file`` with their expected layout."""

    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset (network)"})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration"})
    train_split_name: str = field(default="train", metadata={"help": "Hub split(s) for training"})
    eval_split_name: str = field(default="validation", metadata={"help": "Hub split for evaluation"})
    predict_split_name: str = field(default="test", metadata={"help": "Hub split for --do_predict"})
    train_dir: str | None = field(default=None, metadata={"help": "local training folder"})
    train_file: str | None = field(default=None, metadata={"help": "local training manifest"})
    validation_dir: str | None = field(default=None, metadata={"help": "evaluation folder"})
    validation_file: str | None = field(default=None, metadata={"help": "evaluation manifest"})
    test_dir: str | None = field(default=None, metadata={"help": "folder for --do_predict"})
    test_file: str | None = field(default=None, metadata={"help": "manifest for --do_predict"})


def load_split(
    data_args: SplitSourceArguments, which: str, modality: str, cache_dir: str | None
) -> datasets.Dataset | None:
    """Raw split ``which`` ("train", "validation", "test") from local ``<which>_dir``/``<which>_file`` or a
    Hub dataset, media columns undecoded; None when the split is not given."""
    from data2vec_hf.pretraining.data import load_raw_dataset

    local_dir = getattr(data_args, f"{which}_dir")
    local_file = getattr(data_args, f"{which}_file")
    if local_dir or local_file:
        return load_raw_dataset(modality, train_dir=local_dir, train_file=local_file, cache_dir=cache_dir)
    if data_args.dataset_name:
        split = {
            "train": data_args.train_split_name,
            "validation": data_args.eval_split_name,
            "test": data_args.predict_split_name,
        }[which]
        return load_raw_dataset(
            modality,
            dataset_name=data_args.dataset_name,
            dataset_config_name=data_args.dataset_config_name,
            train_split_name=split,
            cache_dir=cache_dir,
        )
    return None
