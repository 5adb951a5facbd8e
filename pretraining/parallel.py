"""How the model is spread over the processes: replicated (DDP) or sharded (FSDP2).

**Replicated** is accelerate's own path: ``accelerator.prepare`` wraps the model in DDP and the
optimizer, every process holds everything.

**Sharded** applies ``torch.distributed.fsdp.fully_shard`` (FSDP2) ourselves, when ``accelerate launch
--use_fsdp --fsdp_version 2`` (or an accelerate config file with ``distributed_type: FSDP``) asks for it.
accelerate's own FSDP plugin cannot be used for data2vec: it shards the model it is given as one tree,
but the EMA teacher must be sharded *exactly like* the student, block for block, so that the EMA update
pairs identical local shards (no all-gather), and accelerate ignores the plugin altogether on a
CPU-only machine. The units are: every transformer block of the student, the same blocks of the
teacher, the teacher as a whole, and the pretraining model (the root). Shared student modules that the
teacher borrows live in the root unit, whose parameters are gathered while the model's forward runs —
which is when the teacher borrows them. Checkpoints are written with ``torch.distributed.checkpoint``
(one shard file per process); the exported encoder is gathered into an ordinary full checkpoint.

Both **sum** gradients over processes (DDP through a communication hook, FSDP2 with a divide factor of
1), and both reduce them only when the loop says the micro-batch ends an update: the loop owns the
accumulation and divides once by the update's global masked count (see
:mod:`~data2vec_hf.pretraining.trainer`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from .spec import ConfigError

logger = logging.getLogger("data2vec_hf.pretraining")

SHARDED_MODEL_DIR = "sharded_model"  # inside a checkpoint folder: the DCP files of model and optimizer
SUPPORTED_WRAP_POLICIES = ("TRANSFORMER_BASED_WRAP",)


@dataclass
class FsdpRequest:
    """What ``accelerate launch --use_fsdp ...`` put into the environment."""

    version: int
    wrap_policy: str
    layer_classes: tuple[str, ...]
    state_dict_type: str
    reshard_after_forward: bool
    activation_checkpointing: bool

    @classmethod
    def from_environment(cls, environ=os.environ) -> FsdpRequest | None:
        if environ.get("ACCELERATE_USE_FSDP", "false").lower() not in ("1", "true", "yes"):
            return None
        version = int(environ.get("FSDP_VERSION", "1"))
        if version != 2:
            raise ConfigError(
                f"FSDP version {version} was requested; data2vec-hf shards with FSDP2 only: pass "
                "--fsdp_version 2 to accelerate launch (or fsdp_version: 2 in the config file)"
            )
        policy = environ.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP") or "TRANSFORMER_BASED_WRAP"
        if policy not in SUPPORTED_WRAP_POLICIES:
            raise ConfigError(
                f"FSDP auto-wrap policy {policy} is not supported: student and teacher are sharded per "
                "transformer block (TRANSFORMER_BASED_WRAP)"
            )
        classes = tuple(
            c.strip() for c in environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if c.strip()
        )
        if environ.get("FSDP_OFFLOAD_PARAMS", "false").lower() == "true":
            raise ConfigError(
                "FSDP parameter offloading to the CPU is not supported by data2vec-hf's FSDP2 path"
            )
        state_dict_type = environ.get("FSDP_STATE_DICT_TYPE", "SHARDED_STATE_DICT")
        if state_dict_type not in ("SHARDED_STATE_DICT", "FULL_STATE_DICT"):
            raise ConfigError(f"FSDP state dict type {state_dict_type} is not supported (SHARDED or FULL)")
        return cls(
            version=version,
            wrap_policy=policy,
            layer_classes=classes,
            state_dict_type=state_dict_type,
            reshard_after_forward=environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() == "true",
            activation_checkpointing=environ.get("FSDP_ACTIVATION_CHECKPOINTING", "false").lower() == "true",
        )


def block_classes(model: nn.Module, requested: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Names of the transformer block classes: the requested ones, else the model's
    ``_no_split_modules`` (transformers' list of blocks that must stay whole)."""
    names = requested or tuple(getattr(model, "_no_split_modules", None) or ())
    if not names:
        backbone = getattr(model, model.base_model_prefix)
        names = tuple(getattr(backbone, "_no_split_modules", None) or ())
    found = {type(m).__name__ for m in model.modules()}
    missing = [n for n in names if n not in found]
    if not names or missing:
        raise ConfigError(
            f"cannot find the transformer block classes {missing or '(none given)'} to shard in "
            f"{type(model).__name__}; pass --fsdp_transformer_layer_cls_to_wrap"
        )
    return names


