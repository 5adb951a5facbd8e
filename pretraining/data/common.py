"""What every modality's pipeline shares: the error types, the kept/skipped counts, cached ``map``/``filter``
and the small tensor helpers of the collators.

Bad input never reaches the model: an example whose file is missing or unreadable gets a ``status``
other than ``ok`` when it is decoded, :func:`keep_usable` drops it and :class:`DataStats` counts it by
reason, so that the log says what was skipped and why."""

from __future__ import annotations

import io
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, IterableDataset
from datasets.fingerprint import Hasher

from .corpora import cache_root

logger = logging.getLogger(__name__)


KEPT = frozenset({"ok", "resampled"})  # statuses of examples that are kept


class DataError(ValueError):
    """Input data the pipeline cannot use, with a message that says what to change."""


class UnreadableError(Exception):
    """One file could not be read; ``reason`` is ``"missing"`` or ``"unreadable"``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class DataStats:
    """What preprocessing kept and skipped. For streaming datasets the counts grow while iterating
    (in the iterating process only: DataLoader workers keep their own copies)."""

    modality: str
    streaming: bool = False
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)

    def record(self, status: str) -> bool:
        """Count one example's status; return whether it is kept."""
        if status in KEPT:
            self.kept += 1
            if status != "ok":
                self.notes[status] += 1
            return True
        self.skipped[status] += 1
        return False

    def skip(self, reason: str) -> bool:
        """Count one dropped example; returns True (for use inside filters)."""
        self.skipped[reason] += 1
        return True

    def summary(self) -> str:
        """One line for the log."""
        total = self.kept + sum(self.skipped.values())
        what = "so far " if self.streaming else ""
        text = f"{self.modality}: kept {what}{self.kept} of {total} examples"
        if self.skipped:
            text += "; skipped " + ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items()))
        if self.notes:
            text += "; " + ", ".join(f"{k}={v}" for k, v in sorted(self.notes.items()))
        return text


def preprocess_dir(cache_dir: str | os.PathLike | None) -> Path:
    path = Path(cache_dir) / "data2vec_hf" if cache_dir else cache_root() / "preprocessed"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached_map(
    ds: Dataset | IterableDataset,
    method: str,
    function: Callable,
    *,
    cache_dir: str | os.PathLike | None,
    num_proc: int | None = None,
    desc: str | None = None,
    **kwargs: Any,
) -> Dataset | IterableDataset:
    """``ds.map``/``ds.filter``; cached on disk, in-memory datasets included (explicit cache file)."""
    if isinstance(ds, IterableDataset):
        return getattr(ds, method)(function, **kwargs)
    if not ds.cache_files:
        fingerprint = Hasher.hash((ds._fingerprint, method, function, kwargs))
        kwargs["cache_file_name"] = str(preprocess_dir(cache_dir) / f"{method}-{fingerprint}.arrow")
        kwargs["new_fingerprint"] = fingerprint
    return getattr(ds, method)(function, num_proc=num_proc, desc=desc, **kwargs)


def keep_usable(ds: Dataset | IterableDataset, stats: DataStats) -> Dataset | IterableDataset:
    """Drop the examples whose ``status`` is not kept, counting every status; remove ``status``."""
    if isinstance(ds, IterableDataset):
        ds = ds.filter(stats.record, input_columns=["status"]).remove_columns("status")
        ensure_usable_stream(ds, stats, f"no usable {stats.modality} examples in the stream")
        return ds
    if len(ds) == 0:  # (a map over no rows adds no column: there is no "status" to read)
        raise DataError(f"the {stats.modality} dataset holds no examples: nothing usable is left to train on")
    statuses = list(ds["status"])
    kept = [i for i, status in enumerate(statuses) if stats.record(status)]
    if not kept:
        reasons = "; ".join(SKIP_REASONS[r] for r in sorted(stats.skipped) if r in SKIP_REASONS)
        raise DataError(
            f"no usable examples left{common_folder(ds)}: {stats.summary()}"
            + (f" ({reasons})" if reasons else "")
        )
    ds = ds if len(kept) == len(statuses) else ds.select(kept)
    return ds.remove_columns("status")


def ensure_usable_stream(ds: IterableDataset, stats: DataStats, message: str) -> None:
    """Read a prepared stream up to its first example: one without any would make the training loop
    wait forever for a batch (every epoch ends at once). Raises :class:`DataError` with ``message`` and
    the counts of what was read; otherwise the counts are reset to what they were."""
    kept, skipped, notes = stats.kept, Counter(stats.skipped), Counter(stats.notes)
    if next(iter(ds), None) is None:
        raise DataError(f"{message}: {stats.summary()}")
    stats.kept, stats.skipped, stats.notes = kept, skipped, notes


# what each reason for skipping an example means, for the error when nothing is left
SKIP_REASONS = {
    "missing": "missing = files that do not exist",
    "unreadable": "unreadable = files that do not decode",
    "too_short": "too_short = clips shorter than --min_length_seconds or the model's receptive field",
    "too_large": "too_large = images over PIL's decompression-bomb limit",
}


def common_folder(ds: Dataset) -> str:
    """`` in '<folder>'``: where the examples' files are (their common path), or "" when unknown."""
    sources = [s for s in ds["source"] if s] if "source" in ds.column_names else []
    try:
        return f" in {os.path.commonpath(sources)!r}" if sources else ""
    except ValueError:  # absolute and relative paths mixed
        return ""


def open_source(value: Any) -> str | io.BytesIO:
    """A path or in-memory file for a path, bytes or ``{"bytes", "path"}`` value."""
    data, path = None, None
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, bytes | bytearray):
        data = value
    elif isinstance(value, str | os.PathLike):
        path = value
    else:
        raise UnreadableError("unreadable", f"unsupported value of type {type(value).__name__}")
    if data:
        return io.BytesIO(data)
    if path and os.path.isfile(path):
        return os.fspath(path)
    raise UnreadableError("missing", str(path))


def as_tensor(values: Any, dtype: np.dtype) -> torch.Tensor:
    """A fresh tensor from a list, array or tensor (copies: dataset arrays may be read-only)."""
    return torch.tensor(np.asarray(values, dtype=dtype))


def pad_sequences(
    sequences: Sequence[torch.Tensor], pad_value: float, pad_to_multiple_of: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D tensors to the longest (rounded up to a multiple); return (batch, attention_mask)."""
    longest = max(len(s) for s in sequences)
    if pad_to_multiple_of:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    batch = sequences[0].new_full((len(sequences), longest), pad_value)
    mask = torch.zeros(len(sequences), longest, dtype=torch.long)
    for i, seq in enumerate(sequences):
        batch[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
    return batch, mask


def source_name(value: Any) -> str:
    """The file a value comes from ("" for in-memory bytes)."""
    if isinstance(value, dict):
        return str(value.get("path") or "")
    return os.fspath(value) if isinstance(value, str | os.PathLike) else ""
