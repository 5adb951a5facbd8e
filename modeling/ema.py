"""The EMA teacher shared by every data2vec model.

The teacher is an exponential moving average of (part of) the student: Δ ← τΔ + (1−τ)θ.
Parameters the method *shares* between student and teacher (fairseq v1 audio shares the CNN
feature encoder, the feature projection, the mask embedding and the positional convolution;
text shares the embeddings) are not copied into the teacher at all: the teacher runs the
student's module with its own averaged tensors swapped in (``torch.func.functional_call``),
so shared tensors are read from the student at forward time and can never drift.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn
from torch.func import functional_call


def annealed_ema_decay(num_updates: int, start: float, end: float, anneal_end_step: int) -> float:
    """Decay τ after ``num_updates`` optimizer updates: linear from ``start`` to ``end`` over
    ``anneal_end_step`` updates, then constant (fairseq's ``get_annealed_rate``)."""
    if start == end or anneal_end_step <= 0 or num_updates >= anneal_end_step:
        return float(end)
    return float(end - (end - start) * (1.0 - num_updates / anneal_end_step))


def _delete_by_name(root: nn.Module, name: str) -> None:
    """Remove the submodule, parameter or buffer called ``name`` (dotted) from ``root``."""
    *path, leaf = name.split(".")
    parent = root.get_submodule(".".join(path)) if path else root
    for registry in (parent._modules, parent._parameters, parent._buffers):
        if leaf in registry:
            del registry[leaf]
            return
    raise KeyError(f"cannot share {name!r}: no such submodule, parameter or buffer")


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
        self.model = model

    def named_averaged_parameters(self):
        return self.model.named_parameters()

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

    @torch.no_grad()
    def run(self, student: nn.Module, *args, call=None, **kwargs):
        """Call ``student(*args, **kwargs)`` with the teacher's tensors in place of the averaged ones.

        ``call(student, *args, **kwargs)``, when given, replaces the plain module call (e.g. a
        padding-aware variant of the student's forward). The student module is put in eval mode for
        the call (no dropout, no layer drop), and restored afterwards.
        """
        dtype = next(student.parameters()).dtype
        tensors = {n: p if p.dtype == dtype else p.to(dtype) for n, p in self.model.named_parameters()}
        module = student if call is None else _Call(student, call)
        if call is not None:
            tensors = {f"module.{n}": p for n, p in tensors.items()}
        was_training = student.training
        student.eval()
        try:
            return functional_call(module, tensors, args, kwargs, strict=False, tie_weights=False)
        finally:
            student.train(was_training)


class _Call(nn.Module):
    """``call(module, ...)`` as a module, so ``functional_call`` can swap ``module``'s tensors for it."""

    def __init__(self, module: nn.Module, call):
        super().__init__()
        self.module, self.call = module, call

    def forward(self, *args, **kwargs):
        return self.call(self.module, *args, **kwargs)
