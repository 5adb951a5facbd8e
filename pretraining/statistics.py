"""What one update measured, summed over its micro-batches and reduced over all processes at once.

Every process adds its micro-batches into one float64 vector; at the update's end one all-reduce sums
it over processes. Each quantity has a named slice of that vector, so adding a quantity is one line and
nothing is read by position. The moments (count, Σy, Σy²) of targets and predictions give their feature
std over the *whole* update on every process, as fairseq's ``compute_var`` reduces its moments over
processes; the collapse guard reads it.
"""

from __future__ import annotations

from typing import Any

import torch

# per-update sums: masked positions, loss summed over them, micro-batches with a non-finite loss,
# examples, candidate positions (masked or not), and processes asked to stop (SIGTERM)
SCALARS = ("masked", "loss_sum", "nonfinite", "samples", "positions", "stop")


class UpdateStatistics:
    """Sums over the micro-batches of one update; :meth:`reduce` sums them over processes and resets.

    ``extra`` names further per-update sums a modality measures from its batches (see
    :class:`~data2vec_hf.pretraining.spec.BatchAccounting`), added with :meth:`add` as one vector."""

    def __init__(self, hidden_size: int, device, extra: tuple[str, ...] = ()):
        self.hidden_size, self.extra = hidden_size, tuple(extra)
        sizes = {name: 1 for name in SCALARS} | {name: 1 for name in self.extra}
        sizes |= {"target_moments": 1 + 2 * hidden_size, "prediction_moments": 1 + 2 * hidden_size}
        self.slices, start = {}, 0
        for name, size in sizes.items():
            self.slices[name] = slice(start, start + size)
            start += size
        self.values = torch.zeros(start, dtype=torch.float64, device=device)
        self.stop = False

    def field(self, name: str) -> torch.Tensor:
        """The view of the vector that holds ``name``."""
        return self.values[self.slices[name]]

    def add(
        self, out, loss_sum: torch.Tensor, finite: bool, batch_size: int, extra: torch.Tensor | None = None
    ):
        """One micro-batch: the model output (``num_masked``, ``mask``, ``target``, ``prediction``), its
        summed loss, whether that is finite, its example count and its ``extra`` sums."""
        self.field("masked").add_(out.num_masked.double())
        if finite:
            self.field("loss_sum").add_(loss_sum.detach().double())
        else:
            self.field("nonfinite").add_(1.0)
        self.field("samples").add_(batch_size)
        self.field("positions").add_(out.mask.numel() if out.mask is not None else 0)
        if extra is not None and self.extra:
            start = self.slices[self.extra[0]].start
            self.values[start : start + len(self.extra)] += extra.to(self.values.device, torch.float64)
        for name, y in (("target_moments", out.target), ("prediction_moments", out.prediction)):
            if y is not None and finite:
                add_moments(self.field(name), y.detach().reshape(-1, self.hidden_size).double())

    def request_stop(self) -> None:
        """Mark this process as asked to stop (every process reads it at the next reduction)."""
        self.stop = True

    def reduce(self, accelerator) -> dict[str, Any]:
        """Sum over processes, reset, and return the named totals with the feature stds."""
        self.field("stop").fill_(float(self.stop))
        totals = accelerator.reduce(self.values.clone(), reduction="sum")
        self.values.zero_()
        result = {name: totals[self.slices[name]].item() for name in (*SCALARS, *self.extra)}
        result["target_var"] = moments_std(totals[self.slices["target_moments"]], self.hidden_size)
        result["pred_var"] = moments_std(totals[self.slices["prediction_moments"]], self.hidden_size)
        return result


def add_moments(moments: torch.Tensor, y: torch.Tensor) -> None:
    """Add the rows of ``y`` (positions x features) to ``moments`` = (count, Σy, Σy²) in place."""
    dim = y.shape[1]
    moments[0] += y.shape[0]
    moments[1 : 1 + dim] += y.sum(0)
    moments[1 + dim :] += (y * y).sum(0)


def moments_std(moments: torch.Tensor, dim: int) -> float:
    """Mean over features of the std over positions, from (count, Σy, Σy²) — fairseq's ``compute_var``."""
    count, total, squares = moments[0], moments[1 : 1 + dim], moments[1 + dim :]
    if count < 2:
        return 0.0
    var = (squares - total * total / count) / (count - 1)
    return float(torch.sqrt(var.clamp(min=0) + 1e-6).mean())
