"""How much audio a run did not train on: cropped away to the shortest clip of a batch, or padding.

fairseq crops every clip of a batch to its shortest one; batching clips of similar duration
(``--group_by_length``) is what keeps that loss small. :class:`AudioWaste` is the audio spec's
:class:`~data2vec_hf.pretraining.spec.BatchAccounting`: the collator reports, per clip, its content,
cropped and padding samples (``audio_samples``); the loop sums them over every update and process, and
this class keeps the per-epoch and whole-run fractions, logs each epoch's, and writes them into
``train_summary.json`` under ``audio``.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def waste_fraction(content: float, cropped: float, padding: float) -> float:
    """Audio not trained on (cropped away) plus padding, relative to the audio content of the batches."""
    return (cropped + padding) / content if content > 0 else math.nan


class AudioWaste:
    """Cropped-away and padding samples, against the audio content, per epoch and for the whole run."""

    info_key = "audio_samples"
    names = ("content", "cropped", "padding")

    def measure(self, info: torch.Tensor) -> torch.Tensor:
        return info.reshape(-1, len(self.names)).sum(0)

    def add(self, state: dict, totals: dict) -> None:
        update = [totals[name] for name in self.names]
        for key in ("epoch", "total"):
            state[key] = [a + b for a, b in zip(state.get(key, [0.0] * 3), update)]

    def metrics(self, state: dict) -> dict[str, float]:
        epoch = state.get("epoch", [0.0] * 3)
        return {"audio_waste": waste_fraction(*epoch)} if epoch[0] > 0 else {}

    def end_epoch(self, state: dict, epoch: int) -> str | None:
        content = state.get("epoch", [0.0] * 3)
        state["epoch"] = [0.0] * 3
        if content[0] <= 0:
            return None
        fraction = waste_fraction(*content)
        state.setdefault("history", []).append((epoch, fraction))
        return f"epoch {epoch}: {100 * fraction:.1f}% of the audio was cropped away or padding"

    def summary(self, state: dict) -> dict[str, Any]:
        content, cropped, padding = state.get("total", [0.0] * 3)
        if content <= 0:
            return {}
        return {
            "audio": {
                "content_samples": content,
                "cropped_samples": cropped,
                "padding_samples": padding,
                "waste_fraction": waste_fraction(content, cropped, padding),
                "per_epoch": state.get("history", []),
            }
        }
