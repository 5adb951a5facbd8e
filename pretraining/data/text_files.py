"""Raw text files before they are loaded: must be UTF-8, and hold something.

A file that is not UTF-8 is a :class:`~data2vec_hf.pretraining.data.common.DataError` naming the file,
the line and the byte offset, or — with ``skip_undecodable_lines`` — its undecodable lines are dropped
(from a cleaned copy in the preprocessing cache) and counted.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from data2vec_hf.atomic import atomic_file

from .common import DataError, preprocess_dir

logger = logging.getLogger(__name__)

UTF8_CHUNK = 1 << 20


def first_undecodable_line(path: Path) -> tuple[int, int, str] | None:
    """``(line number, byte offset, reason)`` of the first bytes of a file that are not UTF-8, or None.
    Reads the file in chunks (a single 10 MB line is fine)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1
    with open(path, "rb") as handle:
        while chunk := handle.read(UTF8_CHUNK):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                position = offset + error.start
                return line + chunk[: error.start].count(b"\n"), position, error.reason
            offset += len(chunk)
            line += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as error:
            return line, offset, f"{error.reason} at the end of the file"
    return None


def ensure_utf8(
    files: Sequence[Path], skip_undecodable_lines: bool, cache_dir: str | os.PathLike | None
) -> tuple[list[Path], int]:
    """The text files to read, and how many lines were dropped for not decoding.

    A file that is not valid UTF-8 raises :class:`DataError` naming it; with ``skip_undecodable_lines``
    a cleaned copy without those lines is written to the preprocessing cache and read instead.
    """
    result, dropped = [], 0
    for path in files:
        problem = first_undecodable_line(path)
        if problem is None:
            result.append(path)
            continue
        line, offset, reason = problem
        if not skip_undecodable_lines:
            raise DataError(
                f"text file {str(path)!r} is not valid UTF-8 ({reason} at line {line}, byte {offset}); "
                "convert it (e.g. `iconv -f latin1 -t utf-8`) or pass --skip_undecodable_lines to drop "
                "the lines that do not decode"
            )
        cleaned, count = _without_undecodable_lines(path, cache_dir)
        logger.warning("%s: dropped %d line(s) that are not valid UTF-8", path, count)
        result.append(cleaned)
        dropped += count
    return result, dropped


def holds_text(path: Path) -> bool:
    """Whether a text file holds anything but whitespace (reads only up to its first such byte)."""
    with open(path, "rb") as handle:
        while chunk := handle.read(UTF8_CHUNK):
            if chunk.strip():
                return True
    return False


def _without_undecodable_lines(path: Path, cache_dir: str | os.PathLike | None) -> tuple[Path, int]:
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cleaned = preprocess_dir(cache_dir) / f"utf8-{key}-{path.name}"
    count = 0
    # atomic: several processes may clean the same file
    with atomic_file(cleaned) as temporary, open(path, "rb") as source, open(temporary, "wb") as target:
        for raw in source:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                count += 1
                continue
            target.write(raw)
    return cleaned, count
