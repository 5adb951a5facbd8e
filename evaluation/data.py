"""Labelled train/test data for the probes: an embedded probe set, a Hub dataset, a local folder or a
manifest file, decoded once (audio: mono at the target rate; images: RGB PIL; text: strings).

Sources and how their split is found:

- ``embedded=True``: the modality's embedded probe set (:mod:`.probe_sets`), with its own split.
- ``dataset_name`` (+ ``dataset_config_name``): the ``train_split`` and ``test_split`` of a Hub dataset;
  without a test split, a stratified, seeded ``test_fraction`` of the training split is held out.
- ``data_file``: a ``.csv``/``.jsonl``/``.json`` manifest (one row per example; for audio/images a
  ``file_name`` or ``path`` column relative to the manifest's folder, for text a text column), with the
  label column and, optionally, a ``split`` column (``train``/``test``).
- ``data_dir``: a folder holding such a manifest (``metadata.csv``/``metadata.jsonl``), or class
  sub-folders (``<dir>/<label>/<file>``), or ``train/`` and ``test/`` each with class sub-folders. For
  text, class folders hold ``.txt`` files with one example per line.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from data2vec_hf.pretraining.data import (
    DEFAULT_COLUMNS,
    FILE_EXTENSIONS,
    DataError,
    UnreadableError,
    disable_decoding,
    read_audio,
    read_image,
    read_table,
)
from data2vec_hf.pretraining.data.corpora import resample_audio

from .probe_sets import build_probe_set

logger = logging.getLogger(__name__)

SPLIT_COLUMN = "split"


@dataclass
class LabelledSplit:
    """Decoded examples and their class ids."""

    values: list
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class LabelledData:
    """A labelled train/test pair for the probes; ``classes[i]`` names class id ``i``."""

    modality: str
    classes: list[str]
    train: LabelledSplit
    test: LabelledSplit
    source: str
    skipped: Counter = field(default_factory=Counter)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> str:
        text = (
            f"{self.source}: {len(self.train)} training / {len(self.test)} test examples, "
            f"{self.num_classes} classes"
        )
        if self.skipped:
            text += " (skipped: " + ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) + ")"
        return text


# --------------------------------------------------------------------------------------------------
# Rows: {"input": [...], "label": [...], "split": [...] or None}


def _rows_from_table(table: list[dict], base: Path, modality: str, input_column, label_column) -> dict:
    keys = list(table[0]) if table else []
    if label_column not in keys:
        raise DataError(
            f"the labelled data has no label column {label_column!r}; its columns are {keys} "
            "(name it with --eval_label_column / --label_column)"
        )
    if modality == "text":
        candidates = (input_column,) if input_column else DEFAULT_COLUMNS["text"]
    else:
        candidates = (input_column,) if input_column else ("file_name", "path", *DEFAULT_COLUMNS[modality])
    column = next((c for c in candidates if c in keys), None)
    if column is None:
        raise DataError(f"no input column found (looked for {list(candidates)}); its columns are {keys}")
    values = [row[column] for row in table]
    if modality != "text":
        values = [str(base / v) if v and not os.path.isabs(v) else v for v in values]
    splits = [row.get(SPLIT_COLUMN) for row in table] if SPLIT_COLUMN in keys else None
    return {"input": values, "label": [row[label_column] for row in table], "split": splits}


def _rows_from_folder(root: Path, modality: str, input_column, label_column) -> dict:
    for name in ("metadata.csv", "metadata.jsonl"):
        if (root / name).exists():
            return _rows_from_table(read_table(root / name), root, modality, input_column, label_column)
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    parts = [("train", root / "train"), ("test", root / "test")] if has_splits else [(None, root)]
    values, labels, splits = [], [], []
    extensions = FILE_EXTENSIONS[modality]
    for split, folder in parts:
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for path in sorted(class_dir.rglob("*")):
                if path.suffix.lower() not in extensions:
                    continue
                if modality == "text":
                    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
                    items = [line for line in lines if line]
                else:
                    items = [str(path)]
                values += items
                labels += [class_dir.name] * len(items)
                splits += [split] * len(items)
    if not values:
        raise DataError(
            f"{root} holds no labelled examples: expected a metadata.csv/metadata.jsonl with a label column, "
            "class sub-folders (<dir>/<label>/...), or train/ and test/ with class sub-folders"
        )
    return {"input": values, "label": labels, "split": splits if has_splits else None}


def _rows_from_hub(
    name, config_name, modality, input_column, label_column, train_split, test_split, cache_dir
):
    import datasets

    loaded = datasets.load_dataset(name, config_name, cache_dir=cache_dir)
    if train_split not in loaded:
        raise DataError(f"dataset {name} has no split {train_split!r}; it has {list(loaded)}")
    parts = [(None, loaded[train_split])]
    if test_split and test_split in loaded:
        parts = [("train", loaded[train_split]), ("test", loaded[test_split])]
    values, labels, splits, label_names = [], [], [], None
    for split, ds in parts:
        ds = disable_decoding(ds)
        names = list(ds.column_names)
        if label_column not in names:
            raise DataError(
                f"dataset {name} has no label column {label_column!r}; its columns are {names} "
                "(name it with --eval_label_column / --label_column)"
            )
        feature = ds.features.get(label_column)
        label_names = getattr(feature, "names", None) or label_names
        typed = {"audio": "Audio", "vision": "Image"}.get(modality)
        typed_columns = [n for n, f in ds.features.items() if typed and type(f).__name__ == typed]
        candidates = (input_column,) if input_column else (*typed_columns, *DEFAULT_COLUMNS[modality])
        column = next((c for c in candidates if c in names), None)
        if column is None:
            raise DataError(
                f"dataset {name}: no input column found (looked for {list(candidates)}); columns {names}"
            )
        values += list(ds[column])
        raw = list(ds[label_column])
        labels += [label_names[v] if label_names and isinstance(v, int) else v for v in raw]
        splits += [split] * len(ds)
    return {"input": values, "label": labels, "split": splits if parts[0][0] else None}


# --------------------------------------------------------------------------------------------------
# Splitting, decoding


def _stratified_holdout(labels: list[str], fraction: float, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    splits = ["train"] * len(labels)
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    for label in sorted(by_class):
        index = rng.permutation(by_class[label])
        count = int(round(fraction * len(index)))
        count = max(count, 1) if len(index) > 1 else 0
        for i in index[:count]:
            splits[int(i)] = "test"
    return splits


def _decode(modality: str, value: Any, sampling_rate: int, max_seconds: float | None):
    if modality == "audio":
        audio, rate = read_audio(value, max_seconds=max_seconds * 2 if max_seconds else None)
        return resample_audio(audio, rate, sampling_rate)
    if modality == "vision":
        return read_image(value)
    if not isinstance(value, str):
        raise UnreadableError("unreadable", f"text values must be strings, got {type(value).__name__}")
    return value


def load_labelled_data(
    modality: str,
    *,
    embedded: bool = False,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    data_dir: str | os.PathLike | None = None,
    data_file: str | os.PathLike | None = None,
    label_column: str = "label",
    input_column: str | None = None,
    train_split: str = "train",
    test_split: str | None = "test",
    test_fraction: float = 0.2,
    max_examples: int | None = None,
    sampling_rate: int = 16000,
    max_seconds: float | None = 30.0,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> LabelledData:
    """Load, split and decode labelled data from exactly one source (see the module docstring).

    ``max_examples`` caps each split (a seeded random subset). Unreadable files are skipped and
    counted. Raises :class:`DataError` for a missing label or input column, fewer than two classes,
    or an empty split.
    """
    given = [n for n, v in (("embedded", embedded), ("dataset_name", dataset_name), ("data_dir", data_dir),
                            ("data_file", data_file)) if v]  # fmt: skip
    if len(given) != 1:
        raise DataError(f"give exactly one labelled data source, got {given or 'none'}")
    if embedded:
        folder = build_probe_set(modality)
        rows = _rows_from_folder(folder, modality, None, "label")
        source = f"embedded {modality} probe set ({folder})"
    elif dataset_name:
        rows = _rows_from_hub(
            dataset_name, dataset_config_name, modality, input_column, label_column, train_split, test_split,
            str(cache_dir) if cache_dir else None,
        )  # fmt: skip
        source = f"dataset {dataset_name}"
    elif data_dir:
        root = Path(data_dir)
        if not root.is_dir():
            raise DataError(f"labelled data folder {str(root)!r} does not exist")
        rows = _rows_from_folder(root, modality, input_column, label_column)
        source = str(root)
    else:
        path = Path(data_file)
        if not path.is_file():
            raise DataError(f"labelled data file {str(path)!r} does not exist")
        if path.suffix.lower() not in (".csv", ".json", ".jsonl"):
            raise DataError(f"{path}: a labelled manifest must be .csv, .json or .jsonl")
        rows = _rows_from_table(read_table(path), path.parent, modality, input_column, label_column)
        source = str(path)
    labels = [str(v) for v in rows["label"]]
    classes = sorted(set(labels), key=lambda c: (len(c), c) if c.isdigit() else (0, c))
    if len(classes) < 2:
        raise DataError(
            f"{source}: the label column holds a single class ({classes[0] if classes else 'none'}); "
            "a probe needs at least two classes"
        )
    splits = rows["split"] or _stratified_holdout(labels, test_fraction, seed)
    unknown = sorted({str(s) for s in splits} - {"train", "test"})
    if unknown:
        raise DataError(f"{source}: the split column may only hold 'train' and 'test', found {unknown}")
    class_id = {name: i for i, name in enumerate(classes)}
    skipped: Counter = Counter()
    result = {}
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        index = [i for i, s in enumerate(splits) if s == split]
        if max_examples is not None and len(index) > max_examples:
            index = sorted(rng.choice(index, size=max_examples, replace=False).tolist())
        values, ids = [], []
        for i in index:
            try:
                values.append(_decode(modality, rows["input"][i], sampling_rate, max_seconds))
            except UnreadableError as error:
                skipped[error.reason] += 1
                continue
            ids.append(class_id[labels[i]])
        if not values:
            raise DataError(f"{source}: the {split} split holds no usable example")
        result[split] = LabelledSplit(values, ids)
    data = LabelledData(modality, classes, result["train"], result["test"], source, skipped)
    if len(set(data.train.labels)) < 2:
        raise DataError(f"{source}: the training split holds a single class; a probe needs at least two")
    logger.info("probe data: %s", data.describe())
    return data
