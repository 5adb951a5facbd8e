"""Building the parts of a pretraining run: the model, its speed-ups, the accelerator, the batches."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from torch.utils.data import DataLoader
from transformers.modeling_layers import GradientCheckpointingLayer

from .arguments import check_config, check_overrides, parse_config_overrides
from .data.batching import EpochBatchSampler, WithIndex
from .data.common import DataError
from .spec import ConfigError, ModalitySpec

logger = logging.getLogger("data2vec_hf.pretraining")


def build_model(spec: ModalitySpec, args) -> nn.Module:
    """The pretraining model of ``--version``: from ``--model_name_or_path``, ``--config_name`` or the
    released base config, with ``--config_overrides``. Config problems raise :class:`ConfigError`."""
    model_cls = spec.model_classes[args.version]
    overrides = parse_config_overrides(args.config_overrides)
    config_cls = model_cls.config_class
    check_overrides(overrides, config_cls())
    try:
        if args.model_name_or_path:
            config = config_cls.from_pretrained(args.model_name_or_path, **overrides)
        elif args.config_name:
            config = config_cls.from_pretrained(args.config_name, **overrides)
        else:
            config = config_cls(**overrides)
    except (ValueError, TypeError, StrictDataclassError) as error:
        raise ConfigError(f"the model config cannot be built: {error}") from error
    check_config(config)
    if getattr(config, "ema_anneal_end_step", 0) is None:
        # the recipe anneals the EMA decay over the whole run (fairseq: ${optimization.max_update})
        config.ema_anneal_end_step = args.max_train_steps
    if spec.prepare_config is not None:
        config = spec.prepare_config(args, config)
    try:
        if args.model_name_or_path:
            return model_cls.from_pretrained(args.model_name_or_path, config=config)
        return model_cls(config)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"the model cannot be built from this config: {error}") from error


def speed_up(model: nn.Module, args) -> None:
    """``--gradient_checkpointing`` (transformers' mechanism: every block is a GradientCheckpointingLayer;
    the teacher runs without gradients, so only the student recomputes) and ``--torch_compile`` (each
    transformer block of student and teacher, with dynamic shapes)."""
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if args.torch_compile:
        compile_blocks(model, mode=args.torch_compile_mode, backend=args.torch_compile_backend)


def compile_blocks(model: nn.Module, **compile_kwargs) -> int:
    """``torch.compile`` every transformer block of student and teacher (dynamic shapes); returns how many.

    The blocks share one code object, so dynamo keeps one cache for all of them, and some entries
    specialise on a block: the teacher's target hooks close over the layer index, and student and
    teacher differ in grad mode. Past dynamo's default recompile limit (8) the remaining blocks would
    silently run eager, so the limit is raised to cover two entries per block."""
    blocks = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    limit = 2 * len(blocks) + 8
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
    for block in blocks:
        block.compile(dynamic=True, **compile_kwargs)
    return len(blocks)


def build_accelerator(args, output_dir: Path) -> Accelerator:
    return Accelerator(
        # without an accelerator device, several launched processes must still form a (gloo) group:
        # accelerate only does that when told it runs on CPU
        cpu=not torch.accelerator.is_available(),
        # the loop counts micro-batches and switches gradient sync itself (accelerate would divide
        # every loss by the accumulation steps, for the loop to multiply back)
        # the schedule counts optimizer updates; accelerate would otherwise step it once per process
        step_scheduler_with_optimizer=False,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to if args.with_tracking else None,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "runs")
        ),
    )


def build_sampler(spec: ModalitySpec, args, dataset, accelerator) -> EpochBatchSampler:
    """This process's batches of a map-style dataset: by duration where the modality groups by length
    (``--max_tokens`` and/or the batch size), else random batches of ``--per_device_train_batch_size``."""
    max_tokens = getattr(args, "max_tokens", None) or None
    grouped = spec.example_lengths is not None and getattr(args, "group_by_length", False)
    if max_tokens and not grouped:
        logger.info(
            "batches of --per_device_train_batch_size examples in random order: --max_tokens is not used"
        )
        max_tokens = None
    try:
        return EpochBatchSampler(
            spec.example_lengths(args, dataset) if grouped else [1] * len(dataset),
            max_tokens=max_tokens,
            batch_size=args.per_device_train_batch_size or (None if max_tokens else 8),
            seed=args.seed,
            group_by_length=grouped,
            batches_per_update=args.gradient_accumulation_steps,
            num_replicas=accelerator.num_processes,
            rank=accelerator.process_index,
        )
    except ValueError as error:  # too few examples for one update, or one longer than --max_tokens
        raise DataError(str(error)) from error


def build_dataloader(dataset, batch_sampler: EpochBatchSampler, collator, args) -> DataLoader:
    """The loader of a map-style dataset over this process's batches."""
    return DataLoader(
        WithIndex(dataset),
        batch_sampler=batch_sampler,
        collate_fn=collator,
        num_workers=args.dataloader_num_workers,
        # its own generator: creating an iterator (also when resuming) must not draw from the global
        # RNG, whose restored state drives dropout after a resume
        generator=torch.Generator().manual_seed(args.seed),
    )
