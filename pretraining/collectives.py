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
