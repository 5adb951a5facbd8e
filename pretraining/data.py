"""Data pipelines of the pretraining scripts: load, check, decode, filter, tokenize and collate.

Typical use in a script (preprocessing runs once on the main process and is cached; the other
processes then read the cache)::

    with accelerator.main_process_first():
        raw = load_raw_dataset("audio", **data_source_kwargs(args))
        train_set, stats = prepare_audio_dataset(raw, sampling_rate=16000, min_samples=400)
    logger.info(stats.summary())
    loader = DataLoader(train_set, collate_fn=AudioCollator(max_samples=250_000), ...)

Sources: a Hub dataset (``dataset_name``, network only then), a local folder (``train_dir``: audio
files or an image folder, with an optional ``metadata.csv``/``metadata.jsonl`` holding ``file_name``),
a file (``train_file``: text files for text; for audio/images a manifest ``.csv``/``.jsonl``/``.json``
with a ``file_name``/``path`` column or a fairseq ``.tsv`` manifest), or, with none of these, the
embedded corpus of :mod:`data2vec_hf.pretraining.corpora`.

Bad input never reaches the model: unreadable or missing files and clips shorter than ``min_samples``
are skipped and counted in :class:`DataStats`; empty text lines are dropped and counted; a column that
does not exist raises :class:`DataError` naming it and the available columns. Audio is decoded with
``soundfile`` (never with ``datasets``' torchcodec-based ``Audio`` decoding), down-mixed to mono and
**resampled** to the target rate with ``scipy.signal.resample_poly`` when its rate differs (counted as
``resampled``), then optionally normalised to zero mean and unit variance per clip as fairseq's
``normalize: true``. :class:`AudioCollator` crops a batch to its shortest clip, as fairseq's collater
does (or pads it), with a fresh random offset each time a clip is drawn.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from datasets import Dataset, IterableDataset
from datasets.exceptions import DatasetGenerationError
from datasets.fingerprint import Hasher

from .corpora import (
    build_image_corpus,
    build_speech_corpus,
    build_text_corpus,
    cache_root,
    resample_audio,
)

logger = logging.getLogger(__name__)

MODALITIES = ("audio", "vision", "text")
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
TEXT_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}  # else "text"
FILE_EXTENSIONS = {"audio": AUDIO_EXTENSIONS, "vision": IMAGE_EXTENSIONS, "text": frozenset({".txt"})}
DEFAULT_COLUMNS = {
    "audio": ("audio", "file", "path", "file_name"),
    "vision": ("image", "img", "file_name", "path"),
    "text": ("text", "sentence", "content"),
}
FEATURE_TYPES = {"audio": datasets.Audio, "vision": datasets.Image, "text": type(None)}
KEPT = frozenset({"ok", "resampled"})  # statuses of examples that are kept
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# at most this many shards for a streamed local folder or manifest (a multiple of common process x
# worker counts, so the split stays even)
LOCAL_STREAM_SHARDS = 64


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


# ---------------------------------------------------------------------------------------------------
# Loading raw datasets


def data_source_kwargs(args: Any) -> dict[str, Any]:
    """Pick :func:`load_raw_dataset`'s keyword arguments from an argparse namespace (missing → default)."""
    names = (
        "dataset_name dataset_config_name train_split_name streaming train_dir train_file cache_dir "
        "skip_undecodable_lines"
    )
    return {name: getattr(args, name) for name in names.split() if getattr(args, name, None) is not None}


