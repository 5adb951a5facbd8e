"""The output folder of a run, claimed once at start-up by all processes together.

Two things can go wrong before the first update, and both must stop every process the same way:

- **A race.** Every process of a launch starts at once; if each created, probed and inspected the
  folder, one would delete the other's probe file or see it as "earlier content". Here only the main
  process creates and inspects the folder; the others learn its verdict through one broadcast.
- **Node-local disks.** Checkpoints are written by all processes into one folder (the main process
  writes the manifest, every process its shards and random state), so a resume needs every node to see
  the *same* ``--output_dir``. The main process leaves a token with a fresh random value in the folder;
  each process looks for it, and the run stops at start, before any checkpoint exists, when a node does
  not see it.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import torch

from .checkpoints import CheckpointError, list_checkpoints
from .export import EXPORT_TEMPORARY

TOKEN = ".data2vec-run-token"
# entries that may be in the folder of a run that is started fresh: tracker logs, a half-written export
IGNORED_ENTRIES = ("runs", EXPORT_TEMPORARY)
# how long a process waits for the main process's token to appear (network file systems may cache
# directory listings for a few seconds)
TOKEN_WAIT_SECONDS = 5.0


class OutputDirError(CheckpointError):
    """``--output_dir`` cannot hold this run; raised on every process with the same message."""

    everywhere = True  # every process raises it: only the main process needs to print it


def inspect_output_dir(output_dir: Path, resume: bool, overwrite: bool) -> str | None:
    """Create ``output_dir`` and check it (main process only): what is wrong with it, or None."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        return f"--output_dir {output_dir} is not writable: {error}"
    if resume or overwrite:
        return None
    existing = sorted(
        p.name for p in output_dir.iterdir() if not p.name.startswith(".") and p.name not in IGNORED_ENTRIES
    )
    if existing == ["checkpoints"] and not list_checkpoints(output_dir / "checkpoints"):
        existing = []
    if existing:
        return (
            f"--output_dir {output_dir} is not empty (it holds {', '.join(existing[:5])}); pass "
            "--resume_from_checkpoint latest to continue that run, or --overwrite_output_dir to start over "
            "in it"
        )
    return None


def claim_output_dir(args, accelerator) -> Path:
    """Create and check ``--output_dir`` once, then make sure every process sees the same folder.

    Raises :class:`OutputDirError` on every process when the folder is not usable or not shared."""
    output_dir = Path(args.output_dir)
    verdict = [None, None, None]
    if accelerator.is_main_process:
        problem = inspect_output_dir(
            output_dir, bool(args.resume_from_checkpoint), bool(args.overwrite_output_dir)
        )
        token = uuid.uuid4().hex
        if problem is None:
            try:
                (output_dir / TOKEN).write_text(token)
            except OSError as error:
                problem = f"--output_dir {output_dir} is not writable: {error}"
        verdict = [problem, token, str(output_dir)]
    if accelerator.num_processes > 1:
        torch.distributed.broadcast_object_list(verdict, src=0)
    problem, token, main_dir = verdict
    if problem:
        raise OutputDirError(problem)
    if accelerator.num_processes > 1:
        check_shared(output_dir, main_dir, token, accelerator.process_index, accelerator.num_processes)
    return output_dir


def sees_token(output_dir: Path, token: str, wait: float = TOKEN_WAIT_SECONDS) -> bool:
    """Whether this process reads ``token`` from the folder's token file (waiting up to ``wait`` s)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            if (output_dir / TOKEN).read_text() == token:
                return True
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def check_shared(output_dir: Path, main_dir: str, token: str, rank: int, world_size: int) -> None:
    """Every process reads the main process's token; all learn which did not (one all-gather)."""
    found = sees_token(output_dir, token, wait=0.0 if rank == 0 else TOKEN_WAIT_SECONDS)
    seen = [None] * world_size
    torch.distributed.all_gather_object(seen, (rank, socket.gethostname(), str(output_dir), found))
    blind = [(r, host, path) for r, host, path, ok in seen if not ok]
    if blind:
        where = ", ".join(
            f"process {r} on {host}" + (f" (--output_dir {path})" if path != main_dir else "")
            for r, host, path in blind[:8]
        )
        raise OutputDirError(
            f"--output_dir {main_dir} of the main process is not shared by all processes: {where} cannot "
            "see the file the main process wrote there. Checkpoints are written by every process into one "
            "folder, so all nodes must see the same --output_dir (a shared file system); give every node "
            "the same path on shared storage"
        )
