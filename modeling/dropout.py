"""Dropout for the CPU with cheaper random draws, used by the data2vec 2.0 blocks and decoder.

On the CPU, ``torch.nn.functional.dropout`` draws every element's mask with ``bernoulli_``: two
32-bit draws of the generator per element, serially. On the attention probabilities of a base text
model (16 x 12 x 266 x 266 per block) that is ~100 ms per block per step, about 5 % of a training
step. Here one 64-bit draw gives the masks of four elements (16 bits each): 5-10x faster. The drop
probability is quantised to 1/65536 (0.1 → 0.1000061) and the kept values are scaled by the inverse
of the *quantised* keep probability, so the expectation of every value is preserved exactly, as with
torch's dropout. The draws come from torch's default generator (seeded by ``torch.manual_seed``).

On GPUs torch's fused dropout (and the fused attention kernels, which drop inside the kernel) are used
unchanged: there the draws are not the bottleneck.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16


def dropout_multiplier(shape, p: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """A tensor of ``shape`` holding 0 (dropped, probability ``p`` quantised to 1/65536) or the inverse of
    the keep probability."""
    numel = math.prod(shape)
    dropped_levels = min(round(p * _LEVELS), _LEVELS)
    if dropped_levels == _LEVELS:
        return torch.zeros(shape, device=device, dtype=dtype)
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    uniform16 = words.view(torch.int16)[:numel].view(shape)  # uniform over [-32768, 32767]
    keep = uniform16 >= dropped_levels - _LEVELS // 2
    return keep.to(dtype).mul_(_LEVELS / (_LEVELS - dropped_levels))


def apply_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)``, with :func:`dropout_multiplier` masks on the CPU."""
    if not training or p == 0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    return x * dropout_multiplier(x.shape, p, x.device, x.dtype)


class Dropout(nn.Dropout):
    """``nn.Dropout`` with :func:`apply_dropout` (same parameters, same state dict: none)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_dropout(x, self.p, self.training)


def attention(q, k, v, bias: torch.Tensor | None, dropout_p: float, training: bool) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=...)``. With dropout in
    training on the CPU (where torch's fused kernels do not drop and fall back to an unfused path
    with ``bernoulli_`` masks), the same computation with :func:`apply_dropout` on the probabilities."""
    if not training or dropout_p == 0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=dropout_p if training else 0.0
        )
    scores = torch.matmul(q * (1.0 / math.sqrt(q.shape[-1])), k.transpose(-2, -1))
    if bias is not None:  # finite, so that a row without any key gives no NaN (forward or backward)
        scores = scores + bias.clamp_min(torch.finfo(scores.dtype).min)
    out = torch.matmul(apply_dropout(scores.softmax(-1), dropout_p), v)
    if bias is not None:  # a row without any key attends to nothing: zeros, as torch's kernels give
        out = out * (bias > float("-inf")).any(-1, keepdim=True)
    return out
