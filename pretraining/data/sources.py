"""Where the raw examples come from: a Hub dataset (``dataset_name``, network only then), a local folder
(``train_dir``: audio files or an image folder, with an optional ``metadata.csv``/``metadata.jsonl``
holding ``file_name``), a file (``train_file``: text files for text; for audio/images a manifest
``.csv``/``.jsonl``/``.json`` with a ``file_name``/``path`` column or a fairseq ``.tsv`` manifest), or, with
none of these, the embedded corpus of :mod:`data2vec_hf.pretraining.data.corpora`.

Audio and image columns come back undecoded (paths or bytes): the modality modules decode them with
their own readers, never with ``datasets``' torchcodec-based decoding. A column that does not exist
raises :class:`~data2vec_hf.pretraining.data.common.DataError` naming it and the columns there are."""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, IterableDataset
from datasets.exceptions import DatasetGenerationError
from datasets.fingerprint import Hasher

from .common import DataError
from .corpora import build_image_corpus, build_speech_corpus, build_text_corpus
from .text_files import ensure_utf8, holds_text

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


# at most this many shards for a streamed local folder or manifest (a multiple of common process x
# worker counts, so the split stays even)
LOCAL_STREAM_SHARDS = 64


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
    Local text files must be UTF-8 (see :func:`~data2vec_hf.pretraining.data.text.ensure_utf8`); the
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
        ds = load_text_files(train_dir, train_file, streaming, cache_dir, skip_undecodable_lines, report)
    else:
        ds = load_media_files(modality, train_dir, train_file, streaming)
    return disable_decoding(ds)


def load_text_files(train_dir, train_file, streaming: bool, cache_dir, skip_undecodable_lines: bool, report):
    """Local text files (plain, json/jsonl, csv, parquet), or the embedded text corpus."""
    files = _text_files(train_dir, train_file) if (train_dir or train_file) else [build_text_corpus()]
    builder = TEXT_BUILDERS.get(files[0].suffix.lower(), "text")
    where = _describe_source(train_dir, train_file, files)
    if builder == "text":
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
        cause = error.__cause__ if isinstance(error, DatasetGenerationError) and error.__cause__ else error
        if isinstance(cause, StopIteration) or "corresponds to no data" in str(cause):
            raise DataError(f"{where} holds no rows: nothing usable is left to train on") from error
        raise DataError(f"{where} cannot be read as {builder}: {type(cause).__name__}: {cause}") from error
    if not streaming and len(ds) == 0:
        raise DataError(f"{where} holds no rows: nothing usable is left to train on")
    return ds


def load_media_files(modality: str, train_dir, train_file, streaming: bool):
    """Local audio or image files: a folder (with optional metadata), manifests, or the embedded corpus."""
    column = DEFAULT_COLUMNS[modality][0]
    if train_file:
        rows = _merge_rows([_manifest_rows(Path(f), column) for f in _as_list(train_file)])
    else:
        default = build_speech_corpus if modality == "audio" else build_image_corpus
        rows = _folder_rows(Path(train_dir) if train_dir else default(), FILE_EXTENSIONS[modality], column)
    ds = _dataset_from_rows(rows, column)
    # a stream of local files in shards (a few files each), so that processes and DataLoader workers
    # can share it out by whole shards (one shard would leave a single worker reading everything)
    return ds.to_iterable_dataset(num_shards=min(len(ds), LOCAL_STREAM_SHARDS)) if streaming else ds


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


def read_table(path: Path) -> list[dict[str, Any]]:
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
    table = read_table(path)
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


def disable_decoding(ds: Dataset | IterableDataset) -> Dataset | IterableDataset:
    """Cast Audio/Image columns to ``decode=False``: we decode with soundfile/PIL ourselves."""
    for name, feature in (ds.features or {}).items():
        if isinstance(feature, datasets.Audio | datasets.Image) and feature.decode:
            ds = ds.cast_column(name, type(feature)(decode=False))
    return ds


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
