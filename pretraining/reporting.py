"""What a pretraining run tells its user: the progress bar, the log lines and trackers, the update
metrics, the time spent training (probes excluded) and ``train_summary.json`` at the end."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

logger = logging.getLogger("data2vec_hf.pretraining")


class Reporter:
    """Progress bar, log, trackers and summary of one run (``accounting``: the modality's, or None)."""

    def __init__(self, accelerator, args, name: str, accounting=None):
        self.accelerator, self.args, self.name, self.accounting = accelerator, args, name, accounting
        self.bar = None
        self.started = self.samples_at_start = 0
        self.eval_seconds = self.resumed_seconds = 0.0
        self.last_collective = None

    def start(self, progress) -> None:
        """Open the bar and the trackers, and start the clock (a resumed run adds its earlier time)."""
        if self.args.with_tracking:
            config = {
                k: v if isinstance(v, int | float | str | bool) else str(v)
                for k, v in vars(self.args).items()
            }
            self.accelerator.init_trackers("data2vec_pretraining", config=config)
        self.bar = tqdm(
            total=self.args.max_train_steps,
            initial=progress.num_updates,
            disable=not self.accelerator.is_local_main_process,
            desc=f"data2vec {self.name}",
            # redrawn in place on a terminal; in a log file, one line every 30 s instead of every update
            mininterval=0.1 if sys.stderr.isatty() else 30.0,
        )
        self.started, self.samples_at_start = time.perf_counter(), progress.samples_seen
        self.resumed_seconds = progress.train_seconds

    def training_seconds(self) -> float:
        """Seconds spent training in this run and those it resumed, evaluation excluded."""
        return self.resumed_seconds + time.perf_counter() - self.started - self.eval_seconds

    def metrics(self, totals: dict, grad_norm: float, decay: float, lr: float, progress) -> dict:
        """The metrics of one update, from its reduced totals."""
        elapsed = max(time.perf_counter() - self.started - self.eval_seconds, 1e-9)
        metrics = {
            "loss": totals["loss_sum"] / totals["masked"],
            "lr": lr,
            "grad_norm": grad_norm,
            "ema_decay": decay,
            "target_var": totals["target_var"],
            "pred_var": totals["pred_var"],
            "masked_fraction": totals["masked"] / max(totals["positions"], 1.0),
            "samples_per_s": (progress.samples_seen - self.samples_at_start) / elapsed,
        }
        if self.accounting is not None:
            metrics |= self.accounting.metrics(progress.accounting)
        if progress.first_metrics is None:
            progress.first_metrics = dict(metrics)
        return metrics

    def log(self, metrics: dict, progress) -> None:
        """The bar after every update; trackers, history and a log line every ``--logging_steps``."""
        self.bar.update(1)
        shown = {k: f"{v:.3g}" for k, v in metrics.items() if k != "lr" and not k.startswith("eval/")}
        if progress.eval_history:  # the latest probe result stays in the bar
            shown["probe"] = f"{progress.eval_history[-1]['eval/linear_best']:.3f}"
        self.bar.set_postfix(shown | {"lr": f"{metrics['lr']:.2e}"}, refresh=False)  # redrawn at mininterval
        step = progress.num_updates
        if step % self.args.logging_steps:
            return
        if self.args.with_tracking:
            self.accelerator.log(metrics, step=step)
        progress.history.append((step, metrics["loss"], metrics["target_var"]))
        if self.accelerator.is_main_process:
            logger.info("update %d: %s", step, json.dumps({k: round(v, 6) for k, v in metrics.items()}))

    def log_probe(self, results: dict, step: int) -> None:
        """Probe results outside an update (the random initialisation) go to the trackers alone."""
        if self.args.with_tracking:
            self.accelerator.log(results, step=step)

    def close(self) -> None:
        self.bar.close()

    def shard_sizes(self, unwrapped) -> dict:
        """How many student and teacher parameter elements each process holds (all of them when
        replicated, about 1/N when sharded); collective."""

        def local(parameters) -> int:
            return sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in parameters)

        teacher = list(unwrapped.teacher.parameters())
        student = [p for n, p in unwrapped.named_parameters() if not n.startswith("teacher.")]
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
            self.last_collective = work
        gathered = gathered.tolist()
        return {"student": [row[0] for row in gathered], "teacher": [row[1] for row in gathered],
                "student_total": sum(p.numel() for p in student), "teacher_total": sum(p.numel() for p in teacher)}  # fmt: skip

    def write_summary(self, folder: Path, progress, parallelism: str, sharding: dict, last: dict) -> None:
        """``train_summary.json`` (main process only)."""
        if not self.accelerator.is_main_process:
            return
        summary = {
            "num_processes": self.accelerator.num_processes,
            "parallelism": parallelism,
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
            "last": last,
        }
        if self.accounting is not None:
            summary |= self.accounting.summary(progress.accounting)
        (folder / "train_summary.json").write_text(json.dumps(summary, indent=2))
