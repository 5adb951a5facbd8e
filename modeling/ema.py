"""The EMA teacher shared by every data2vec model.

The teacher is an exponential moving average of (part of) the student: Δ ← τΔ + (1−τ)θ.
Parameters the method *shares* between student and teacher (fairseq v1 audio shares the CNN
feature encoder, the feature projection, the mask embedding and the positional convolution;
text shares the embeddings) are not copied into the teacher at all: the teacher is a copy of the
student module *without* them, and while it runs the student's shared submodules are lent to it
(registered in the copy for the duration of the call). Shared tensors are therefore read from the
student at forward time, are never duplicated and can never drift. Because the teacher is a module
tree of its own, it can be sharded (FSDP) with the same policy as the student: the EMA update then
pairs identically sharded tensors and stays shard-local.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


def annealed_ema_decay(num_updates: int, start: float, end: float, anneal_end_step: int) -> float:
    """Decay τ after ``num_updates`` optimizer updates: linear from ``start`` to ``end`` over
    ``anneal_end_step`` updates, then constant (fairseq's ``get_annealed_rate``)."""
    if start == end or anneal_end_step <= 0 or num_updates >= anneal_end_step:
        return float(end)
    return float(end - (end - start) * (1.0 - num_updates / anneal_end_step))


def _registry(root: nn.Module, name: str) -> tuple[dict, str]:
    """The ``_modules``/``_parameters``/``_buffers`` dict of ``root`` that holds ``name`` (dotted)."""
    *path, leaf = name.split(".")
    parent = root.get_submodule(".".join(path)) if path else root
    for registry in (parent._modules, parent._parameters, parent._buffers):
        if leaf in registry:
            return registry, leaf
    raise KeyError(f"cannot share {name!r}: no such submodule, parameter or buffer")


def _delete_by_name(root: nn.Module, name: str) -> None:
    """Remove the submodule, parameter or buffer called ``name`` (dotted) from ``root``."""
    registry, leaf = _registry(root, name)
    del registry[leaf]


class EMATeacher(nn.Module):
    """Exponential moving average of a student module, minus the parts it shares with it.

    Args:
        student: the student module to mirror (e.g. the backbone's transformer encoder).
        shared: dotted names of submodules/parameters of ``student`` that teacher and student share.
            They are left out of the teacher and read from the student when the teacher runs.
        fp32: keep the averaged tensors in float32 even when the student is created in half precision
            (fairseq's ``ema_fp32``); the tensors are cast to the student's dtype when the teacher runs.
    """

    def __init__(self, student: nn.Module, shared: Iterable[str] = (), fp32: bool = True):
        super().__init__()
        self.shared = tuple(shared)
        self.fp32 = fp32
        model = copy.deepcopy(student)
        for name in self.shared:
            _delete_by_name(model, name)
        model.requires_grad_(False)
        if fp32:
            model.float()
        # Registered as a submodule so the teacher is saved and loaded with the pretraining checkpoint.
        self.model = model.eval()

    def train(self, mode: bool = True):
        """The teacher always runs in eval mode (no dropout, no layer drop)."""
        super().train(mode)
        self.model.eval()
        return self

    def _paired(self, student: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        student_params = dict(student.named_parameters())
        teacher, source = [], []
        for name, param in self.model.named_parameters():
            if name not in student_params:
                raise KeyError(f"teacher tensor {name!r} has no counterpart in the student")
            teacher.append(param)
            source.append(student_params[name].detach())
        return teacher, source

    @torch.no_grad()
    def copy_from(self, student: nn.Module) -> None:
        """Make the teacher an exact copy of the student (Δ ← θ)."""
        teacher, source = self._paired(student)
        torch._foreach_copy_(teacher, [s.to(t.dtype) for t, s in zip(teacher, source)])

    @torch.no_grad()
    def step(self, student: nn.Module, decay: float) -> None:
        """One EMA update, Δ ← τΔ + (1−τ)θ, as a single fused foreach op."""
        teacher, source = self._paired(student)
        if any(t.dtype != s.dtype for t, s in zip(teacher, source)):
            source = [s.to(t.dtype) for t, s in zip(teacher, source)]
        torch._foreach_lerp_(teacher, source, 1.0 - decay)

    @contextmanager
    def borrowing(self, student: nn.Module) -> Iterator[nn.Module]:
        """Lend the student's shared submodules / tensors to the teacher copy for the duration (shared
        modules in eval mode); yields the completed teacher module."""
        lent = []
        try:
            for name in self.shared:
                registry, leaf = _registry(student, name)
                shared = registry[leaf]
                *path, _ = name.split(".")
                parent = self.model.get_submodule(".".join(path)) if path else self.model
                if isinstance(shared, nn.Module):
                    target = parent._modules
                elif isinstance(shared, nn.Parameter):
                    target = parent._parameters
                else:
                    target = parent._buffers
                target[leaf] = shared
                modes = {m: m.training for m in shared.modules()} if isinstance(shared, nn.Module) else {}
                if isinstance(shared, nn.Module):
                    shared.eval()
                lent.append((target, leaf, modes))
            yield self.model
        finally:
            for target, leaf, modes in lent:
                del target[leaf]
                for module, training in modes.items():
                    module.training = training

    @torch.no_grad()
    def run(self, student: nn.Module, *args, call=None, **kwargs):
        """Run the teacher — ``teacher(*args, **kwargs)``, or ``call(teacher, *args, **kwargs)`` for a
        variant of its forward — with the student's shared parts lent to it.

        When the student holds half-precision weights and the teacher fp32 ones, the call runs under
        autocast to the student's dtype.
        """
        dtype = next(student.parameters()).dtype
        teacher_dtype = next(self.model.parameters()).dtype
        with self.borrowing(student) as teacher:
            if dtype != teacher_dtype and dtype in (torch.float16, torch.bfloat16):
                device = next(self.model.parameters()).device.type
                with torch.autocast(device, dtype=dtype):
                    return call(teacher, *args, **kwargs) if call else teacher(*args, **kwargs)
            return call(teacher, *args, **kwargs) if call else teacher(*args, **kwargs)
