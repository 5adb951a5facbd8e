"""Agreement between the processes of a run, so that they all take the same branch.

A process that stops alone (its stream ran out, its disk is full) would leave the others waiting in
their next collective. Where each process learns something only for itself, :func:`on_every_process`
turns it into one answer for all.
"""

from __future__ import annotations

import torch


def on_every_process(accelerator, holds: bool) -> bool:
    """Whether ``holds`` is true on every process (one all-reduce of a flag; ``holds`` itself for a
    single process). Every process must call it at the same point."""
    if accelerator.num_processes == 1:
        return holds
    flag = torch.tensor([1 if holds else 0], device=accelerator.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


def leave_together() -> None:
    """End a multi-process run that stops on an error every process raised alike: wait until all
    processes got here, then close the process group.

    Without it, the first process to exit closes its connections while a slower one is still in its
    last collective or in its shutdown, and gloo aborts that one (SIGABRT instead of the error's exit
    code, seen on a loaded machine with two loopback nodes)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