def load_raw_dataset(
    modality: str,
    *,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_split_name: str = "train",
    streaming: bool = False,
    train_dir: str | os.PathLike | None = None,
    train_file: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    cache_dir: str | os.PathLike | None = None,
    skip_undecodable_lines: bool = False,
    report: dict | None = None,
) -> Dataset | IterableDataset:
    """Load the raw training split of a Hub dataset, local files or (with no source) the embedded corpus.

    Audio/image columns come back undecoded (paths or bytes); the ``prepare_*`` functions decode them.
    Local text files must be UTF-8 (see :func:`~data2vec_hf.pretraining.text_data.ensure_utf8`); the
    number of lines dropped with ``skip_undecodable_lines`` is put in ``report["undecodable_lines"]``.
    """
    if modality not in MODALITIES:
        raise DataError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    given = [
        n
        for n, v in (("dataset_name", dataset_name), ("train_dir", train_dir), ("train_file", train_file))
        if v
    ]
    if len(given) > 1:
        raise DataError(f"give only one data source, got {' and '.join(given)}")
    cache_dir = str(cache_dir) if cache_dir is not None else None
    if dataset_name:
        ds = datasets.load_dataset(
            dataset_name,
            dataset_config_name,
            split=train_split_name,
            streaming=streaming,
            cache_dir=cache_dir,
        )
    elif modality == "text":
        files = _text_files(train_dir, train_file) if (train_dir or train_file) else [build_text_corpus()]
        builder = TEXT_BUILDERS.get(files[0].suffix.lower(), "text")
        where = _describe_source(train_dir, train_file, files)
        if builder == "text":
            from .text_data import ensure_utf8, holds_text

            files, dropped = ensure_utf8(files, skip_undecodable_lines, cache_dir)
            if report is not None:
                report["undecodable_lines"] = dropped
            if not any(holds_text(f) for f in files):  # (stops at the first file with text)
                raise DataError(f"{where} holds only blank lines: nothing usable is left to train on")
        data_files = [str(f) for f in files]
        try:
            ds = datasets.load_dataset(
                builder, data_files=data_files, split="train", cache_dir=cache_dir, streaming=streaming
            )
        except (ValueError, StopIteration, DatasetGenerationError) as error:
            # a table without rows (a csv of its header only, an empty json list or jsonl: datasets says
            # 'Instruction "train" corresponds to no data' or stops iterating) or one it cannot parse
            cause = (
                error.__cause__ if isinstance(error, DatasetGenerationError) and error.__cause__ else error
            )
            if isinstance(cause, StopIteration) or "corresponds to no data" in str(cause):
                raise DataError(f"{where} holds no rows: nothing usable is left to train on") from error
            raise DataError(
                f"{where} cannot be read as {builder}: {type(cause).__name__}: {cause}"
            ) from error
        if not streaming and len(ds) == 0:
            raise DataError(f"{where} holds no rows: nothing usable is left to train on")
    else:
        column = DEFAULT_COLUMNS[modality][0]
        if train_file:
            rows = _merge_rows([_manifest_rows(Path(f), column) for f in _as_list(train_file)])
        else:
            default = build_speech_corpus if modality == "audio" else build_image_corpus
            rows = _folder_rows(
                Path(train_dir) if train_dir else default(), FILE_EXTENSIONS[modality], column
            )
        ds = _dataset_from_rows(rows, column)
        # a stream of local files in shards (a few files each), so that processes and DataLoader workers
        # can share it out by whole shards (one shard would leave a single worker reading everything)
        ds = ds.to_iterable_dataset(num_shards=min(len(ds), LOCAL_STREAM_SHARDS)) if streaming else ds
    return _disable_decoding(ds)


def _as_list(value: Any) -> list:
    return [value] if isinstance(value, str | os.PathLike) else list(value)


def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{what} {str(path)!r} does not exist")
    return path


def _text_files(train_dir: str | os.PathLike | None, train_file: Any) -> list[Path]:
    if train_file:
        return [_existing(Path(f), "train_file") for f in _as_list(train_file)]
    files = sorted(p for p in _existing(Path(train_dir), "train_dir").rglob("*.txt") if not _hidden(p))
    if not files:
        raise DataError(f"train_dir {str(train_dir)!r} holds no .txt files")
    return files


def _describe_source(train_dir: Any, train_file: Any, files: Sequence[Path]) -> str:
    """``train_dir '...'``, ``train_file '...'`` (the first files) or the embedded corpus, for errors."""
    if train_dir:
        return f"train_dir {str(train_dir)!r}"
    names = ", ".join(repr(str(f)) for f in files[:3]) + (", ..." if len(files) > 3 else "")
    return f"train_file {names}" if train_file else f"the embedded corpus {names}"


