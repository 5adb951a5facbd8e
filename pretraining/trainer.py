"""The Accelerate training loop shared by ``pretrain_audio.py``, ``pretrain_vision.py`` and ``pretrain_text.py``.

A modality entry point supplies a :class:`ModalitySpec` (its model classes, released recipes, data and
mask sampling); :class:`PretrainingLoop` does the rest, in named steps that read top to bottom:

    build (model, data, optimizer, schedule, resume)
    → for every micro-batch: ``micro_batch`` (forward, statistics, backward)
    → every ``gradient_accumulation_steps`` micro-batches: ``update`` (normalise gradients, clip, step,
      EMA, collapse guard) → ``log`` → ``checkpoint``
    → ``finish`` (export the encoder, write the summary).

Gradients follow fairseq: the loss is *summed* over the masked positions of every micro-batch and
process, and the summed gradient is divided once by the global number of masked positions, so the
objective does not depend on how an update is split into micro-batches or processes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, send_to_device, set_seed
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
from tqdm.auto import tqdm
from transformers.modeling_layers import GradientCheckpointingLayer

from .arguments import (
    apply_recipe_defaults,
    build_parser,
    check_config,
    check_overrides,
    parse_config_overrides,
    validate_arguments,
)
from .checkpoints import CheckpointError, resume_candidates, save_checkpoint
from .collectives import leave_together
from .data.batching import EpochBatchSampler, ExampleCollator, WithIndex, waste_fraction
from .data.streaming import StreamingBatches
from .export import export
from .host_memory import keep_freed_host_memory
from .optim import build_optimizer, build_scheduler
from .output_dir import claim_output_dir
from .parallel import FsdpRequest, make_parallel
from .run_record import (
    check_same_model,
    check_topology,
    describe_model,
    describe_topology,
    new_run_id,
    read_run_record,
    run_id_of,
    write_run_record,
)
from .spec import ArgumentError, ConfigError, ModalitySpec, TrainingStopped

logger = logging.getLogger("data2vec_hf.pretraining")

# batch entries that describe the batch and are not model inputs
BATCH_INFO_KEYS = ("example_index", "audio_samples")


@dataclasses.dataclass
class Progress:
    """Resumable loop state, saved with every checkpoint via ``register_for_checkpointing``."""

    num_updates: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0
    empty_in_row: int = 0
    samples_seen: int = 0
    first_metrics: dict | None = None
    history: list = dataclasses.field(default_factory=list)  # (update, loss, target_var) every logging step
    audio_epoch: list = dataclasses.field(
        default_factory=lambda: [0.0, 0.0, 0.0]
    )  # content, cropped, padding
    audio_total: list = dataclasses.field(default_factory=lambda: [0.0, 0.0, 0.0])
    audio_history: list = dataclasses.field(default_factory=list)  # (epoch, waste fraction)
    eval_history: list = dataclasses.field(default_factory=list)  # {"update", "train_seconds", metrics...}
    epoch_batches: list = dataclasses.field(default_factory=list)  # micro-batches per process, per epoch
    train_seconds: float = 0.0  # training time so far, evaluation excluded

    def state_dict(self):
        return dataclasses.asdict(self)

    def load_state_dict(self, state):
        for key, value in state.items():
            setattr(self, key, value)


class UpdateStatistics:
    """Sums over the micro-batches of one update, reduced over all processes in one all-reduce.

    Scalars: masked positions, loss sum, non-finite micro-batches, samples, candidate positions, the
    audio content / cropped / padding samples, and whether a process was asked to stop (SIGTERM), so
    that every process stops after the same update. Moments (count, Σy, Σy²) of targets and predictions give
    their feature std over the *whole* update on every process (fairseq's ``compute_var`` reduces its
    moments over processes the same way), which the collapse guard checks.
    """

    SCALARS = (
        "masked", "loss_sum", "nonfinite", "samples", "positions", "content", "cropped", "padding", "stop"
    )  # fmt: skip

    def __init__(self, hidden_size: int, device):
        self.hidden_size = hidden_size
        self.values = torch.zeros(len(self.SCALARS) + 2 + 4 * hidden_size, dtype=torch.float64, device=device)

    def add(self, out, loss_sum: torch.Tensor, finite: bool, batch_size: int, audio: torch.Tensor | None):
        n, d = len(self.SCALARS), self.hidden_size
        v = self.values
        v[0] += out.num_masked.double()
        v[1] += loss_sum.detach().double() if finite else 0.0
        v[2] += 0.0 if finite else 1.0
        v[3] += batch_size
        v[4] += out.mask.numel() if out.mask is not None else 0
        if audio is not None:
            v[5:8] += audio.to(v.device, torch.float64).reshape(-1, 3).sum(0)
        for offset, y in ((n, out.target), (n + 1 + 2 * d, out.prediction)):
            if y is None or not finite:
                continue
            y = y.detach().reshape(-1, d).double()
            v[offset] += y.shape[0]
            v[offset + 1 : offset + 1 + d] += y.sum(0)
            v[offset + 1 + d : offset + 1 + 2 * d] += (y * y).sum(0)

    stop = False

    def request_stop(self) -> None:
        """Mark this process as asked to stop (read by every process at the next reduction)."""
        self.stop = True

    def reduce(self, accelerator: Accelerator) -> dict[str, Any]:
        """Sum over processes, reset, and return the totals with the feature stds."""
        self.values[8] = float(self.stop)
        totals = accelerator.reduce(self.values.clone(), reduction="sum")
        self.values.zero_()
        n, d = len(self.SCALARS), self.hidden_size
        result = dict(zip(self.SCALARS, totals[:n].tolist()))
        result["target_var"] = moments_std(totals[n : n + 1 + 2 * d], d)
        result["pred_var"] = moments_std(totals[n + 1 + 2 * d :], d)
        return result


def moments_std(moments: torch.Tensor, dim: int) -> float:
    """Mean over features of the std over positions, from (count, Σy, Σy²) — fairseq's ``compute_var``."""
    count, total, squares = moments[0], moments[1 : 1 + dim], moments[1 + dim :]
    if count < 2:
        return 0.0
    var = (squares - total * total / count) / (count - 1)
    return float(torch.sqrt(var.clamp(min=0) + 1e-6).mean())


