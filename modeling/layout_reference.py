"""The plain PyTorch formulation of ``layout.py``'s CPU speed-ups, for the generated remote code.

``layout.py`` makes the convolution stacks fast on the CPU (a custom autograd convolution over strided
windows, channels-last views, contiguous gradients) without changing what they compute. The remote code
a checkpoint carries is the model definition its users read before they trust it, so it takes these
definitions instead, under the same names (``remote_code.SUBSTITUTES``): plain transposes and
transformers' own convolution layers — what ``layout.py`` is checked against in
``tests/test_cpu_kernels.py``. The outputs agree within float tolerance (the last bits of a sum may
differ); ``tests/test_remote_code.py`` compares the remote-code models with the package's. On GPUs
``layout.py`` runs these same formulations already. The package never imports this module; the
remote-code generator reads its source.
"""

from __future__ import annotations

import torch
from torch import nn


def transpose_contiguous(x: torch.Tensor) -> torch.Tensor:
    """``x`` with its channel axis (1) and last axis swapped, contiguous."""
    return x.transpose(1, -1).contiguous()


def conv_time_major(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """``conv`` over the time axis of a B x T x C tensor, returned B x T' x C'."""
    return transpose_contiguous(conv(transpose_contiguous(x)))


class ContiguousPositionalConvEmbedding:
    """Never instantiated here: the remote code keeps transformers' positional convolution, so the
    ``isinstance`` test in ``conv_positions`` is false and its layers run one by one, transposed."""


def use_contiguous_conv_layers(module: nn.Module) -> nn.Module:
    """The package swaps transformers' speech CNN and positional convolution layers for faster CPU
    subclasses here (``layout.py``); the remote code keeps transformers' layers as they are."""
    return module
