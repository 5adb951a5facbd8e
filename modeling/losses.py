"""The data2vec regression loss and the variance monitors used by the collapse guard."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def regression_loss(
    prediction: torch.Tensor, target: torch.Tensor, beta: float = 0.0, scale: float | None = None
) -> torch.Tensor:
    """Per-position loss (N,) for N x D predictions and targets.

    Smooth L1 with ``beta`` (β = 0 gives the squared error), summed over the feature dimension and
    multiplied by ``scale`` (1/√D when ``scale`` is None), computed in float32.
    """
    prediction, target = prediction.float(), target.float()
    if beta == 0:
        loss = F.mse_loss(prediction, target, reduction="none")
    else:
        loss = F.smooth_l1_loss(prediction, target, reduction="none", beta=beta)
    loss = loss.sum(dim=-1)
    return loss * (1.0 / math.sqrt(prediction.size(-1)) if scale is None else scale)


@torch.no_grad()
def feature_std(y: torch.Tensor) -> torch.Tensor:
    """Mean over features of the standard deviation over positions (fairseq's ``compute_var``).

    A collapsed model predicts (or targets) the same vector everywhere, which drives this to 0.
    """
    y = y.detach().float().reshape(-1, y.size(-1))
    if y.size(0) < 2:
        return torch.zeros((), device=y.device)
    return torch.sqrt(y.var(dim=0) + 1e-6).mean()