# --------------------------------------------------------------------------------------------------
# Building


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
        gradient_accumulation_steps=args.gradient_accumulation_steps,
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
    from .data import DataError

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


# --------------------------------------------------------------------------------------------------
# The loop


class PretrainingLoop:
    """One pretraining run. ``PretrainingLoop(spec, args).train()`` builds everything, resumes when asked,
    trains for ``--max_train_steps`` updates and exports the encoder.

    ``callbacks`` are called as ``callback(loop, metrics)`` after every update, on every process (the
    metrics dict may be extended in place before it is logged); ``loop.unwrapped`` is the pretraining
    model, ``loop.progress.num_updates`` the update count.
    """

    def __init__(self, spec: ModalitySpec, args, callbacks: list[Callable] | None = None):
        self.spec, self.args = spec, args
        self.callbacks = list(callbacks or [])
        fsdp = FsdpRequest.from_environment()  # before accelerate's own FSDP plugin can object
        self.accelerator = accelerator = build_accelerator(args, Path(args.output_dir))
        # once for all processes (main process, then a broadcast): no race, and every node sees it
        self.output_dir = claim_output_dir(args, accelerator)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        set_seed(args.seed)
        kept = accelerator.device.type == "cpu" and args.keep_host_memory and keep_freed_host_memory()
        logger.info(
            "processes: %d, device: %s, mixed precision: %s, freed host memory kept: %s",
            accelerator.num_processes,
            accelerator.device,
            accelerator.mixed_precision,
            kept,
        )
        with accelerator.main_process_first():  # builds the default corpus / tokenizer once, then caches
            model = build_model(spec, args)
            self.config = model.config
            dataset, collate, self.processor = spec.build_data(args, self.config, accelerator)
        self.collator = ExampleCollator(collate, spec.sample_masks[args.version], self.config, args.seed)
        self.streaming = isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__")
        if self.streaming:
            self.stream = StreamingBatches(dataset, args, self.collator, accelerator)
        else:
            self.batch_sampler = build_sampler(spec, args, dataset, accelerator)
            self.dataloader = DataLoader(
                WithIndex(dataset),
                batch_sampler=self.batch_sampler,
                collate_fn=self.collator,
                num_workers=args.dataloader_num_workers,
                # its own generator: creating an iterator (also when resuming) must not draw from the
                # global RNG, whose restored state drives dropout after a resume
                generator=torch.Generator().manual_seed(args.seed),
            )
        self.parallel = make_parallel(accelerator, fsdp)
        speed_up(model, args)
        self.parallel.shard(model)
        optimizer = build_optimizer(model, args)
        scheduler = build_scheduler(args, optimizer)
        self.model, self.optimizer, self.scheduler, self.unwrapped = self.parallel.prepare(
            model, optimizer, scheduler
        )
        logger.info("parallelism: %s", self.parallel.describe())
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        from data2vec_hf.evaluation import OnlineEvaluator

        self.evaluator = OnlineEvaluator.from_args(args, spec.name, self.processor, accelerator)
        self.progress = Progress()
        accelerator.register_for_checkpointing(self.progress)
        self.statistics = UpdateStatistics(self.config.hidden_size, accelerator.device)
        self.dataset = dataset
        self.last_metrics: dict = {}
        self.nonfinite_examples: list[int] = []
        self.stop_requested, self.saved_at = False, -1
        self.run_id = new_run_id()  # a resumed run keeps the id of the run it continues
        # what a checkpoint must fit (version, class, config, shapes): fixed for the whole run
        self.model_record = describe_model(spec.name, args.version, self.unwrapped)
        self.topology = describe_topology(
            args,
            accelerator.num_processes,
            self.streaming,
            self.stream.workers if self.streaming else args.dataloader_num_workers,
            self.parallel.sharded,
        )
        self.resume()

    def resume(self) -> None:
        """Load the newest complete checkpoint (``latest``) or the named one.

        A checkpoint of another model or an incompatible topology stops the run (exit code 2) before
        anything is written (:mod:`.run_record`); with ``latest``, a damaged checkpoint (missing or
        cut-short files, or unreadable contents) is reported and the next older one is tried."""
        argument = self.args.resume_from_checkpoint
        for folder in resume_candidates(argument, self.checkpoint_dir):
            record = read_run_record(folder)
            if record is not None:
                check_same_model(folder, record, self.model_record)
                check_topology(folder, record["topology"], self.topology)
            try:
                self.parallel.load(folder)
            except Exception as error:
                if does_not_fit(error):  # an older checkpoint without a record, of another model
                    raise CheckpointError(
                        f"checkpoint {folder} does not fit this run's model ({first_line(error)}). Nothing "
                        "was loaded or deleted: resume with the flags that run was started with, or start "
                        "a new run in another --output_dir"
                    ) from error
                if argument != "latest":
                    raise CheckpointError(
                        f"cannot resume from {folder}: {type(error).__name__}: {error}"
                    ) from error
                logger.warning(
                    "cannot load checkpoint %s (%s: %s); trying an older one",
                    folder,
                    type(error).__name__,
                    error,
                )
                continue
            if record is not None:
                self.run_id = record["run_id"]
                # the same updates, split over other processes x micro-batches: count this run's batches
                updates_in_epoch = (
                    self.progress.batches_in_epoch // record["topology"]["gradient_accumulation_steps"]
                )
                self.progress.batches_in_epoch = updates_in_epoch * self.args.gradient_accumulation_steps
            self.accelerator.step = 0  # a checkpoint lies between updates: the next micro-batch starts one
            logger.info(
                "resumed from %s at update %d (epoch %d, batch %d)",
                folder,
                self.progress.num_updates,
                self.progress.epoch,
                self.progress.batches_in_epoch,
            )
            return
        if argument:
            logger.info(
                "no complete checkpoint to resume from in %s; starting from scratch", self.checkpoint_dir
            )

    # ---------------------------------------------------------------------------------------- steps

    def micro_batch(self, batch: dict) -> None:
        """Forward, statistics and backward of one micro-batch (the loss summed over masked positions)."""
        info = {key: batch.pop(key) for key in BATCH_INFO_KEYS if key in batch}
        with self.accelerator.accumulate(self.model):
            self.parallel.gradient_sync(self.model, self.accelerator.sync_gradients)
            with self.parallel.forward_context():
                out = self.model(**batch)
            loss_sum = out.loss * out.num_masked  # normalised by the global count in `update`
            finite = bool(torch.isfinite(loss_sum))
            if not finite and "example_index" in info:
                self.nonfinite_examples += info["example_index"].tolist()
            batch_size = len(next(iter(batch.values())))
            self.statistics.add(out, loss_sum, finite, batch_size, info.get("audio_samples"))
            self.accelerator.backward(loss_sum)
        self.progress.batches_in_epoch += 1

    def update(self) -> dict | None:
        """After the last micro-batch of an update: one optimizer step and one EMA step, or a skip when
        any micro-batch on any process had a non-finite loss. Returns the update's metrics."""
        totals = self.statistics.reduce(self.accelerator)
        self.count_audio(totals)
        if totals["stop"] > 0:
            self.stop_requested = True
        if totals["nonfinite"] > 0 or totals["masked"] == 0:
            self.skip_update(totals)
            return None
        self.progress.nonfinite_in_row = self.progress.empty_in_row = 0
        self.normalise_gradients(totals["masked"])
        grad_norm = self.clip_gradients()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.accelerator.optimizer_step_was_skipped:  # fp16 loss scaling found inf/NaN gradients
            logger.info("fp16 gradient overflow: the loss scale was lowered and this update skipped")
            return None
        self.scheduler.step()
        self.progress.num_updates += 1
        self.progress.samples_seen += int(totals["samples"])
        decay = self.unwrapped.ema_step(self.progress.num_updates)
        metrics = self.metrics(totals, grad_norm, decay)
        check_collapse(self.config, self.progress.num_updates, metrics, self.checkpoint_dir)
        return metrics

    def normalise_gradients(self, masked: float) -> None:
        """Turn the gradients into those of (Σ loss over all masked positions) / (their number).

        ``accelerator.backward`` divided every micro-batch's loss by the accumulation steps and DDP
        averaged over processes; undo both, and divide once by the global masked count (fairseq's
        ``multiply_grads(world_size / sample_size)`` on summed gradients)."""
        scale = self.accelerator.num_processes * self.accelerator.gradient_accumulation_steps / masked
        torch._foreach_mul_([p.grad for p in self.trainable if p.grad is not None], scale)

    def clip_gradients(self) -> float:
        """Clip to ``--max_grad_norm`` (0: no clipping); returns the norm before clipping."""
        max_norm = self.args.max_grad_norm if self.args.max_grad_norm > 0 else float("inf")
        return self.parallel.clip(self.trainable, max_norm)

    def skip_update(self, totals: dict) -> None:
        """Drop the gradients of an update that had a non-finite loss (naming the examples of the bad
        micro-batches) or nothing to regress; stop after too many of either in a row."""
        self.optimizer.zero_grad(set_to_none=True)
        progress, limit = self.progress, self.args.max_nonfinite_updates
        if totals["nonfinite"] == 0:  # no masked position in the whole update
            progress.empty_in_row += 1
            if progress.empty_in_row >= limit:
                raise TrainingStopped(
                    f"{progress.empty_in_row} updates in a row had no masked position to regress: the examples "
                    "are too short to mask (or hold only special tokens)"
                )
            return
        examples, self.nonfinite_examples = self.nonfinite_examples, []
        logger.warning(
            "NaN/inf loss: update skipped (%d in a row); the non-finite micro-batches held examples %s",
            progress.nonfinite_in_row + 1,
            describe_examples(self.dataset, examples),
        )
        progress.nonfinite_in_row += 1
        progress.nonfinite_total += 1
        if progress.nonfinite_in_row >= limit:
            raise TrainingStopped(
                f"{progress.nonfinite_in_row} updates in a row had a NaN/inf loss (--max_nonfinite_updates "
                f"{limit}); the last good checkpoint is kept in {self.checkpoint_dir}"
            )

    def count_audio(self, totals: dict) -> None:
        audio = [totals["content"], totals["cropped"], totals["padding"]]
        self.progress.audio_epoch = [a + b for a, b in zip(self.progress.audio_epoch, audio)]
        self.progress.audio_total = [a + b for a, b in zip(self.progress.audio_total, audio)]

    def metrics(self, totals: dict, grad_norm: float, decay: float) -> dict:
        elapsed = max(time.perf_counter() - self.started - self.eval_seconds, 1e-9)
        metrics = {
            "loss": totals["loss_sum"] / totals["masked"],
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": grad_norm,
            "ema_decay": decay,
            "target_var": totals["target_var"],
            "pred_var": totals["pred_var"],
            "masked_fraction": totals["masked"] / max(totals["positions"], 1.0),
            "samples_per_s": (self.progress.samples_seen - self.samples_at_start) / elapsed,
        }
        if self.progress.audio_epoch[0] > 0:
            metrics["audio_waste"] = waste_fraction(*self.progress.audio_epoch)
        if self.progress.first_metrics is None:
            self.progress.first_metrics = dict(metrics)
        return metrics

    def evaluate(self, metrics: dict | None = None) -> None:
        """Online probes of the frozen student (``--eval_*``), when due: their metrics join the update's
        (trackers, log) and ``eval_history``; their time is kept out of the training throughput."""
        step = self.progress.num_updates
        if self.evaluator is None or not self.evaluator.due(step, self.args.max_train_steps):
            return
        started = time.perf_counter()
        self.model.eval()
        with self.parallel.gathered(self.model):
            results = self.evaluator.evaluate(self.unwrapped, step)
        self.model.train()
        self.eval_seconds += time.perf_counter() - started
        self.progress.eval_history.append(
            {"update": step, "train_seconds": self.training_seconds()} | results
        )
        if metrics is not None:
            metrics.update(results)
        elif self.args.with_tracking:
            self.accelerator.log(results, step=step)

    def training_seconds(self) -> float:
        """Seconds spent training in this run and those it resumed, evaluation excluded."""
        return self.resumed_train_seconds + time.perf_counter() - self.started - self.eval_seconds

    def log(self, metrics: dict) -> None:
        self.bar.update(1)
        shown = {k: f"{v:.3g}" for k, v in metrics.items() if k != "lr" and not k.startswith("eval/")}
        if self.progress.eval_history:  # the latest probe result stays in the bar
            shown["probe"] = f"{self.progress.eval_history[-1]['eval/linear_best']:.3f}"
        self.bar.set_postfix(shown | {"lr": f"{metrics['lr']:.2e}"}, refresh=False)  # redrawn at mininterval
        step = self.progress.num_updates
        if step % self.args.logging_steps:
            return
        if self.args.with_tracking:
            self.accelerator.log(metrics, step=step)
        self.progress.history.append((step, metrics["loss"], metrics["target_var"]))
        if self.accelerator.is_main_process:
            logger.info("update %d: %s", step, json.dumps({k: round(v, 6) for k, v in metrics.items()}))

    def checkpoint(self, force: bool = False) -> None:
        step = self.progress.num_updates
        if force or step % self.args.checkpointing_steps == 0 or step == self.args.max_train_steps:
            self.progress.train_seconds = self.training_seconds()
            record = {
                "run_id": self.run_id,
                "update": step,
                **self.model_record,
                "topology": self.topology,
            }
            try:
                save_checkpoint(
                    self.accelerator,
                    self.checkpoint_dir,
                    step,
                    self.args.checkpoints_total_limit,
                    self.parallel.save,
                    write_extra=lambda folder: write_run_record(folder, record),
                    # rotation never deletes the checkpoints of another run in the same folder
                    same_run=lambda folder: run_id_of(folder) == self.run_id,
                )
            except CheckpointError as error:
                raise TrainingStopped(str(error)) from error
            self.saved_at = step

    def stop_if_asked(self) -> None:
        """After SIGTERM (on any process): make sure this update is saved, then stop."""
        if not self.stop_requested:
            return
        if self.saved_at != self.progress.num_updates:
            self.checkpoint(force=True)
        raise TrainingStopped(
            f"stopped by SIGTERM after update {self.progress.num_updates}; checkpoint "
            f"{self.checkpoint_dir}/step-{self.progress.num_updates} is complete: continue with "
            "--resume_from_checkpoint latest",
            exit_code=128 + signal.SIGTERM,
        )

    def end_epoch(self) -> None:
        progress = self.progress
        if progress.batches_in_epoch % self.args.gradient_accumulation_steps:
            # a stream ended inside an update: its unsynchronised micro-batches are dropped
            logger.info("epoch %d ended inside an update: %d micro-batch(es) dropped", progress.epoch,
                        progress.batches_in_epoch % self.args.gradient_accumulation_steps)  # fmt: skip
            self.optimizer.zero_grad(set_to_none=True)
            self.statistics.reduce(self.accelerator)
            self.accelerator.step = 0
        if progress.audio_epoch[0] > 0:
            fraction = waste_fraction(*progress.audio_epoch)
            progress.audio_history.append((progress.epoch, fraction))
            if self.accelerator.is_main_process:
                logger.info(
                    "epoch %d: %.1f%% of the audio was cropped away or padding",
                    progress.epoch,
                    100 * fraction,
                )
        progress.epoch_batches.append(progress.batches_in_epoch)
        progress.epoch += 1
        progress.batches_in_epoch = 0
        progress.audio_epoch = [0.0, 0.0, 0.0]

    # ----------------------------------------------------------------------------------------- train

    def epoch_batches(self):
        """This epoch's batches on this process, on its device, without those a resumed run already
        trained on."""
        epoch, skip = self.progress.epoch, self.progress.batches_in_epoch
        self.collator.epoch = epoch
        if self.streaming:
            batches = self.stream.epoch(epoch, skip)
        else:
            self.batch_sampler.set_epoch(epoch)
            self.batch_sampler.skip = skip
            batches = iter(self.dataloader)
        for batch in batches:
            yield send_to_device(batch, self.accelerator.device)

    def train(self) -> None:
        args, progress = self.args, self.progress
        self.start_tracking()
        self.catch_sigterm()
        self.bar = tqdm(
            total=args.max_train_steps,
            initial=progress.num_updates,
            disable=not self.accelerator.is_local_main_process,
            desc=f"data2vec {self.spec.name}",
            # redrawn in place on a terminal; in a log file, one line every 30 s instead of every update
            mininterval=0.1 if sys.stderr.isatty() else 30.0,
        )
        self.started, self.samples_at_start = time.perf_counter(), progress.samples_seen
        self.eval_seconds, self.resumed_train_seconds = 0.0, progress.train_seconds
        self.model.train()
        if progress.num_updates == 0:
            self.evaluate()  # the random initialisation, with --eval_at_start
        while progress.num_updates < args.max_train_steps:
            for batch in self.epoch_batches():
                self.micro_batch(batch)
                if not self.accelerator.sync_gradients:
                    continue
                metrics = self.update()
                if metrics is None:
                    continue
                self.evaluate(metrics)
                for callback in self.callbacks:
                    callback(self, metrics)
                self.last_metrics = metrics
                self.log(metrics)
                self.checkpoint()
                self.stop_if_asked()
                if progress.num_updates >= args.max_train_steps:
                    break
            else:
                self.end_epoch()
        self.bar.close()
        self.finish()

    def catch_sigterm(self) -> None:
        """SIGTERM (a scheduler's pre-emption, ``kill``) finishes the current update and its checkpoint
        instead of dying in the middle of a save."""
        if sys.platform == "win32" or threading_main() is False:
            return

        def request_stop(signum, frame):
            logger.warning("SIGTERM received: stopping after this update")
            self.statistics.request_stop()

        signal.signal(signal.SIGTERM, request_stop)

    def shard_sizes(self) -> dict[str, list[int]]:
        """How many student and teacher parameter elements each process holds (all of them when
        replicated, about 1/N when sharded)."""

        def local(parameters) -> int:
            return sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in parameters)

        teacher = list(self.unwrapped.teacher.parameters())
        student = [p for n, p in self.unwrapped.named_parameters() if not n.startswith("teacher.")]
        counts = torch.tensor([[local(student), local(teacher)]], device=self.accelerator.device)
        gathered = counts
        if self.accelerator.num_processes > 1:
            gathered = counts.new_empty(self.accelerator.num_processes, 2)
            work = torch.distributed.all_gather_into_tensor(gathered, counts, async_op=True)
            work.wait()
            # The last collective before exit: Python keeps its work (and so its tensors) alive, so
            # that gloo's worker thread is not the one that frees them. Freeing them needs the GIL;
            # a process with nothing to export reached interpreter exit before the worker had it now
            # and then, and the worker, refused the GIL at exit, aborted the process ("terminate
            # called without an active exception", SIGABRT) after a run that had written everything.
            self._last_collective = work
        gathered = gathered.tolist()
        return {"student": [row[0] for row in gathered], "teacher": [row[1] for row in gathered],
                "student_total": sum(p.numel() for p in student), "teacher_total": sum(p.numel() for p in teacher)}  # fmt: skip

    def start_tracking(self) -> None:
        if self.args.with_tracking:
            self.accelerator.init_trackers(
                "data2vec_pretraining",
                config={
                    k: v if isinstance(v, int | float | str | bool) else str(v)
                    for k, v in vars(self.args).items()
                },
            )

    def finish(self) -> None:
        """Export the student encoder and write ``train_summary.json``."""
        progress, accelerator = self.progress, self.accelerator
        if progress.nonfinite_total:
            logger.warning("skipped %d update(s) with a NaN/inf loss", progress.nonfinite_total)
        accelerator.wait_for_everyone()
        sharding = self.shard_sizes()  # collective
        full_model = self.parallel.full_model(self.model)  # collective when sharded
        export(accelerator, full_model, self.processor, self.args, self.spec, progress, self.last_metrics)
        if accelerator.is_main_process:
            summary = {
                "num_processes": accelerator.num_processes,
                "parallelism": self.parallel.describe(),
                "parameters_per_process": sharding,
                "updates": progress.num_updates,
                "completed_epochs": progress.epoch,
                "batches_per_epoch": progress.epoch_batches,  # of each process
                "skipped_nonfinite_updates": progress.nonfinite_total,
                "first": progress.first_metrics,
                "history": progress.history,
                "eval_history": progress.eval_history,
                "train_seconds": self.training_seconds(),
                "eval_seconds": self.eval_seconds,
                "last": self.last_metrics,
            }
            if progress.audio_total[0] > 0:
                content, cropped, padding = progress.audio_total
                summary["audio"] = {
                    "content_samples": content,
                    "cropped_samples": cropped,
                    "padding_samples": padding,
                    "waste_fraction": waste_fraction(content, cropped, padding),
                    "per_epoch": progress.audio_history,
                }
            (self.output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
        accelerator.end_training()
        from .export import push_output

        push_output(accelerator, self.args)  # last: a failed push leaves the whole run on disk


def does_not_fit(error: BaseException) -> bool:
    """Whether loading failed because the weights do not fit the model (torch's ``load_state_dict``
    names missing / unexpected keys and size mismatches), rather than because a file is damaged."""
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        marker in text
        for marker in (
            "Error(s) in loading state_dict",
            "size mismatch",
            "Missing key(s)",
            "Unexpected key(s)",
        )
    )


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines[:3])[:400]


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def describe_examples(dataset, indices: list[int]) -> str:
    """``[3 (clips/a.wav), 17 (clips/b.wav)]``: dataset indices, with their source files when known."""
    sources = [None] * len(indices)
    names = getattr(dataset, "column_names", None) or []
    if "source" in names and indices:
        column = dataset.select_columns(["source"])
        sources = [column[int(i)]["source"] for i in indices]
    return "[" + ", ".join(f"{i} ({s})" if s else str(i) for i, s in zip(indices, sources)) + "]"