class ParallelStrategy(Protocol):
    """What the loop asks of the way the model is spread over the processes."""

    sharded: bool

    def describe(self) -> str:
        """One line for the log and ``train_summary.json``."""

    def shard(self, model: nn.Module) -> nn.Module:
        """Spread the model before the optimizer is built (in place)."""

    def prepare(self, model, optimizer, scheduler):
        """``(model, optimizer, scheduler, unwrapped model)`` ready for training."""

    def gradient_sync(self, model, sync: bool) -> contextlib.AbstractContextManager:
        """A context for one micro-batch's forward and backward: gradients are summed over processes
        only when ``sync`` (the update's last micro-batch), else they accumulate locally."""

    def forward_context(self) -> contextlib.AbstractContextManager:
        """The context of the forward (autocast where the prepared model does not apply it itself)."""

    def clip(self, parameters, max_norm: float) -> float:
        """Clip the gradients' global norm; returns the norm before clipping."""

    def gathered(self, model) -> contextlib.AbstractContextManager:
        """A context in which the model's submodules can be called directly (online evaluation)."""

    def save(self, folder: Path) -> None: ...

    def load(self, folder: Path) -> None: ...

    def full_model(self, model):
        """The model with full (unsharded) tensors, on the main process (collective when sharded)."""


def sum_gradients(process_group, bucket):  # (DDP rejects a return annotation in string form)
    """DDP communication hook: all-reduce a gradient bucket as a **sum** (DDP's own hook averages)."""
    group = process_group if process_group is not None else torch.distributed.group.WORLD
    work = torch.distributed.all_reduce(bucket.buffer(), group=group, async_op=True)
    return work.get_future().then(lambda future: future.value()[0])


class Replicated:
    """Every process holds the whole model (DDP through accelerate, or a single process)."""

    sharded = False

    def __init__(self, accelerator):
        self.accelerator = accelerator

    def describe(self) -> str:
        kind = str(self.accelerator.distributed_type).split(".")[-1]
        return f"{kind}, {self.accelerator.num_processes} process(es), model replicated on each"

    def shard(self, model: nn.Module) -> nn.Module:
        return model  # nothing to do before the optimizer is built

    def prepare(self, model, optimizer, scheduler):
        """``(model, optimizer, scheduler, unwrapped model)`` ready for training."""
        model, optimizer, scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model.register_comm_hook(state=None, hook=sum_gradients)
        if getattr(self.accelerator, "scaler", None) is not None:
            report_skipped_steps(optimizer, self.accelerator.scaler)
        return model, optimizer, scheduler, self.accelerator.unwrap_model(model)

    def gradient_sync(self, model, sync: bool):
        if not sync and isinstance(model, torch.nn.parallel.DistributedDataParallel):
            return model.no_sync()
        return contextlib.nullcontext()

    def forward_context(self):
        return contextlib.nullcontext()  # accelerate's prepared model runs under autocast itself

    def clip(self, parameters, max_norm: float) -> float:
        return float(self.accelerator.clip_grad_norm_(parameters, max_norm))

    def gathered(self, model):
        """A context in which the model's submodules can be called directly (online evaluation)."""
        return contextlib.nullcontext()

    def save(self, folder: Path) -> None:
        self.accelerator.save_state(str(folder))

    def load(self, folder: Path) -> None:
        self.accelerator.load_state(str(folder))

    def full_model(self, model):
        """The unwrapped model with full (unsharded) tensors, on the main process."""
        return self.accelerator.unwrap_model(model)


def report_skipped_steps(optimizer, scaler) -> None:
    """Make ``accelerator.optimizer_step_was_skipped`` true after every step the fp16 loss scaler skipped.

    accelerate takes a step for skipped when the scaler did not call the optimizer's ``step``. A fused
    optimizer (``_step_supports_amp_scaling``: torch's fused AdamW, which ``build_optimizer`` picks on a
    GPU) is always called and skips inside its kernel, so accelerate reported every overflow as a step,
    and the loop counted it, stepped the schedule and the EMA teacher. The scaler lowers its scale
    exactly when it found inf/NaN gradients (``backoff_factor`` < 1): that is what is checked here."""
    step = optimizer.step

    def step_and_check(*args, **kwargs):
        before = scaler.get_scale()
        result = step(*args, **kwargs)
        if optimizer.gradient_state.sync_gradients:  # (accelerate steps only then)
            optimizer._is_overflow = scaler.get_scale() < before
        return result

    optimizer.step = step_and_check


