"""The text side of the pretraining data pipeline: tokenizers, packing into blocks, the collator.

Lines that are empty, or that hold nothing but special tokens, are dropped and counted: they give the
model nothing to mask. (Raw files are checked for UTF-8 by :mod:`.text_files` when they are loaded.)
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, IterableDataset

from .common import (
    DataError,
    DataStats,
    as_tensor,
    cached_map,
    ensure_usable_stream,
    pad_sequences,
)
from .sources import check_column_type, column_names, resolve_column

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0, 1, 2, 3 as RoBERTa; "<mask>" is the last id


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: str | os.PathLike | None = None,
    *,
    min_frequency: int = 2,
    model_max_length: int = 512,
):
    """Train a byte-level BPE tokenizer (RoBERTa-style) and wrap it as ``PreTrainedTokenizerFast``.

    Specials: ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3 and ``<mask>`` = the last id (as RoBERTa);
    a small corpus can yield fewer merges than asked, so size the model's vocabulary with
    ``len(tokenizer)``. ``tokenizer(text)`` adds ``<s> ... </s>``. Saved with ``save_pretrained(out_dir)``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((t for t in texts if t.strip()), trainer)
    tokenizer.add_special_tokens(["<mask>"])
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_max_length=model_max_length,
    )
    if out_dir is not None:
        wrapped.save_pretrained(out_dir)
    return wrapped


def _texts(ds: Dataset | IterableDataset, column: str, max_lines: int | None) -> Iterator[str]:
    for i, example in enumerate(ds.select_columns([column])):
        if max_lines is not None and i >= max_lines:
            return
        yield example[column] or ""