def check_collapse(config, num_updates: int, metrics: dict, checkpoint_dir: Path) -> None:
    """fairseq's collapse guard: after a warm-up, targets or predictions with (almost) no variance
    mean the representation collapsed; stop before it overwrites a good checkpoint. A threshold of 0
    (the recipes without a guard) never stops."""
    if num_updates <= config.collapse_guard_after:
        return
    for key, limit in (("target_var", config.min_target_var), ("pred_var", config.min_pred_var)):
        if limit and metrics[key] < limit:
            raise TrainingStopped(
                f"{key} = {metrics[key]:.4g} fell below {limit} at update {num_updates}: the representation is "
                f"collapsing. The last good checkpoint is kept in {checkpoint_dir}; lower the learning rate or "
                "raise the EMA decay and resume from it."
            )


def run(spec: ModalitySpec, argv: list[str] | None = None) -> int:
    """Parse ``argv``, train, and turn expected failures into an exit code with a clear message."""
    parser = build_parser(spec)
    args = parser.parse_args(argv)
    apply_recipe_defaults(spec, args)
    try:
        validate_arguments(args, parser)  # after the recipe filled its defaults: they are checked too
    except ArgumentError as error:
        parser.error(str(error))
    if args.remote_code and args.version == 1:
        parser.error("--remote_code is for data2vec 2.0: a 1.0 encoder already loads in plain transformers")
    # a handler an earlier run in this process left on a stream that is closed since (a notebook cell,
    # a test's captured stderr) would print "--- Logging error ---" tracebacks: replace it
    for handler in list(logging.root.handlers):
        if type(handler) is logging.StreamHandler and getattr(handler.stream, "closed", False):
            logging.root.removeHandler(handler)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    from .data import DataError

    try:
        PretrainingLoop(spec, args).train()
    except TrainingStopped as stop:
        print(f"\ntraining stopped: {stop}", file=sys.stderr, flush=True)
        return stop.exit_code
    except (DataError, CheckpointError, ConfigError) as error:  # bad input: say what, no traceback
        # an error that every process raised alike is printed once
        everywhere = getattr(error, "everywhere", False)
        if not everywhere or os.environ.get("RANK", "0") == "0":
            print(f"error: {error}", file=sys.stderr, flush=True)
        if everywhere:
            leave_together()
        return 2
    return 0