def _hidden(path: Path) -> bool:
    return any(part.startswith(".") for part in path.parts)


def _read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``.csv``, ``.json`` (list of objects) or ``.jsonl`` file; :class:`DataError` naming the
    file when it does not parse or does not hold one object per row."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if path.suffix.lower() == ".csv":
                rows = list(csv.DictReader(f))
            elif path.suffix.lower() == ".jsonl":
                rows = [json.loads(line) for line in f if line.strip()]
            else:
                rows = json.load(f)
    except (UnicodeDecodeError, ValueError, csv.Error) as error:  # (json's errors are ValueErrors)
        raise DataError(f"manifest {str(path)!r} cannot be read: {error}") from error
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise DataError(f"manifest {str(path)!r} must hold one object (a row of columns) per example")
    return rows


def _manifest_rows(path: Path, column: str) -> dict[str, list]:
    """Rows of a manifest; file paths are resolved against the manifest's folder (or a fairseq root)."""
    _existing(path, "train_file")
    if path.suffix.lower() not in {".tsv", ".csv", ".json", ".jsonl"}:
        raise DataError(f"train_file {str(path)!r}: audio/image data needs a .csv/.jsonl/.json/.tsv manifest")
    if path.suffix.lower() == ".tsv":  # fairseq: first line is the root, then "relative/path<TAB>frames"
        root, *lines = path.read_text(encoding="utf-8").splitlines() or [""]
        files = [str(Path(root) / line.split("\t")[0]) for line in lines if line.strip()]
        if not files:
            raise DataError(
                f"manifest {str(path)!r} lists no files (a fairseq manifest is the root folder, then one "
                "'relative/path<TAB>frames' line per file): nothing usable is left to train on"
            )
        return {column: files}
    table = _read_table(path)
    if not table:
        raise DataError(f"manifest {str(path)!r} holds no rows: nothing usable is left to train on")
    keys = list(table[0]) if table else []
    key = next((k for k in ("file_name", "path", column) if k in keys), None)
    if key is None:
        raise DataError(f"manifest {str(path)!r} needs a 'file_name' or 'path' column; it has columns {keys}")
    rows = {k: [row.get(k) for row in table] for k in keys if k != key}
    rows[column] = [str(path.parent / (row[key] or "")) for row in table]  # "" → the folder → "missing"
    return rows


def _folder_rows(root: Path, extensions: frozenset[str], column: str) -> dict[str, list]:
    """Files of a folder (imagefolder layout: first sub-folder = ``label``), or its metadata file."""
    _existing(root, "train_dir")
    for name in ("metadata.csv", "metadata.jsonl"):
        if (root / name).exists():
            return _manifest_rows(root / name, column)
    files = sorted(
        p for p in root.rglob("*") if p.suffix.lower() in extensions and not _hidden(p.relative_to(root))
    )
    if not files:
        raise DataError(f"train_dir {str(root)!r} holds no files with extensions {sorted(extensions)}")
    rows: dict[str, list] = {column: [str(p) for p in files]}
    if all(len(p.relative_to(root).parts) > 1 for p in files):
        rows["label"] = [p.relative_to(root).parts[0] for p in files]
    return rows


def _merge_rows(parts: list[dict[str, list]]) -> dict[str, list]:
    keys = set.intersection(*(set(p) for p in parts))
    return {k: [v for p in parts for v in p[k]] for k in sorted(keys)}


def _dataset_from_rows(rows: dict[str, list], column: str) -> Dataset:
    """In-memory dataset whose fingerprint also covers the files' sizes and times (cache invalidation)."""
    ds = Dataset.from_dict(rows)
    stamps = []
    for path in rows[column]:
        stat = os.stat(path) if os.path.exists(path) else None
        stamps.append((path, stat.st_size, stat.st_mtime_ns) if stat else (path, None, None))
    return Dataset(ds.data, info=ds.info, fingerprint=Hasher.hash((ds._fingerprint, stamps)))


