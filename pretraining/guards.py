"""The guards of a pretraining run: what stops or skips an update, and why, in words.

- a non-finite loss, or an update with nothing masked, skips the update (the examples are named) and
  stops the run after ``--max_nonfinite_updates`` in a row (:func:`skip_update`);
- fairseq's collapse guard stops a run whose targets or predictions lost their variance
  (:func:`check_collapse`);
- SIGTERM (a scheduler's pre-emption) finishes the current update and its checkpoint, then stops
  (:class:`SigtermWatch`).

Each stop is a :class:`~data2vec_hf.pretraining.spec.TrainingStopped` with the message and exit code
the entry point reports. Every decision here is taken from totals reduced over all processes, so every
process stops or skips at the same update.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

from .spec import TrainingStopped

logger = logging.getLogger("data2vec_hf.pretraining")


def skip_update(progress, totals: dict, examples: str, limit: int, checkpoint_dir: Path) -> None:
    """Count an update that had a non-finite loss (in the micro-batches holding ``examples``) or no
    masked position at all; stop after ``limit`` of either in a row. The caller drops its gradients."""
    if totals["nonfinite"] == 0:  # no masked position in the whole update
        progress.empty_in_row += 1
        if progress.empty_in_row >= limit:
            raise TrainingStopped(
                f"{progress.empty_in_row} updates in a row had no masked position to regress: the examples "
                "are too short to mask (or hold only special tokens)"
            )
        return
    logger.warning(
        "NaN/inf loss: update skipped (%d in a row); the non-finite micro-batches held examples %s",
        progress.nonfinite_in_row + 1,
        examples,
    )
    progress.nonfinite_in_row += 1
    progress.nonfinite_total += 1
    if progress.nonfinite_in_row >= limit:
        raise TrainingStopped(
            f"{progress.nonfinite_in_row} updates in a row had a NaN/inf loss (--max_nonfinite_updates "
            f"{limit}); the last good checkpoint is kept in {checkpoint_dir}"
        )


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


class SigtermWatch:
    """SIGTERM (a scheduler's pre-emption, ``kill``) finishes the current update and its checkpoint
    instead of killing the process in the middle of a save.

    The handler only marks this process (``on_signal``, e.g. the statistics' stop flag, which every
    process reads at the next update); :meth:`stop` raises once the update is saved."""

    def __init__(self, on_signal):
        self.on_signal = on_signal
        self.requested = False

    def install(self) -> None:
        if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread

        def handler(signum, frame):
            logger.warning("SIGTERM received: stopping after this update")
            self.on_signal()

        signal.signal(signal.SIGTERM, handler)

    def stop(self, num_updates: int, checkpoint_dir: Path) -> None:
        """Raise the stop after update ``num_updates``, whose checkpoint is complete."""
        raise TrainingStopped(
            f"stopped by SIGTERM after update {num_updates}; checkpoint {checkpoint_dir}/step-{num_updates} "
            "is complete: continue with --resume_from_checkpoint latest",
            exit_code=128 + signal.SIGTERM,
        )
