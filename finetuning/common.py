"""What the three fine-tuning scripts share: arguments, logging, resume, model loading through the Auto
classes, the train → evaluate stages and the data splits. Layer-wise learning-rate decay is in
``layer_decay.py``, the model card and the Hub push in ``card_and_push.py``.

The scripts follow transformers' examples (``run_glue.py``, ``run_speech_recognition_ctc.py``,
``run_image_classification.py``): ``TrainingArguments`` plus model and data dataclasses parsed by
``HfArgumentParser`` (or one ``.json``/``.yaml`` file), the standard ``Trainer``, ``all_results.json`` /
``eval_results.json`` / ``train_results.json`` / ``trainer_state.json`` in ``--output_dir``.
Two deliberate differences: ``--push_to_hub`` goes through :func:`data2vec_hf.hub.push_folder_to_hub`
(one commit of the finished folder, safetensors only — the same path as pretraining and conversion)
instead of ``Trainer.push_to_hub``, and the model card is rendered from this package's templates (both
in ``card_and_push.py``).

Models are loaded with ``AutoConfig`` and the task's Auto class, so a data2vec 1.0 checkpoint gets
transformers' own head (``Data2VecTextForSequenceClassification``, ``Data2VecAudioForCTC``,
``Data2VecVisionForImageClassification``) and a data2vec 2.0 checkpoint gets the ``Data2Vec2*`` head
that ``import data2vec_hf`` registers with the same Auto classes.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import data2vec_hf  # noqa: F401  (registers the data2vec 2.0 classes with the Auto classes)
import datasets
import transformers
from transformers import AutoConfig, HfArgumentParser, Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

# tests/test_model_cards.py reaches these through this module
from .card_and_push import DatasetDescription, HubSettings, write_card_and_push  # noqa: F401


class BadInput(ValueError):
    """Input the script cannot use (arguments, data, checkpoint); reported without a traceback."""


def reports_bad_input(main):
    """Wrap a script's ``main``: bad input (:class:`BadInput` or the data pipeline's ``DataError``)
    prints ``error: <what is wrong>`` and returns exit code 2."""
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
    from data2vec_hf.pretraining.arguments import parse_config_overrides

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
# Data splits


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