def _disable_decoding(ds: Dataset | IterableDataset) -> Dataset | IterableDataset:
    """Cast Audio/Image columns to ``decode=False``: we decode with soundfile/PIL ourselves."""
    for name, feature in (ds.features or {}).items():
        if isinstance(feature, datasets.Audio | datasets.Image) and feature.decode:
            ds = ds.cast_column(name, type(feature)(decode=False))
    return ds


# ---------------------------------------------------------------------------------------------------
# Shared machinery: columns, cached maps, status filtering, file sources, padding


def column_names(ds: Dataset | IterableDataset) -> list[str]:
    """Column names; for a streaming dataset without known features, those of its first example."""
    if ds.column_names is not None:
        return list(ds.column_names)
    first = next(iter(ds), None)
    return list(first) if first is not None else []


def resolve_column(ds: Dataset | IterableDataset, column: str | None, modality: str) -> str:
    """The requested column, or the first typed/conventional one; a clear error when absent."""
    names = column_names(ds)
    if column is not None:
        if column not in names:
            raise DataError(f"column {column!r} does not exist in the dataset; available columns: {names}")
        return column
    typed = [n for n, f in (ds.features or {}).items() if isinstance(f, FEATURE_TYPES[modality])]
    found = next((c for c in (*typed, *DEFAULT_COLUMNS[modality]) if c in names), None)
    if found is None:
        raise DataError(
            f"no {modality} column found (looked for {list(DEFAULT_COLUMNS[modality])}); "
            f"name it explicitly; available columns: {names}"
        )
    return found


def check_column_type(ds: Dataset | IterableDataset, column: str, modality: str) -> None:
    """A clear error when the column holds values of the wrong kind (e.g. numbers given as audio)."""
    first = next((v for v in _first_values(ds, column) if v is not None), None)
    if first is None:
        return
    accepted: tuple = (str,) if modality == "text" else (str, bytes, dict, os.PathLike)
    if modality == "vision":
        from PIL import Image

        accepted = (*accepted, Image.Image)
    if not isinstance(first, accepted):
        what = {"audio": "audio files (paths or bytes)", "vision": "images (paths or bytes)", "text": "text"}
        raise DataError(
            f"column {column!r} holds {type(first).__name__} values ({str(first)[:40]!r}), not {what[modality]}; "
            f"name the right column with --{'image' if modality == 'vision' else modality}_column"
        )


def _first_values(ds: Dataset | IterableDataset, column: str, count: int = 8) -> list:
    if isinstance(ds, Dataset):
        return list(ds.select_columns([column])[: min(count, len(ds))][column])
    return [example[column] for _, example in zip(range(count), ds)]


