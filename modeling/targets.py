"""Teacher targets: the average of the top-K blocks' FFN outputs, normalised."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


@contextmanager
def record_outputs(modules: Sequence[nn.Module], transform: Callable | None = None):
    """Collect each module's forward output (in module order) while the context is open.

    transformers' blocks do not return the FFN output before the residual connection, which is
    what data2vec regresses, so it is captured with forward hooks on the FFN submodules.
    ``transform(index, output)`` may post-process an output (e.g. apply a layer scale).
    """
    outputs: list[torch.Tensor | None] = [None] * len(modules)

    def make_hook(index):
        def hook(_module, _args, output):
            output = output[0] if isinstance(output, tuple) else output
            outputs[index] = transform(index, output) if transform is not None else output

        return hook

    handles = [m.register_forward_hook(make_hook(i)) for i, m in enumerate(modules)]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def instance_norm_over_time(x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Normalise each channel of each sample over time (B x T x C), without affine parameters.

    With ``padding_mask`` (B x T, True = padding) the statistics are taken over real steps only;
    without it over all steps, as fairseq's ``F.instance_norm`` does.
    """
    x = x.float()
    if padding_mask is None:
        return F.instance_norm(x.transpose(1, 2)).transpose(1, 2)
    keep = (~padding_mask).unsqueeze(-1).to(x.dtype)
    count = keep.sum(1, keepdim=True).clamp(min=1)
    mean = (x * keep).sum(1, keepdim=True) / count
    var = (((x - mean) * keep) ** 2).sum(1, keepdim=True) / count
    return (x - mean) * torch.rsqrt(var + 1e-5)


def build_targets(
    layer_outputs: Sequence[torch.Tensor],
    top_k: int,
    instance_norm_target_layer: bool = False,
    layer_norm_target_layer: bool = False,
    instance_norm_targets: bool = False,
    layer_norm_targets: bool = False,
    padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Average the top ``top_k`` layer outputs (each B x T x C) into float32 targets.

    Each layer output is normalised first (instance norm over time or parameter-less layer norm
    over features), then averaged, then optionally normalised once more — fairseq's order.
    """
    if not 1 <= top_k <= len(layer_outputs):
        raise ValueError(f"average_top_k_layers={top_k} but the teacher has {len(layer_outputs)} layers")
    layers = [y.float() for y in layer_outputs[-top_k:]]
    if instance_norm_target_layer:
        layers = [instance_norm_over_time(y, padding_mask) for y in layers]
    if layer_norm_target_layer:
        layers = [F.layer_norm(y, y.shape[-1:]) for y in layers]
    target = sum(layers) / len(layers)
    if layer_norm_targets:
        target = F.layer_norm(target, target.shape[-1:])
    if instance_norm_targets:
        target = instance_norm_over_time(target, padding_mask)
    return target
