"""Embedded default corpora, built offline on the spot from material already on the machine.

With no dataset argument the pretraining scripts train on one of these small but *real* corpora:

- speech: English sentences taken from Python's own documentation, spoken by Debian's ``espeak-ng``
  with several accents, voice variants, speeds and pitches; 16 kHz mono wav files plus a
  ``metadata.csv`` (``file_name``, ``transcription``, ...) whose transcripts serve ASR fine-tuning.
- images: an image folder (one sub-folder per class, PNG) made of scikit-learn's handwritten
  ``load_digits`` (8x8, upscaled) and random crops of its two ``load_sample_images`` photographs.
- text: one paragraph per line of English prose from the Python reference documentation that ships
  with the interpreter (``pydoc_data.topics``) and the docstrings of the standard library sources.

Every builder writes into a temporary sibling directory and renames it into place, so it is safe when
several processes race; a ``.corpus.json`` marker records the parameters and the builder returns the
existing corpus unchanged when the parameters match (idempotent). The cache root is
``$DATA2VEC_HF_CACHE/corpora`` (default ``~/.cache/data2vec_hf/corpora``).
"""

from __future__ import annotations

import csv
import inspect
import json
import os
import random
import re
import shutil
import subprocess
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from math import gcd
from pathlib import Path

import numpy as np
from data2vec_hf.atomic import replace_path

MARKER = ".corpus.json"
METADATA_FILE = "metadata.csv"
TEXT_FILE = "train.txt"

# espeak-ng accents (gmw voices shipped by Debian's espeak-ng-data) and voice variants ("voice+variant").
ESPEAK_VOICES = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f4", "f5", "Andy", "Annie", "linda")
ESPEAK_RATE = 22050  # what espeak-ng writes

