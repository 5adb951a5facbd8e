"""The training loop shared by the pretraining entry scripts (``pretrain_<modality>.py``).

A modality entry point supplies a :class:`~data2vec_hf.pretraining.spec.ModalitySpec`; the loop is the
step, read top to bottom (as nanoGPT's and torchtune's):

    for every micro-batch:  forward, loss summed over its masked positions, backward
                            (gradients are all-reduced only on the update's last micro-batch)
    every update:           one all-reduce of the statistics → divide the summed gradients once by the
                            global masked count → clip → optimizer step → EMA step → log, probe, save

The loop owns the accumulation: it counts micro-batches and switches gradient sync itself, and the
parallel strategy sums gradients over processes instead of averaging them, so the one division is by
the number of masked positions in the whole update, over every micro-batch and process (fairseq's
``sample_size``): nothing from accelerate or DDP is undone, and the objective does not depend on how an
update is split. Building, resuming, guards, statistics and reporting live in their own modules.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate.utils import send_to_device, set_seed
from torch.utils.data import IterableDataset

from .arguments import apply_recipe_defaults, build_parser, validate_arguments
from .building import build_accelerator, build_dataloader, build_model, build_sampler, speed_up
from .checkpoints import CheckpointError, save_checkpoint
from .collectives import leave_together
from .data.batching import ExampleCollator
from .data.common import DataError
from .data.streaming import StreamingBatches
from .export import export, push_output
from .guards import SigtermWatch, check_collapse, describe_examples, skip_update
from .host_memory import keep_freed_host_memory
from .optim import build_optimizer, build_scheduler
from .output_dir import claim_output_dir
from .parallel import FsdpRequest, make_parallel
from .reporting import Reporter
from .resuming import resume
from .run_record import describe_model, describe_topology, new_run_id, run_id_of, write_run_record
from .spec import ArgumentError, ConfigError, ModalitySpec, TrainingStopped
from .statistics import UpdateStatistics

logger = logging.getLogger("data2vec_hf.pretraining")


@dataclasses.dataclass
class Progress:
    """Resumable loop state, saved with every checkpoint via ``register_for_checkpointing``."""

    num_updates: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of this process in the current epoch
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0
    empty_in_row: int = 0
    samples_seen: int = 0
    first_metrics: dict | None = None
    history: list = dataclasses.field(default_factory=list)  # (update, loss, target_var) every logging step
    eval_history: list = dataclasses.field(default_factory=list)  # {"update", "train_seconds", metrics...}
    epoch_batches: list = dataclasses.field(default_factory=list)  # micro-batches per process, per epoch
    train_seconds: float = 0.0  # training time so far, evaluation excluded
    accounting: dict = dataclasses.field(default_factory=dict)  # the modality's BatchAccounting state

    def state_dict(self):
        return dataclasses.asdict(self)

    def load_state_dict(self, state):
        names = {f.name for f in dataclasses.fields(self)}
        for key, value in state.items():
            if key in names:
                setattr(self, key, value)


class PretrainingLoop:
    """One pretraining run. ``PretrainingLoop(spec, args).train()`` builds everything, resumes when asked,
    trains for ``--max_train_steps`` updates and exports the encoder.

    ``callbacks`` are called as ``callback(loop, metrics)`` after every update, on every process (the
    metrics dict may be extended in place before it is logged); ``loop.unwrapped`` is the pretraining
    model, ``loop.progress.num_updates`` the update count.
    """

    def __init__(self, spec: ModalitySpec, args, callbacks: list[Callable] | None = None):
        self.spec, self.args, self.callbacks = spec, args, list(callbacks or [])
        fsdp = FsdpRequest.from_environment()  # before accelerate's own FSDP plugin can object
        self.accelerator = accelerator = build_accelerator(args, Path(args.output_dir))
        # once for all processes (main process, then a broadcast): no race, and every node sees it
        self.output_dir = claim_output_dir(args, accelerator)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        set_seed(args.seed)
        kept = accelerator.device.type == "cpu" and args.keep_host_memory and keep_freed_host_memory()
        logger.info("processes: %d, device: %s, mixed precision: %s, freed host memory kept: %s",
                    accelerator.num_processes, accelerator.device, accelerator.mixed_precision, kept)  # fmt: skip
        # the default corpus and preprocessing are built once (main process first), then cached
        with accelerator.main_process_first():
            model = build_model(spec, args)
            self.config = model.config
            self.dataset, collate, self.processor = spec.build_data(args, self.config, accelerator)
        self.collator = ExampleCollator(collate, spec.sample_masks[args.version], self.config, args.seed)
        self.streaming = isinstance(self.dataset, IterableDataset) or not hasattr(self.dataset, "__len__")
        self.stream = (
            StreamingBatches(self.dataset, args, self.collator, accelerator) if self.streaming else None
        )
        self.batch_sampler = None if self.streaming else build_sampler(spec, args, self.dataset, accelerator)
        self.dataloader = (
            None
            if self.streaming
            else build_dataloader(self.dataset, self.batch_sampler, self.collator, args)
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
        self.accounting = spec.accounting() if spec.accounting is not None else None
        extra = self.accounting.names if self.accounting is not None else ()
        self.statistics = UpdateStatistics(self.config.hidden_size, accelerator.device, extra)
        self.reporter = Reporter(accelerator, args, spec.name, self.accounting)
        self.sigterm = SigtermWatch(self.statistics.request_stop)
        self.last_metrics: dict = {}
        self.nonfinite_examples: list[int] = []
        self.saved_at = -1
        # what a checkpoint must fit (version, class, config, shapes): fixed for the whole run
        self.model_record = describe_model(spec.name, args.version, self.unwrapped)
        workers = self.stream.workers if self.streaming else args.dataloader_num_workers
        self.topology = describe_topology(
            args, accelerator.num_processes, self.streaming, workers, self.parallel.sharded
        )
        resumed = resume(args.resume_from_checkpoint, self.checkpoint_dir, self.parallel.load, self.progress,
                         self.model_record, self.topology)  # fmt: skip
        self.run_id = resumed or new_run_id()  # a resumed run keeps the id of the run it continues

    # ----------------------------------------------------------------------------------------- train

    def train(self) -> None:
        args, progress = self.args, self.progress
        self.reporter.start(progress)
        self.sigterm.install()
        self.model.train()
        if progress.num_updates == 0:
            self.evaluate()  # the random initialisation, with --eval_at_start
        while progress.num_updates < args.max_train_steps:
            for batch in self.epoch_batches():
                self.micro_batch(batch)
                if progress.batches_in_epoch % args.gradient_accumulation_steps:
                    continue  # the update goes on with the next micro-batch
                metrics = self.update()
                if metrics is None:
                    continue
                self.evaluate(metrics)
                for callback in self.callbacks:
                    callback(self, metrics)
                self.last_metrics = metrics
                self.reporter.log(metrics, progress)
                self.checkpoint(force=self.sigterm.requested)
                if self.sigterm.requested:
                    self.sigterm.stop(progress.num_updates, self.checkpoint_dir)
                if progress.num_updates >= args.max_train_steps:
                    break
            else:
                self.end_epoch()
        self.reporter.close()
        self.finish()

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

    def micro_batch(self, batch: dict) -> None:
        """Forward, statistics and backward of one micro-batch, its loss summed over its masked positions;
        gradients are reduced over processes only on the update's last micro-batch."""
        sync = (self.progress.batches_in_epoch + 1) % self.args.gradient_accumulation_steps == 0
        examples = batch.pop("example_index", None)
        info = batch.pop(self.accounting.info_key, None) if self.accounting is not None else None
        with self.parallel.gradient_sync(self.model, sync), self.parallel.forward_context():
            out = self.model(**batch)
            loss_sum = out.loss * out.num_masked  # divided by the update's global count in `update`
            finite = bool(torch.isfinite(loss_sum))
            if not finite and examples is not None:
                self.nonfinite_examples += examples.tolist()
            extra = self.accounting.measure(info) if info is not None else None
            self.statistics.add(out, loss_sum, finite, len(next(iter(batch.values()))), extra)
            self.accelerator.backward(loss_sum)
        self.progress.batches_in_epoch += 1

    def update(self) -> dict | None:
        """After the last micro-batch of an update: one optimizer step and one EMA step, or a skip when
        any micro-batch on any process had a non-finite loss. Returns the update's metrics."""
        totals = self.statistics.reduce(self.accelerator)
        progress = self.progress
        if self.accounting is not None:
            self.accounting.add(progress.accounting, totals)
        self.sigterm.requested |= totals["stop"] > 0
        if totals["nonfinite"] > 0 or totals["masked"] == 0:
            self.optimizer.zero_grad(set_to_none=True)
            examples, self.nonfinite_examples = self.nonfinite_examples, []
            described = describe_examples(self.dataset, examples)
            skip_update(progress, totals, described, self.args.max_nonfinite_updates, self.checkpoint_dir)
            return None
        progress.nonfinite_in_row = progress.empty_in_row = 0
        # Σ over every micro-batch and process of the summed loss → its mean over the masked positions
        torch._foreach_mul_([p.grad for p in self.trainable if p.grad is not None], 1.0 / totals["masked"])
        grad_norm = self.clip_gradients()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.accelerator.optimizer_step_was_skipped:  # fp16 loss scaling found inf/NaN gradients
            logger.info("fp16 gradient overflow: the loss scale was lowered and this update skipped")
            return None
        self.scheduler.step()
        progress.num_updates += 1
        progress.samples_seen += int(totals["samples"])
        decay = self.unwrapped.ema_step(progress.num_updates)
        metrics = self.reporter.metrics(totals, grad_norm, decay, self.scheduler.get_last_lr()[0], progress)
        check_collapse(self.config, progress.num_updates, metrics, self.checkpoint_dir)
        return metrics

    def clip_gradients(self) -> float:
        """Clip to ``--max_grad_norm`` (0: no clipping); returns the norm before clipping."""
        max_norm = self.args.max_grad_norm if self.args.max_grad_norm > 0 else float("inf")
        return self.parallel.clip(self.trainable, max_norm)

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
        self.reporter.eval_seconds += time.perf_counter() - started
        self.progress.eval_history.append(
            {"update": step, "train_seconds": self.reporter.training_seconds()} | results
        )
        if metrics is not None:
            metrics.update(results)
        else:
            self.reporter.log_probe(results, step)

    def checkpoint(self, force: bool = False) -> None:
        """Save every ``--checkpointing_steps`` updates, at the last one, and when ``force`` (SIGTERM)."""
        step = self.progress.num_updates
        due = force or step % self.args.checkpointing_steps == 0 or step == self.args.max_train_steps
        if not due or self.saved_at == step:
            return
        self.progress.train_seconds = self.reporter.training_seconds()
        record = {"run_id": self.run_id, "update": step, **self.model_record, "topology": self.topology}
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

    def end_epoch(self) -> None:
        """Close the epoch; a stream that ended inside an update drops that update's micro-batches."""
        progress, accumulation = self.progress, self.args.gradient_accumulation_steps
        if progress.batches_in_epoch % accumulation:
            logger.info("epoch %d ended inside an update: %d micro-batch(es) dropped", progress.epoch,
                        progress.batches_in_epoch % accumulation)  # fmt: skip
            self.optimizer.zero_grad(set_to_none=True)
            self.statistics.reduce(self.accelerator)  # (every process: its epoch ends at the same batch)
        line = self.accounting.end_epoch(progress.accounting, progress.epoch) if self.accounting else None
        if line and self.accelerator.is_main_process:
            logger.info(line)
        progress.epoch_batches.append(progress.batches_in_epoch)
        progress.epoch += 1
        progress.batches_in_epoch = 0

    def finish(self) -> None:
        """Export the student encoder, write ``train_summary.json``, then push when asked."""
        progress, accelerator = self.progress, self.accelerator
        if progress.nonfinite_total:
            logger.warning("skipped %d update(s) with a NaN/inf loss", progress.nonfinite_total)
        accelerator.wait_for_everyone()
        sharding = self.reporter.shard_sizes(self.unwrapped)  # collective
        full_model = self.parallel.full_model(self.model)  # collective when sharded
        export(accelerator, full_model, self.processor, self.args, self.spec, progress, self.last_metrics)
        self.reporter.write_summary(
            self.output_dir, progress, self.parallel.describe(), sharding, self.last_metrics
        )
        accelerator.end_training()
        push_output(accelerator, self.args)  # last: a failed push leaves the whole run on disk


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
