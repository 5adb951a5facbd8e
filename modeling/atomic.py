"""Writing files and folders so that a reader never sees them half-written.

Everything the package writes for later (checkpoints, exports, converted models, corpora, cleaned text
files) is written under a temporary name beside its place and renamed into place when complete: a
rename within one folder is atomic, so a crash, a full disk or a concurrent reader sees the old
content or the new one, never a mix. These helpers are the one implementation of that pattern.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def replace_path(source: Path, target: Path) -> None:
    """Move ``source`` (a file or a folder) to ``target``, replacing what is there. A folder in the way
    is first renamed aside and deleted afterwards, so ``target`` is always either the old or the new."""
    source, target = Path(source), Path(target)
    if target.is_dir() and not target.is_symlink():
        aside = target.with_name(f".{target.name}.replaced-{os.getpid()}")
        target.rename(aside)
        os.replace(source, target)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(source, target)


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; when the block ends without an error it
    replaces ``target``, otherwise it is deleted and ``target`` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield scratch
        replace_path(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` to write; it replaces ``target`` when the block ends
    without an error (each process has its own temporary name, so several may race: one wins)."""
    target = Path(target)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