def load_or_train_tokenizer(
    tokenizer_name_or_path: str | os.PathLike | None,
    raw: Dataset | IterableDataset,
    out_dir: str | os.PathLike,
    *,
    vocab_size: int = 8192,
    text_column: str | None = None,
    max_lines: int | None = 1_000_000,
):
    """The named tokenizer; else the one already trained in ``out_dir`` (resume); else train a byte-level
    BPE on the first ``max_lines`` lines of ``raw`` and save it to ``out_dir``."""
    from transformers import AutoTokenizer

    if tokenizer_name_or_path:
        return AutoTokenizer.from_pretrained(tokenizer_name_or_path)
    if (Path(out_dir) / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(out_dir)
    column = resolve_column(raw, text_column, "text")
    train_bpe_tokenizer(_texts(raw, column, max_lines), vocab_size, out_dir)
    return AutoTokenizer.from_pretrained(out_dir)  # the same object type as on resume (stable cache hashes)


def _not_empty(lines: list[str | None]) -> list[bool]:
    return [bool(line and line.strip()) for line in lines]


LONG_LINE = 100_000  # characters; longer lines are tokenized in pieces cut before a space


def _pieces(line: str) -> list[str]:
    """A very long line (a 10 MB one-line file) in pieces of about :data:`LONG_LINE` characters, cut
    right before a space so that the byte-level tokenizer splits them as it would the whole line;
    the tokenizer then works on them in parallel."""
    pieces, start = [], 0
    while len(line) - start > LONG_LINE:
        cut = line.find(" ", start + LONG_LINE)
        if cut < 0:
            break
        pieces.append(line[start:cut])
        start = cut
    pieces.append(line[start:])
    return pieces


def _tokenize(lines: list[str], tokenizer: Any) -> dict[str, list]:
    pieces = [_pieces(line) for line in lines]
    flat = tokenizer([p for line in pieces for p in line], add_special_tokens=False, verbose=False)[
        "input_ids"
    ]
    ids, position = [], 0
    for line in pieces:
        ids.append([token for piece in flat[position : position + len(line)] for token in piece])
        position += len(line)
    return {"ids": ids}


def _has_content(ids: list[list[int]], special: frozenset[int]) -> list[bool]:
    """Lines with at least one token that is not a special token (only those can be masked)."""
    return [any(token not in special for token in line) for line in ids]


def _group(ids: list[list[int]], block_size: int, bos: int, eos: int) -> dict[str, list]:
    """Join tokenized lines with ``</s>`` and cut the stream into ``<s> ... </s>`` blocks."""
    stream = [token for line in ids for token in (*line, eos)]
    body = block_size - 2
    chunks = (stream[i : i + body] for i in range(0, len(stream), body))
    return {"input_ids": [[bos, *chunk] + ([eos] if chunk[-1] != eos else []) for chunk in chunks]}


def _special_ids(tokenizer: Any) -> tuple[int, int]:
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    missing = [
        n for n, i in (("bos/cls", bos), ("eos/sep", eos), ("pad", tokenizer.pad_token_id)) if i is None
    ]
    if tokenizer.mask_token_id is None:
        missing.append("mask")
    if missing:
        raise DataError(
            f"the tokenizer has no {', '.join(missing)} token; data2vec text pretraining needs them"
        )
    return bos, eos


def prepare_text_dataset(
    raw: Dataset | IterableDataset,
    tokenizer: Any,
    *,
    max_seq_length: int = 512,
    text_column: str | None = None,
    num_proc: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    undecodable_lines: int = 0,
) -> tuple[Dataset | IterableDataset, DataStats]:
    """Drop empty lines and lines of special tokens only (counted), tokenize, and pack the token stream
    into ``<s> ... </s>`` blocks of at most ``max_seq_length`` tokens (lines separated by ``</s>``).
    Examples carry ``input_ids``. ``undecodable_lines`` (dropped earlier by :func:`ensure_utf8`) is
    counted in the statistics."""
    if max_seq_length < 3:
        raise DataError(f"max_seq_length must be at least 3, got {max_seq_length}")
    column = resolve_column(raw, text_column, "text")
    check_column_type(raw, column, "text")
    bos, eos = _special_ids(tokenizer)
    stats = DataStats("text", streaming=isinstance(raw, IterableDataset))
    if undecodable_lines:
        stats.skipped["undecodable"] = undecodable_lines
    special = frozenset(tokenizer.all_special_ids)
    tokenize = functools.partial(_tokenize, tokenizer=tokenizer)
    if stats.streaming:
        tokens = _tokenized_stream(raw, column, tokenize, special, stats)
    else:
        tokens = _tokenized_table(raw, column, tokenize, special, stats, cache_dir, num_proc)
    group = functools.partial(_group, block_size=max_seq_length, bos=bos, eos=eos)
    blocks = cached_map(
        tokens, "map", group, cache_dir=cache_dir, num_proc=num_proc, desc="Packing into blocks",
        # (the columns are known: listing them from a stream would run it, and its counting filters, once more)
        input_columns=["ids"], batched=True, remove_columns=[*column_names(raw), "ids"],
    )  # fmt: skip
    if stats.streaming:
        ensure_usable_stream(blocks, stats, f"no text left to train on in column {column!r}")
    else:
        if len(blocks) == 0:
            raise DataError(f"no text left to train on: {stats.summary()}")
        stats.notes["blocks"] = len(blocks)
        logger.info(stats.summary())
    return blocks, stats


def _tokenized_stream(raw, column: str, tokenize, special: frozenset, stats: DataStats):
    """A stream's lines, without the empty ones and those of special tokens only (counted as read)."""
    lines = raw.filter(
        lambda line: stats.record("ok" if _not_empty([line])[0] else "empty"), input_columns=[column]
    )
    tokens = lines.map(tokenize, input_columns=[column], batched=True)
    return tokens.filter(
        lambda ids: _has_content([ids], special)[0] or not stats.skip("only_special_tokens"),
        input_columns=["ids"],
    )


def _tokenized_table(raw, column: str, tokenize, special: frozenset, stats: DataStats, cache_dir, num_proc):
    """A table's lines tokenized (cached), without the empty ones and those of special tokens only."""
    lines = cached_map(
        raw, "filter", _not_empty, cache_dir=cache_dir, num_proc=num_proc, desc="Dropping empty lines",
        input_columns=[column], batched=True,
    )  # fmt: skip
    if len(raw) > len(lines):
        stats.skipped["empty"] = len(raw) - len(lines)
    if len(lines) == 0:  # (a map over no rows adds no column: the steps below cannot run)
        raise DataError(
            f"no text left to train on: column {column!r} holds only empty lines ({stats.summary()})"
        )
    tokens = cached_map(
        lines, "map", tokenize, cache_dir=cache_dir, num_proc=num_proc, desc="Tokenizing",
        input_columns=[column], batched=True,
    )  # fmt: skip
    with_content = cached_map(
        tokens, "filter", functools.partial(_has_content, special=special), cache_dir=cache_dir,
        num_proc=num_proc, desc="Dropping lines of special tokens only", input_columns=["ids"], batched=True,
    )  # fmt: skip
    if len(tokens) > len(with_content):
        stats.skipped["only_special_tokens"] = len(tokens) - len(with_content)
    stats.kept = len(with_content)
    return with_content


@dataclass
class TextCollator:
    """Pads ``input_ids`` with ``pad_token_id``; returns ``input_ids`` and ``attention_mask`` (long)."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: Sequence[dict[str, Any]], generators=None) -> dict[str, torch.Tensor]:
        ids = [as_tensor(e["input_ids"], np.int64) for e in examples]
        input_ids, attention_mask = pad_sequences(ids, self.pad_token_id, self.pad_to_multiple_of)
        return {"input_ids": input_ids, "attention_mask": attention_mask}
