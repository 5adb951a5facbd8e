"""Resumable training checkpoints: written atomically, found again by ``--resume_from_checkpoint``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from accelerate import Accelerator

CHECKPOINT_PREFIX = "step-"


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (incomplete saves live under a temporary name)."""
    if not checkpoint_dir.is_dir():
        return []
    found = [
        p
        for p in checkpoint_dir.iterdir()
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def save_checkpoint(accelerator: Accelerator, checkpoint_dir: Path, step: int, keep: int) -> Path:
    """Write the full training state atomically: into a temporary folder, then one rename.
    A kill during the save leaves the previous checkpoints intact."""
    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{step}"
    temporary = checkpoint_dir / f".incomplete-{CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
        for old in list_checkpoints(checkpoint_dir)[: -max(keep, 1)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(argument: str | None, checkpoint_dir: Path) -> Path | None:
    """The checkpoint folder that ``--resume_from_checkpoint`` names (``latest``: the newest one)."""
    if not argument:
        return None
    if argument == "latest":
        found = list_checkpoints(checkpoint_dir)
        return found[-1] if found else None
    path = Path(argument)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {argument}: no such checkpoint folder")
    return path