def _preprocess_dir(cache_dir: str | os.PathLike | None) -> Path:
    path = Path(cache_dir) / "data2vec_hf" if cache_dir else cache_root() / "preprocessed"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _apply(
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
        kwargs["cache_file_name"] = str(_preprocess_dir(cache_dir) / f"{method}-{fingerprint}.arrow")
        kwargs["new_fingerprint"] = fingerprint
    return getattr(ds, method)(function, num_proc=num_proc, desc=desc, **kwargs)


def _keep_usable(ds: Dataset | IterableDataset, stats: DataStats) -> Dataset | IterableDataset:
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
            f"no usable examples left{_common_folder(ds)}: {stats.summary()}"
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


def _common_folder(ds: Dataset) -> str:
    """`` in '<folder>'``: where the examples' files are (their common path), or "" when unknown."""
    sources = [s for s in ds["source"] if s] if "source" in ds.column_names else []
    try:
        return f" in {os.path.commonpath(sources)!r}" if sources else ""
    except ValueError:  # absolute and relative paths mixed
        return ""


def _open_source(value: Any) -> str | io.BytesIO:
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


def _tensor(values: Any, dtype: np.dtype) -> torch.Tensor:
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


# ---------------------------------------------------------------------------------------------------
# Audio


def feature_encoder_receptive_field(conv_kernel: Sequence[int], conv_stride: Sequence[int]) -> int:
    """Samples the convolutional feature encoder needs for one output frame (400 for wav2vec 2.0)."""
    field_size, jump = 1, 1
    for kernel, stride in zip(conv_kernel, conv_stride):
        field_size += (kernel - 1) * jump
        jump *= stride
    return field_size


def read_audio(value: Any, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode a path, bytes, ``{"bytes", "path"}`` or ``{"array", "sampling_rate"}`` value with soundfile.

    Returns mono float32 samples (channels averaged) and the file's sampling rate; raises
    :class:`UnreadableError` for a missing, corrupt or non-finite file. A file longer than
    ``max_seconds`` is not decoded whole: only a window of that length is read, at an offset drawn
    from a generator seeded by the file's name (the same window every time).
    """
    if isinstance(value, dict) and value.get("array") is not None:  # decoded: (time,) or (channels, time)
        audio, rate = np.asarray(value["array"], dtype=np.float32), int(value["sampling_rate"])
        audio = audio.mean(axis=0) if audio.ndim == 2 else audio
    else:
        import soundfile as sf

        source = _open_source(value)
        try:
            with sf.SoundFile(source) as handle:
                rate = handle.samplerate
                window = int(max_seconds * rate) if max_seconds else None
                if window is not None and handle.frames > window:
                    handle.seek(_window_start(_source_name(value), handle.frames - window))
                audio = handle.read(window if window is not None else -1, dtype="float32", always_2d=True)
        except Exception as error:  # any decoder failure means the file is unusable
            raise UnreadableError("unreadable", str(error)) from error
        audio = audio.mean(axis=1)
    if not np.isfinite(audio).all():
        raise UnreadableError("unreadable", "non-finite samples")
    return audio.astype(np.float32, copy=False), rate


def _window_start(name: str, last_start: int) -> int:
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return int(np.random.default_rng(seed).integers(0, last_start + 1))


def _source_name(value: Any) -> str:
    """The file a value comes from ("" for in-memory bytes)."""
    if isinstance(value, dict):
        return str(value.get("path") or "")
    return os.fspath(value) if isinstance(value, str | os.PathLike) else ""


def zero_mean_unit_var(audio: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Per-clip normalisation, as fairseq's ``normalize: true`` (``F.layer_norm(wav, wav.shape)``)."""
    return ((audio - audio.mean()) / np.sqrt(audio.var() + eps)).astype(np.float32)


def _decode_audio(
    value: Any, sampling_rate: int, min_samples: int, normalize: bool, max_seconds: float | None
) -> dict[str, Any]:
    empty = np.zeros(0, dtype=np.float32)
    source = _source_name(value)
    try:
        audio, rate = read_audio(value, max_seconds)
    except UnreadableError as error:
        return {"input_values": empty, "length": 0, "status": error.reason, "source": source}
    status = "ok" if rate == sampling_rate else "resampled"
    audio = resample_audio(audio, rate, sampling_rate) if len(audio) else audio
    if len(audio) < min_samples:
        return {"input_values": empty, "length": len(audio), "status": "too_short", "source": source}
    audio = zero_mean_unit_var(audio) if normalize else audio
    return {"input_values": audio, "length": len(audio), "status": status, "source": source}


def prepare_audio_dataset(
    raw: Dataset | IterableDataset,
    *,
    sampling_rate: int = 16000,
    min_samples: int = 400,
    normalize: bool = True,
    audio_column: str | None = None,
    num_proc: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_seconds: float | None = None,
) -> tuple[Dataset | IterableDataset, DataStats]:
    """Decode, down-mix, resample, normalise; drop unreadable clips and clips < ``min_samples`` samples.

    Returns a dataset with ``input_values`` (float32), ``length`` (samples) and ``source`` (the file),
    and its statistics. ``min_samples`` should be at least :func:`feature_encoder_receptive_field` of
    the model. Files longer than ``max_seconds`` keep one window of that length (see :func:`read_audio`).
    """
    raw = _disable_decoding(raw)
    column = resolve_column(raw, audio_column, "audio")
    check_column_type(raw, column, "audio")
    features = datasets.Features(
        {
            "input_values": datasets.List(datasets.Value("float32")),
            "length": datasets.Value("int64"),
            "status": datasets.Value("string"),
            "source": datasets.Value("string"),
        }
    )
    decode = functools.partial(
        _decode_audio,
        sampling_rate=sampling_rate,
        min_samples=min_samples,
        normalize=normalize,
        max_seconds=max_seconds,
    )
    ds = _apply(
        raw, "map", decode, cache_dir=cache_dir, num_proc=num_proc, desc="Decoding audio",
        input_columns=[column], remove_columns=column_names(raw), features=features,
    )  # fmt: skip
    stats = DataStats("audio", streaming=isinstance(ds, IterableDataset))
    ds = _keep_usable(ds, stats)
    if not stats.streaming:
        ds = ds.with_format("numpy")
        logger.info(stats.summary())
    return ds, stats


def random_crop(
    audio: torch.Tensor, max_samples: int | None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A random window of ``max_samples`` samples of a longer clip (shorter clips unchanged)."""
    if max_samples is None or len(audio) <= max_samples:
        return audio
    start = int(torch.randint(0, len(audio) - max_samples + 1, (1,), generator=generator))
    return audio[start : start + max_samples]


@dataclass
class AudioCollator:
    """Brings a batch of clips to one length, by cropping or by padding.

        ``crop_to_shortest=True`` is fairseq's pretraining collater: every clip is cropped, at a random
        offset, to the shortest clip of the batch (and to ``max_samples``); nothing is padded and no
        ``attention_mask`` is returned. Otherwise clips longer than ``max_samples`` are randomly cropped and
        the batch is zero-padded to its longest clip, with ``attention_mask`` (long, 1 = real sample).

        Crop offsets are drawn from each example's generator when ``generators`` are passed (the pretraining
        loop passes one per example), else from ``generator``. ``audio_samples`` reports
        ``[content, cropped away, padding]`` samples per clip (B x 3; per row, so that splitting a batch
    splits them too), where content counts each clip up to ``max_samples``.
    """

    max_samples: int | None = None
    crop_to_shortest: bool = False
    pad_to_multiple_of: int | None = None
    generator: torch.Generator | None = None

    def __call__(
        self, examples: Sequence[dict[str, Any]], generators: Sequence[torch.Generator] | None = None
    ) -> dict[str, torch.Tensor]:
        clips = [_tensor(e["input_values"], np.float32) for e in examples]
        generators = generators or [self.generator] * len(clips)
        capped = [len(c) if self.max_samples is None else min(len(c), self.max_samples) for c in clips]
        lengths = [min(capped)] * len(clips) if self.crop_to_shortest else capped
        clips = [random_crop(c, n, g) for c, n, g in zip(clips, lengths, generators)]
        if self.crop_to_shortest:
            stats = torch.tensor([[n, n - length, 0] for n, length in zip(capped, lengths)])
            return {"input_values": torch.stack(clips), "audio_samples": stats}
        input_values, attention_mask = pad_sequences(clips, 0.0, self.pad_to_multiple_of)
        padding = (attention_mask == 0).sum(-1).tolist()
        stats = torch.tensor([[n, 0, pad] for n, pad in zip(capped, padding)])
        return {"input_values": input_values, "attention_mask": attention_mask, "audio_samples": stats}


# ---------------------------------------------------------------------------------------------------
# Vision


def build_image_transform(
    image_size: int = 224,
    crop_scale: tuple[float, float] = (0.2, 1.0),
    hflip: float = 0.5,
    interpolation: str = "bicubic",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    color_jitter: float = 0.0,
) -> Callable:
    """timm training transform: RandomResizedCrop(scale) + horizontal flip (+ ColorJitter of brightness,
    contrast and saturation when ``color_jitter`` > 0) + ToTensor + Normalize.

    The defaults are data2vec 2.0's / MAE's (scale 0.2-1, bicubic, ImageNet mean and std, no jitter);
    data2vec 1.0 uses scale 0.08-1 and jitter 0.4.
    """
    from timm.data import create_transform

    return create_transform(
        input_size=image_size,
        is_training=True,
        scale=crop_scale,
        hflip=hflip,
        color_jitter=color_jitter or None,
        interpolation=interpolation,
        mean=tuple(mean),
        std=tuple(std),
    )


def read_image(value: Any):
    """Decode a path, bytes, ``{"bytes", "path"}`` value or PIL image to an RGB PIL image, turned upright
    by its EXIF orientation. Raises :class:`UnreadableError`: ``"unreadable"`` for a corrupt or truncated
    file, ``"too_large"`` for an image over PIL's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``,
    89 M pixels), which is never decoded."""
    import warnings

    from PIL import Image, ImageOps

    if isinstance(value, Image.Image):
        return ImageOps.exif_transpose(value).convert("RGB")
    source = _open_source(value)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                # decodes the whole file: truncated files fail here
                return ImageOps.exif_transpose(image).convert("RGB")
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise UnreadableError("too_large", str(error)) from error
    except Exception as error:  # any decoder failure means the file is unusable
        raise UnreadableError("unreadable", str(error)) from error


def _image_status(value: Any) -> dict[str, str]:
    try:
        read_image(value)
    except UnreadableError as error:
        return {"status": error.reason, "source": _source_name(value)}
    return {"status": "ok", "source": _source_name(value)}


def _transform_image(value: Any, transform: Callable) -> dict[str, Any]:
    try:
        return {"pixel_values": transform(read_image(value)).numpy(), "status": "ok"}
    except UnreadableError as error:
        return {"pixel_values": None, "status": error.reason}


def _transform_batch(batch: dict[str, list], column: str, transform: Callable) -> dict[str, list]:
    return {"pixel_values": [transform(read_image(value)) for value in batch[column]]}


def prepare_image_dataset(
    raw: Dataset | IterableDataset,
    transform: Callable,
    *,
    image_column: str | None = None,
    num_proc: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[Dataset | IterableDataset, DataStats]:
    """Check every image decodes (cached; corrupt/missing ones skipped and counted), then apply
    ``transform`` on the fly (fresh augmentation every epoch). Examples carry ``pixel_values``."""
    raw = _disable_decoding(raw)
    column = resolve_column(raw, image_column, "vision")
    check_column_type(raw, column, "vision")
    stats = DataStats("vision", streaming=isinstance(raw, IterableDataset))
    if stats.streaming:
        apply = functools.partial(_transform_image, transform=transform)
        ds = raw.map(apply, input_columns=[column], remove_columns=column_names(raw))
        return _keep_usable(ds, stats), stats
    ds = _apply(
        raw, "map", _image_status, cache_dir=cache_dir, num_proc=num_proc, desc="Checking images",
        input_columns=[column],
    )  # fmt: skip
    ds = _keep_usable(ds, stats)
    logger.info(stats.summary())
    return ds.with_transform(functools.partial(_transform_batch, column=column, transform=transform)), stats


@dataclass
class ImageCollator:
    """Stacks ``pixel_values`` (tensors or arrays, 3 x H x W) into a float32 batch."""

    def __call__(self, examples: Sequence[dict[str, Any]], generators=None) -> dict[str, torch.Tensor]:
        pixels = [_tensor(e["pixel_values"], np.float32) for e in examples]
        return {"pixel_values": torch.stack(pixels)}


# ---------------------------------------------------------------------------------------------------
# Text lives in text_data.py; its public names stay importable from here.

from .text_data import SPECIAL_TOKENS as SPECIAL_TOKENS  # noqa: E402  (text_data imports the above)
from .text_data import TextCollator as TextCollator  # noqa: E402
from .text_data import load_or_train_tokenizer as load_or_train_tokenizer  # noqa: E402
from .text_data import prepare_text_dataset as prepare_text_dataset  # noqa: E402
from .text_data import train_bpe_tokenizer as train_bpe_tokenizer  # noqa: E402
