"""Resumable training checkpoints: written atomically, checked for completeness, found again by
``--resume_from_checkpoint``.

A checkpoint is written into ``.incomplete-step-N`` and renamed to ``step-N`` only once it is whole,
with ``checkpoint_manifest.json`` (every file and its size) written last. A kill during a save therefore
never touches the previous checkpoints, and a folder damaged afterwards (a file deleted or cut short)
is recognised before anything is loaded from it.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
from pathlib import Path

from accelerate import Accelerator
from data2vec_hf.atomic import replace_path

from .collectives import on_every_process

logger = logging.getLogger("data2vec_hf.pretraining")

CHECKPOINT_PREFIX = "step-"
MANIFEST = "checkpoint_manifest.json"
# what accelerate's save_state writes for a one-model run (checked when a folder has no manifest)
REQUIRED_WITHOUT_MANIFEST = (
    "optimizer.bin",
    "scheduler.bin",
    "custom_checkpoint_0.pkl",
    "random_states_0.pkl",
)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or resumed from; the message names the folder and the problem."""


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Checkpoint folders ``step-N``, oldest first (incomplete saves live under a temporary name)."""
    if not checkpoint_dir.is_dir():
        return []
    found = [
        p
        for p in checkpoint_dir.iterdir()
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def write_manifest(folder: Path) -> None:
    """Record every file of a checkpoint and its size (written last: its presence means 'complete')."""
    files = {
        str(path.relative_to(folder)): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def checkpoint_problem(folder: Path) -> str | None:
    """What is wrong with a checkpoint folder (a missing or cut-short file, no manifest), or None."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return _problem_without_manifest(folder)
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError) as error:
        return f"{MANIFEST} is unreadable ({error})"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    return None


def _problem_without_manifest(folder: Path) -> str | None:
    """Checkpoints of earlier versions have no manifest: check the files accelerate always writes."""
    if not any((folder / name).exists() for name in ("model.safetensors", "pytorch_model.bin")):
        return f"no {MANIFEST} and no model weights (model.safetensors) in it"
    missing = [name for name in REQUIRED_WITHOUT_MANIFEST if not (folder / name).is_file()]
    return f"{missing[0]} is missing" if missing else None


def save_checkpoint(
    accelerator: Accelerator,
    checkpoint_dir: Path,
    step: int,
    keep: int,
    save=None,
    write_extra=None,
    same_run=None,
) -> Path:
    """Write the full training state atomically: into a temporary folder, then one rename. A kill or a
    full disk during the save leaves the previous checkpoints intact (and the temporary folder is
    removed when the save fails). ``save(folder)`` writes the state (default: ``accelerator.save_state``),
    ``write_extra(folder)`` more files on the main process (before the manifest). Rotation keeps the
    last ``keep`` checkpoints among those for which ``same_run(folder)`` holds (default: all)."""
    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{step}"
    temporary = checkpoint_dir / f".incomplete-{CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process:
        for stale in checkpoint_dir.glob(f".incomplete-{CHECKPOINT_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)  # left behind by a killed run
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    # A process that fails (a full disk, say) must not leave the others waiting in a collective: the
    # outcome of each stage is agreed on by all processes, and all raise together.
    error = None
    try:
        (save or (lambda folder: accelerator.save_state(str(folder))))(temporary)
    except Exception as raised:
        error = raised
    if on_every_process(accelerator, error is None) and accelerator.is_main_process:
        try:
            if write_extra is not None:
                write_extra(temporary)
            write_manifest(temporary)
        except Exception as raised:
            error = raised
    if not on_every_process(accelerator, error is None):
        if accelerator.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)
        if error is None:  # this process wrote its part; another one failed and says why
            raise CheckpointError(f"writing checkpoint {final} failed on another process (see its message)")
        raise CheckpointError(_save_failure(error, final, checkpoint_dir)) from error
    if accelerator.is_main_process:
        replace_path(temporary, final)
        ours = [folder for folder in list_checkpoints(checkpoint_dir) if same_run is None or same_run(folder)]
        for old in ours[: -max(keep, 1)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def is_disk_full(error: BaseException) -> bool:
    """Whether an exception (or one it was raised from) is 'no space left on device'."""
    while error is not None:
        if getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _save_failure(error: Exception, final: Path, checkpoint_dir: Path) -> str:
    previous = list_checkpoints(checkpoint_dir)
    kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
    if is_disk_full(error):
        return f"the disk is full: writing checkpoint {final} failed (No space left on device); {kept}"
    return f"writing checkpoint {final} failed ({type(error).__name__}: {error}); {kept}"


def resume_candidates(argument: str | None, checkpoint_dir: Path) -> list[Path]:
    """The checkpoints ``--resume_from_checkpoint`` may load, best first.

    ``latest``: every complete checkpoint, newest first; damaged ones are reported by name and left
    out. An explicit folder: that folder, or :class:`CheckpointError` naming what is wrong with it.
    """
    if not argument:
        return []
    if argument != "latest":
        path = Path(argument)
        if not path.is_dir():
            raise CheckpointError(f"--resume_from_checkpoint {argument}: no such checkpoint folder")
        problem = checkpoint_problem(path)
        if problem:
            raise CheckpointError(
                f"--resume_from_checkpoint {argument}: the checkpoint is damaged: {problem}"
            )
        return [path]
    complete = []
    for folder in reversed(list_checkpoints(checkpoint_dir)):
        problem = checkpoint_problem(folder)
        if problem:
            logger.warning("skipping damaged checkpoint %s: %s", folder, problem)
        else:
            complete.append(folder)
    return complete