class Sharded:
    """FSDP2: parameters, gradients and optimizer state sharded over the processes (student and teacher)."""

    sharded = True

    def __init__(self, accelerator, request: FsdpRequest):
        self.accelerator, self.request = accelerator, request

    def describe(self) -> str:
        return (
            f"FSDP2 over {self.accelerator.num_processes} process(es): student and EMA teacher sharded per "
            f"{', '.join(self.classes)} ({self.request.state_dict_type.lower().replace('_', ' ')} checkpoints"
            f"{', activation checkpointing' if self.request.activation_checkpointing else ''})"
        )

    def prepare(self, model, optimizer, scheduler):
        """The sharded model is used as it is (no DDP wrapper); the schedule is checkpointed through
        accelerate, model and optimizer through ``torch.distributed.checkpoint``."""
        self.model, self.optimizer = model, optimizer
        self.accelerator.register_for_checkpointing(scheduler)
        return model, optimizer, scheduler, model

    def shard(self, model: nn.Module) -> nn.Module:
        """``fully_shard`` student and teacher blocks, the teacher, then the root, in place."""
        from torch.distributed.fsdp import FSDPModule, fully_shard

        self.classes = sorted(block_classes(model, self.request.layer_classes))
        if self.request.activation_checkpointing and not model.is_gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        options = {"reshard_after_forward": self.request.reshard_after_forward}
        teacher = model.teacher.model
        for module in [*model.modules()]:
            if type(module).__name__ in self.classes:
                fully_shard(module, **options)
        fully_shard(teacher, **options)
        fully_shard(model, **options)
        for module in model.modules():  # reduce-scatter sums: the loop divides by the masked count
            if isinstance(module, FSDPModule):
                module.set_gradient_divide_factor(1.0)
                # as a plain SUM (gloo has no pre-multiplied sum, which FSDP would otherwise use)
                module.set_force_sum_reduction_for_comms(True)
        return model

    def gradient_sync(self, model, sync: bool):
        model.set_requires_gradient_sync(sync)  # reduce-scatter only on the update's last micro-batch
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def gathered(self, model):
        """The root unit's parameters gathered, so that the encoder can be called on its own (its blocks
        gather themselves); sharded again afterwards."""
        # FSDP decides which unit is the root at the first forward; make sure that is the model itself
        # even when the encoder is evaluated before any training step (no public API for this yet)
        model._get_fsdp_state()._lazy_init()
        model.unshard()
        try:
            yield
        finally:
            model.reshard()

    def forward_context(self):
        return self.accelerator.autocast()

    def clip(self, parameters, max_norm: float) -> float:
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def save(self, folder: Path) -> None:
        """Model and optimizer as sharded DCP files (or one full file), the rest through accelerate."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optimizer_state = get_state_dict(self.model, self.optimizer)
        dcp.save(
            {"model": model_state, "optimizer": optimizer_state},
            checkpoint_id=str(folder / SHARDED_MODEL_DIR),
        )
        self.accelerator.save_state(str(folder))

    def load(self, folder: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optimizer_state = get_state_dict(self.model, self.optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=str(folder / SHARDED_MODEL_DIR))
        set_state_dict(
            self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
        )
        self.accelerator.load_state(str(folder))

    def full_model(self, model):
        """An ordinary (unsharded) copy of the model with the gathered weights, on the main process;
        every process must call this (the gathering is collective)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.accelerator.is_main_process:
            return None
        # fully_shard turned the model's class into a subclass ("FSDP<class>"): build the original one
        original = next(c for c in type(model).__mro__ if not c.__name__.startswith("FSDP"))
        plain = original(model.config)
        plain.load_state_dict(state)
        return plain


def make_parallel(accelerator, request: FsdpRequest | None) -> ParallelStrategy:
    """The strategy for this run: sharded when FSDP was requested (:meth:`FsdpRequest.from_environment`,
    read before the accelerator is built, so that a request we cannot honour fails first and clearly).

    fp16 trains only with loss scaling: without it, small gradients underflow to zero in half precision.
    accelerate builds its ``GradScaler`` (and turns on autocast) only on an accelerator device; on a CPU
    it keeps ``mixed_precision="fp16"`` yet computes in fp32 without a scaler, so a run that asks for
    fp16 there is refused rather than logged as fp16 while it is not."""
    if accelerator.mixed_precision == "fp16":
        if request is not None:
            raise ConfigError(
                "FSDP2 here runs with --mixed_precision bf16 or no: fp16 would need loss scaling"
            )
        if getattr(accelerator, "scaler", None) is None:
            raise ConfigError("--mixed_precision fp16 needs a GPU (loss scaling); on CPU use bf16 or no")
    if request is None:
        return Replicated(accelerator)
    if accelerator.num_processes < 2:
        logger.warning("FSDP was requested with a single process: the model is sharded over one process")
    return Sharded(accelerator, request)
