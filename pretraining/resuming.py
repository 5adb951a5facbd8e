"""Resuming a run from its checkpoints: which one, whether it fits, and where in the epoch to go on.

A checkpoint of another model or an incompatible topology stops the run (exit code 2) before anything
is written (:mod:`.run_record`); with ``latest``, a damaged checkpoint (missing or cut-short files, or
unreadable contents) is reported and the next older one is tried. A checkpoint always lies between two
updates, so the next micro-batch starts an update.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .checkpoints import CheckpointError, resume_candidates
from .run_record import check_same_model, check_topology, read_run_record

logger = logging.getLogger("data2vec_hf.pretraining")


def resume(argument: str | None, checkpoint_dir: Path, load, progress, model_record: dict, topology: dict):
    """Load the newest complete checkpoint (``latest``) or the named one with ``load(folder)``; returns
    the run id it continues (None for a checkpoint without a run record, or when nothing was loaded)."""
    for folder in resume_candidates(argument, checkpoint_dir):
        record = read_run_record(folder)
        if record is not None:
            check_same_model(folder, record, model_record)
            check_topology(folder, record["topology"], topology)
        try:
            load(folder)
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
                "cannot load checkpoint %s (%s: %s); trying an older one", folder, type(error).__name__, error
            )
            continue
        if record is not None:
            # the same updates, split over other processes x micro-batches: count this run's batches
            updates_in_epoch = progress.batches_in_epoch // record["topology"]["gradient_accumulation_steps"]
            progress.batches_in_epoch = updates_in_epoch * topology["gradient_accumulation_steps"]
        logger.info(
            "resumed from %s at update %d (epoch %d, batch %d)",
            folder,
            progress.num_updates,
            progress.epoch,
            progress.batches_in_epoch,
        )
        return record["run_id"] if record is not None else None
    if argument:
        logger.info("no complete checkpoint to resume from in %s; starting from scratch", checkpoint_dir)
    return None


def does_not_fit(error: BaseException) -> bool:
    """Whether loading failed because the weights do not fit the model (torch's ``load_state_dict``
    names missing / unexpected keys and size mismatches), rather than because a file is damaged."""
    markers = ("Error(s) in loading state_dict", "size mismatch", "Missing key(s)", "Unexpected key(s)")
    return isinstance(error, RuntimeError) and any(marker in str(error) for marker in markers)


def first_line(error: BaseException) -> str:
    """The first lines of an error message, at most 400 characters (torch's can be very long)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines[:3])[:400]