_CODE_HINT = re.compile(r">>>|[{}\\|#@$]|==|\w=|=\w|\b(def|class|import|return)\s+\w+\s*[(:]")
_DOCSTRING = re.compile(r'^[ \t]*[rRuU]?("""|\'\'\')(.*?)\1', re.DOTALL | re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_SPEAKABLE = re.compile(r"[A-Za-z][A-Za-z ,;'-]*[a-z][.?!]")


class MissingSystemDependencyError(RuntimeError):
    """A system program the embedded corpus needs is not installed."""


def cache_root() -> Path:
    """Root of data2vec_hf's caches: ``$DATA2VEC_HF_CACHE`` or ``~/.cache/data2vec_hf``."""
    return Path(os.environ.get("DATA2VEC_HF_CACHE", Path.home() / ".cache" / "data2vec_hf")).expanduser()


def default_corpus_dir(name: str) -> Path:
    """Default location of the embedded corpus ``name`` ("speech", "images" or "text")."""
    return cache_root() / "corpora" / name


# ---------------------------------------------------------------------------------------------------
# Idempotent, race-safe directory building


def _read_marker(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None


def build_once(
    out_dir: str | os.PathLike | None, name: str, params: dict, build: Callable[[Path], None]
) -> Path:
    """Run ``build(tmp_dir)`` unless ``out_dir`` already holds a corpus built with ``params``."""
    out = Path(out_dir).expanduser() if out_dir is not None else default_corpus_dir(name)
    params = {"corpus": name, **params}
    if _read_marker(out) == params:
        return out
    if out.exists() and any(out.iterdir()) and _read_marker(out) is None:
        raise FileExistsError(
            f"{out} exists and is not a corpus built by data2vec_hf; choose an empty or new directory."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        build(tmp)
        (tmp / MARKER).write_text(json.dumps(params, indent=1))
        if out.exists():  # an older build with other parameters (ours: it has a marker) or empty
            if _read_marker(out) == params:  # another process finished first
                return out
        replace_path(tmp, out)
    except OSError:
        if _read_marker(out) != params:
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------------
# Real English text shipped with Python


def _clean_paragraph(lines: list[str]) -> str | None:
    """Join a paragraph's lines, or ``None`` when it looks like code, a list, a heading or a fragment."""
    lines = [line for line in lines if line.strip() and not re.fullmatch(r"\s*[-=*~^#]{3,}\s*", line)]
    if not lines or any(line[:1].isspace() for line in lines):  # indented: code block or list
        return None
    text = " ".join(line.strip() for line in lines)
    if _CODE_HINT.search(text) or len(text.split()) < 6 or text[-1] not in ".?!:":
        return None
    letters = sum(c.isalpha() or c.isspace() for c in text)
    return text if letters >= 0.85 * len(text) else None


def split_paragraphs(text: str) -> Iterator[str]:
    for block in re.split(r"\n\s*\n", inspect.cleandoc(text)):
        paragraph = _clean_paragraph(block.splitlines())
        if paragraph:
            yield paragraph


def _stdlib_texts() -> Iterator[str]:
    """Python's reference documentation topics, then stdlib docstrings in a fixed file order."""
    from pydoc_data.topics import topics  # the "help()" text of the Python reference manual

    for key in sorted(topics):
        yield topics[key]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idlelib", "pydoc_data", "lib2to3"}
    for path in sorted(stdlib.rglob("*.py")):
        if skip.isdisjoint(path.relative_to(stdlib).parts):
            source = path.read_text(encoding="utf-8", errors="replace")
            yield from (match.group(2) for match in _DOCSTRING.finditer(source))


def english_paragraphs() -> Iterator[str]:
    """Cleaned, de-duplicated English paragraphs from the documentation that ships with Python."""
    seen: set[str] = set()
    for text in _stdlib_texts():
        for paragraph in split_paragraphs(text):
            if paragraph not in seen:
                seen.add(paragraph)
                yield paragraph


def english_sentences(min_words: int = 5, max_words: int = 22) -> Iterator[str]:
    """Plain, speakable sentences (letters and light punctuation only, no digits or acronyms)."""
    for paragraph in english_paragraphs():
        for sentence in _SENTENCE_END.split(paragraph):
            words = sentence.split()
            if (
                min_words <= len(words) <= max_words
                and _SPEAKABLE.fullmatch(sentence)
                and not any(sum(c.isupper() for c in w) > 1 for w in words)
            ):
                yield sentence


def normalize_transcript(sentence: str) -> str:
    """LibriSpeech-style transcript: upper-case letters, apostrophes and single spaces."""
    return " ".join(re.sub(r"[^A-Z' ]", " ", sentence.upper().replace("-", " ")).split())


# ---------------------------------------------------------------------------------------------------
# Speech


def espeak_binary() -> str:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise MissingSystemDependencyError(
            "The embedded speech corpus is synthesised with espeak-ng, which is not installed. "
            "Install it with `apt-get install espeak-ng` (or `make system-deps`), or pass a dataset "
            "(--dataset_name / --train_dir / --train_file)."
        )
    return binary


def english_voices(binary: str) -> list[str]:
    """The accents of ``ESPEAK_VOICES`` this espeak-ng installation has (``en`` if none)."""
    listing = subprocess.run([binary, "--voices=en"], capture_output=True, text=True, timeout=30).stdout
    installed = {line.split()[1] for line in listing.splitlines()[1:] if len(line.split()) > 1}
    return [voice for voice in ESPEAK_VOICES if voice in installed] or ["en"]


def resample_audio(audio: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling (``scipy.signal.resample_poly``, anti-aliased) along the first axis."""
    if orig_rate == target_rate:
        return audio
    from scipy.signal import resample_poly

    factor = gcd(orig_rate, target_rate)
    out = resample_poly(audio, target_rate // factor, orig_rate // factor, axis=0)
    return out.astype(np.float32, copy=False)


def synthesise(binary: str, job: dict, tmp: Path, sampling_rate: int) -> dict:
    import soundfile as sf

    raw = tmp / f"{job['file_name']}.espeak.wav"
    cmd = [binary, "-v", job["voice"], "-s", str(job["speed"]), "-p", str(job["pitch"]), "-w", str(raw)]
    subprocess.run([*cmd, job["text"]], check=True, capture_output=True, timeout=60)
    audio, rate = sf.read(raw, dtype="float32")
    raw.unlink()
    audio = resample_audio(audio, rate, sampling_rate)
    sf.write(tmp / job["file_name"], audio, sampling_rate, subtype="PCM_16")
    return {**job, "num_samples": len(audio)}


def build_speech_corpus(
    out_dir: str | os.PathLike | None = None,
    num_clips: int = 256,
    sampling_rate: int = 16000,
    seed: int = 0,
    num_workers: int = 4,
) -> Path:
    """Synthesise ``num_clips`` spoken English sentences into ``out_dir``; return the folder.

    The folder holds ``clip_00000.wav`` ... (mono, 16-bit PCM, ``sampling_rate`` Hz; espeak-ng's
    22050 Hz output is resampled with ``resample_poly``) and ``metadata.csv`` with the columns
    ``file_name, transcription, text, voice, speed, pitch, num_samples``. ``transcription`` is the
    sentence upper-cased without punctuation (LibriSpeech style). Sentences come from Python's
    documentation, each spoken once by a random accent+variant at a random speed (120-200 wpm) and
    pitch (25-75). The default 256 clips (1.4-10.6 s, 4.2 s on average, 18 min in all, 34 MB) build in
    4-8 s on 2 cores (measured; 4 clips take ~2 s, mostly collecting the sentences).
    """
    binary = espeak_binary()
    params = {"num_clips": num_clips, "sampling_rate": sampling_rate, "seed": seed, "version": 1}

    def build(tmp: Path) -> None:
        rng = random.Random(seed)
        voices = english_voices(binary)
        sentences = list(dict.fromkeys(english_sentences()))
        if len(sentences) < num_clips:
            raise ValueError(f"only {len(sentences)} sentences are available, asked for {num_clips} clips")
        jobs = [
            {
                "file_name": f"clip_{i:05d}.wav",
                "transcription": normalize_transcript(text),
                "text": text,
                "voice": f"{rng.choice(voices)}+{rng.choice(ESPEAK_VARIANTS)}",
                "speed": rng.randint(120, 200),
                "pitch": rng.randint(25, 75),
            }
            for i, text in enumerate(rng.sample(sentences, num_clips))
        ]
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            rows = list(pool.map(lambda job: synthesise(binary, job, tmp, sampling_rate), jobs))
        with open(tmp / METADATA_FILE, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    return build_once(out_dir, "speech", params, build)


# ---------------------------------------------------------------------------------------------------
# Images


def build_image_corpus(
    out_dir: str | os.PathLike | None = None,
    num_digits: int = 1797,
    crops_per_photo: int = 200,
    digit_size: int = 64,
    crop_size: int = 128,
    seed: int = 0,
) -> Path:
    """Write an image folder (``<class>/<name>.png``) of real images shipped with scikit-learn.

    Classes ``digit_0`` ... ``digit_9``: the first ``num_digits`` of the 1797 8x8 handwritten digits
    of ``load_digits``, upscaled (bicubic) to ``digit_size``. Classes ``china`` and ``flower``:
    ``crops_per_photo`` random square crops (side 64 px to full height) of each 427x640 photograph of
    ``load_sample_images``, resized to ``crop_size``. The default (2197 PNG images, 14 MB) builds in
    3-6 s on 2 cores (measured).
    """
    params = {
        "num_digits": num_digits,
        "crops_per_photo": crops_per_photo,
        "digit_size": digit_size,
        "crop_size": crop_size,
        "seed": seed,
        "version": 1,
    }

    def build(tmp: Path) -> None:
        from PIL import Image
        from sklearn.datasets import load_digits, load_sample_images

        digits = load_digits()
        for i in range(min(num_digits, len(digits.images))):
            pixels = (digits.images[i] * (255.0 / 16.0)).round().astype(np.uint8)
            image = Image.fromarray(pixels, mode="L").resize((digit_size,) * 2, Image.BICUBIC)
            _save_png(image, tmp / f"digit_{digits.target[i]}" / f"digit_{i:04d}.png")
        rng = np.random.default_rng(seed)
        photos = load_sample_images()
        for name, photo in zip(("china", "flower"), photos.images):
            height, width = photo.shape[:2]
            for i in range(crops_per_photo):
                side = int(rng.integers(64, min(height, width) + 1))
                top, left = (int(rng.integers(0, dim - side + 1)) for dim in (height, width))
                crop = Image.fromarray(photo[top : top + side, left : left + side])
                _save_png(crop.resize((crop_size,) * 2, Image.BICUBIC), tmp / name / f"{name}_{i:04d}.png")

    return build_once(out_dir, "images", params, build)


def _save_png(image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


# ---------------------------------------------------------------------------------------------------
# Text


def build_text_corpus(out_dir: str | os.PathLike | None = None, max_bytes: int = 3_000_000) -> Path:
    """Write ``train.txt`` (one paragraph per line) of Python's own English documentation; return it.

    Paragraphs come from ``pydoc_data.topics`` (the Python reference manual) and the docstrings of
    the standard-library sources, with code, lists, headings and fragments removed and duplicates
    dropped, up to ``max_bytes`` bytes. On Python 3.11 the whole supply is 1.1 MB / 8738 paragraphs,
    built in 1-2 s on 2 cores (measured). Returns the path of the text file (pass it as ``train_file``).
    """
    params = {"max_bytes": max_bytes, "version": 1}

    def build(tmp: Path) -> None:
        size = 0
        with open(tmp / TEXT_FILE, "w", encoding="utf-8") as f:
            for paragraph in english_paragraphs():
                size += len(paragraph.encode("utf-8")) + 1
                if size > max_bytes:
                    break
                f.write(paragraph + "\n")

    return build_once(out_dir, "text", params, build) / TEXT_FILE
