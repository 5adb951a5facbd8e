"""Embedded labelled probe sets: one per modality, built offline from material already on the machine,
disjoint from the embedded pretraining corpora of :mod:`data2vec_hf.pretraining.data.corpora`.

Each is a folder with a ``metadata.csv`` (``file_name`` or ``text``, ``label``, ``split`` and where the
example comes from) and a ``probe_set.json`` describing classes, sizes and split. They are built like
the corpora (same cache root, ``$DATA2VEC_HF_CACHE/corpora/probe-*``; idempotent; a temporary folder
renamed into place, so racing processes are safe).

**speech** (``probe-speech``, "spoken animal words"): 12 classes, the words ``cat dog cow pig fox owl
bear wolf sheep goat frog bee`` — none of which occurs in the pretraining sentences — spoken in
isolation by espeak-ng. Speaker-independent split: 32 training speakers built on 16 espeak-ng voice
variants and 16 test speakers on 8 *other* variants (each speaker: a variant, an English accent, a
speed and a pitch); none of the 24 variants is used by the pretraining corpus. Every speaker says every
word once: 384 training and 192 test clips (0.4-1.1 s, 16 kHz; 7 min in all). Telling the words apart needs their
phonetic content; the speakers of the test set were never heard. Hand-crafted baseline: log-mel
statistics (mean and std over time of 40 log-mel bands).

**images** (``probe-images``, "printed digits"): 10 classes, the digits 0-9 *typeset* in Pillow's
embedded font (no font file needed) with random weight (regular/bold/heavy), slant, rotation (±15°),
size and position, in dark grey tones on light grey paper with pixel noise, 64x64. 48 training and 24
test images per class (480 / 240), drawn from separate random streams. The pretraining images are
scikit-learn's *handwritten* digits and crops of its two photographs: the same concept, another
source (like pretraining on one image collection and probing on another), and no image in common.
Baseline: raw pixels (16x16 RGB).

**text** (``probe-text``, "word order"): 2 balanced classes — an English sentence as written, or the
same words in a random order — all lower-cased and without punctuation, so that only the order of the
words tells them apart. The sentences (8-30 words) come from the docstrings of installed packages that
data2vec-hf depends on (``numpy``, ``pandas``, ``sympy``, ``networkx``, ``torch``, ``huggingface_hub``);
the pretraining text comes from Python's own documentation and standard library, never from
site-packages. Every sentence is used once. The split is by *source file* (a file's sentences are all
train or all test): 800 training and 400 test sentences (the sentences depend on the installed versions).
Telling them apart needs a representation of context, the thing masked prediction learns; a bag of
words is at chance by construction. Baseline: bag of words and word bigrams.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import random
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from data2vec_hf.pretraining.data.corpora import (
    METADATA_FILE,
    build_once,
    cache_root,
    english_voices,
    espeak_binary,
    split_paragraphs,
    synthesise,
)

DESCRIPTION_FILE = "probe_set.json"
PROBE_SETS = {"audio": "probe-speech", "vision": "probe-images", "text": "probe-text"}

SPEECH_WORDS = ("cat", "dog", "cow", "pig", "fox", "owl", "bear", "wolf", "sheep", "goat", "frog", "bee")
# espeak-ng voice variants (Debian's espeak-ng-data); the pretraining corpus uses m1-m5, m7, f1-f5, Andy,
# Annie and linda, so none of these
SPEECH_TRAIN_VARIANTS = (
    "m6", "m8", "adam", "benjamin", "caleb", "david", "edward", "iven",
    "john", "max", "norbert", "paul", "Alicia", "anika", "grandma", "steph2",
)  # fmt: skip
SPEECH_TEST_VARIANTS = ("michel", "quincy", "rob", "travis", "victor", "Andrea", "belinda", "shelby")

DIGITS = tuple("0123456789")

TEXT_PACKAGES = ("numpy", "pandas", "sympy", "networkx", "torch", "huggingface_hub")
_MARKUP = re.compile(r"[`{}\[\]<>|\\#@$*_=~^]|>>>|::|\.\.\s|https?:|\w\.\w+\(|\(\)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def default_probe_dir(modality: str) -> Path:
    """Default location of the embedded probe set of ``modality`` ("audio", "vision" or "text")."""
    return cache_root() / "corpora" / PROBE_SETS[modality]


def build_probe_set(modality: str, out_dir: str | os.PathLike | None = None, **kwargs) -> Path:
    """Build (or find) the embedded probe set of ``modality``; returns its folder."""
    builders = {
        "audio": build_speech_probe_set,
        "vision": build_image_probe_set,
        "text": build_text_probe_set,
    }
    if modality not in builders:
        raise ValueError(f"unknown modality {modality!r}; expected one of {sorted(builders)}")
    return builders[modality](out_dir, **kwargs)


def _write_metadata(folder: Path, rows: list[dict], description: dict) -> None:
    with open(folder / METADATA_FILE, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    sizes = defaultdict(int)
    for row in rows:
        sizes[row["split"]] += 1
    (folder / DESCRIPTION_FILE).write_text(json.dumps({**description, "sizes": dict(sizes)}, indent=1))


# ---------------------------------------------------------------------------------------------------
# Speech


def build_speech_probe_set(
    out_dir: str | os.PathLike | None = None,
    speakers_per_variant: int = 2,
    sampling_rate: int = 16000,
    seed: int = 0,
    num_workers: int = 4,
) -> Path:
    """Spoken animal words (12 classes) with a speaker-independent train/test split; see the module
    docstring. ``speakers_per_variant`` speakers are made from every voice variant (default: 32
    training and 16 test speakers, 576 clips; builds in a few seconds on 2 cores)."""
    binary = espeak_binary()
    params = {"speakers_per_variant": speakers_per_variant, "sampling_rate": sampling_rate, "seed": seed,
              "version": 1}  # fmt: skip
    out = Path(out_dir) if out_dir is not None else default_probe_dir("audio")

    def build(tmp: Path) -> None:
        rng = random.Random(seed)
        accents = english_voices(binary)
        jobs = []
        for split, variants in (("train", SPEECH_TRAIN_VARIANTS), ("test", SPEECH_TEST_VARIANTS)):
            for variant in variants:
                for copy in range(speakers_per_variant):
                    speaker = {
                        "speaker": f"{variant}-{copy}",
                        "voice": f"{rng.choice(accents)}+{variant}",
                        "speed": rng.randint(120, 200),
                        "pitch": rng.randint(25, 75),
                    }
                    for word in SPEECH_WORDS:
                        name = f"{split}_{variant}-{copy}_{word}.wav"
                        jobs.append(
                            {"file_name": name, "label": word, "split": split, "text": word, **speaker}
                        )
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            rows = list(pool.map(lambda job: synthesise(binary, job, tmp, sampling_rate), jobs))
        description = {
            "name": "spoken animal words",
            "modality": "audio",
            "classes": list(SPEECH_WORDS),
            "split": "speaker-independent: training and test speakers use disjoint espeak-ng voice variants",
            "train_variants": list(SPEECH_TRAIN_VARIANTS),
            "test_variants": list(SPEECH_TEST_VARIANTS),
            "baseline": "log-mel statistics",
        }
        _write_metadata(tmp, rows, description)

    return build_once(out, PROBE_SETS["audio"], params, build)


# ---------------------------------------------------------------------------------------------------
# Images


def draw_digit(digit: str, rng: np.random.Generator, size: int = 64):
    """One RGB PIL image of a printed ``digit``: Pillow's embedded font (FreeType), random stroke weight,
    slant, rotation, size and position, grey tones of dark ink on light paper, pixel noise."""
    from PIL import Image, ImageDraw, ImageFont

    scale = 4  # drawn large, then downsampled: anti-aliased edges
    big = size * scale
    # dark ink on light paper, as print (a random polarity would defeat every linear probe of pixels)
    paper, ink = rng.uniform(150, 255), rng.uniform(0, 100)
    font = ImageFont.load_default(size=int(rng.uniform(0.5, 0.85) * big))
    glyph = Image.new("L", (big, big), 0)
    weight = int(rng.integers(0, 3)) * scale  # regular, bold, heavy
    ImageDraw.Draw(glyph).text((big / 2, big / 2), digit, font=font, fill=255, anchor="mm",
                               stroke_width=weight, stroke_fill=255)  # fmt: skip
    shear = rng.uniform(-0.3, 0.3)  # upright or oblique
    glyph = glyph.transform(glyph.size, Image.AFFINE, (1, shear, -shear * big / 2, 0, 1, 0), Image.BICUBIC)
    glyph = glyph.rotate(rng.uniform(-15, 15), Image.BICUBIC)
    box = glyph.getbbox() or (0, 0, big, big)
    glyph = glyph.crop(box)
    canvas = Image.new("L", (big, big), 0)
    left = int(rng.integers(0, max(big - glyph.width, 0) + 1))
    top = int(rng.integers(0, max(big - glyph.height, 0) + 1))
    canvas.paste(glyph, (left, top))
    alpha = np.asarray(canvas.resize((size, size), Image.LANCZOS), dtype=np.float32) / 255
    grey = paper + (ink - paper) * alpha + rng.normal(0, 10, alpha.shape)
    return Image.fromarray(grey.clip(0, 255).astype(np.uint8)).convert("RGB")


def build_image_probe_set(
    out_dir: str | os.PathLike | None = None,
    train_per_class: int = 48,
    test_per_class: int = 24,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Printed digits (10 classes), ``size`` px PNG; see the module docstring. Training and test images
    come from separately seeded random streams (builds in about 3 s)."""
    import PIL

    # the glyphs are Pillow's embedded font, which a Pillow release may change (two machines, same code
    # and seeds, gave raw-pixel baselines of 9.2 % and 15.4 %): the version is part of the cache key
    params = {"train_per_class": train_per_class, "test_per_class": test_per_class, "size": size, "seed": seed,
              "version": 1, "pillow": PIL.__version__}  # fmt: skip
    out = Path(out_dir) if out_dir is not None else default_probe_dir("vision")

    def build(tmp: Path) -> None:
        rows = []
        for split, count, stream in (("train", train_per_class, 0), ("test", test_per_class, 1)):
            for digit in DIGITS:
                rng = np.random.default_rng([seed, stream, int(digit)])
                for i in range(count):
                    name = f"{split}/{digit}/{digit}_{i:04d}.png"
                    (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                    draw_digit(digit, rng, size).save(tmp / name, format="PNG")
                    rows.append({"file_name": name, "label": digit, "split": split})
        description = {
            "name": "printed digits",
            "modality": "vision",
            "classes": list(DIGITS),
            "split": "independent random draws (separately seeded streams) for train and test",
            "baseline": "raw pixels (16x16 RGB)",
            "rendered_with": f"Pillow {PIL.__version__} (its embedded font)",
        }
        _write_metadata(tmp, rows, description)

    return build_once(out, PROBE_SETS["vision"], params, build)


# ---------------------------------------------------------------------------------------------------
# Text

_DOCSTRING = re.compile(r'^[ \t]*[rRuU]?("""|\'\'\')(.*?)\1', re.DOTALL | re.MULTILINE)


def _clean_sentence(sentence: str) -> str | None:
    sentence = " ".join(sentence.split())
    words = sentence.split()
    if not 8 <= len(words) <= 30 or sentence[-1] not in ".!?" or not sentence[0].isupper():
        return None
    if _MARKUP.search(sentence):
        return None
    letters = sum(c.isalpha() or c.isspace() for c in sentence)
    return sentence if letters >= 0.9 * len(sentence) else None


def package_sentences(package: str) -> dict[str, list[str]]:
    """``{source file: [sentences]}`` of a package's docstrings (tests excluded), in file order."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"the text probe set reads the docstrings of {package}, which is not installed"
        )
    root = Path(spec.origin).parent
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if {"test", "tests", "testing"} & set(relative.parts):
            continue
        source = path.read_text(encoding="utf-8", errors="replace")
        sentences = []
        for match in _DOCSTRING.finditer(source):
            for paragraph in split_paragraphs(match.group(2)):
                cleaned = (_clean_sentence(s) for s in _SENTENCE_END.split(paragraph))
                sentences += filter(None, cleaned)
        if sentences:
            found[f"{package}/{relative.as_posix()}"] = sentences
    return found


def _is_test_file(source: str, test_share: int = 4) -> bool:
    """About one source file in ``test_share`` goes to the test split (fixed by a hash of its path)."""
    return hashlib.sha256(source.encode()).digest()[0] % test_share == 0


def plain_words(sentence: str) -> list[str]:
    """Lower-cased words without punctuation: both classes look alike but for the order of the words."""
    return re.findall(r"[a-z0-9]+(?:['-][a-z0-9]+)*", sentence.lower())


def build_text_probe_set(
    out_dir: str | os.PathLike | None = None,
    train_size: int = 800,
    test_size: int = 400,
    seed: int = 0,
    packages: tuple[str, ...] = TEXT_PACKAGES,
) -> Path:
    """Original vs word-shuffled docstring sentences of ``packages`` (2 balanced classes), split by
    source file; see the module docstring (builds in 5-10 s on 2 cores: it reads every docstring)."""
    params = {"train_size": train_size, "test_size": test_size, "seed": seed, "packages": list(packages),
              "version": 2}  # fmt: skip
    out = Path(out_dir) if out_dir is not None else default_probe_dir("text")

    def build(tmp: Path) -> None:
        pools: dict[str, dict[str, str]] = {"train": {}, "test": {}}
        for package in packages:
            for source, sentences in package_sentences(package).items():
                split = "test" if _is_test_file(source) else "train"
                for sentence in sentences:
                    words = plain_words(sentence)
                    if len(words) >= 8:
                        pools[split].setdefault(" ".join(words), source)
        rng = random.Random(seed)
        rows = []
        for split, count in (("train", train_size), ("test", test_size)):
            chosen = rng.sample(sorted(pools[split].items()), min(count, len(pools[split])))
            for i, (text, source) in enumerate(chosen):
                label = ("original", "shuffled")[i % 2]
                if label == "shuffled":
                    words = text.split()
                    while " ".join(words) == text:
                        rng.shuffle(words)
                    text = " ".join(words)
                rows.append({"text": text, "label": label, "split": split, "source": source})
        description = {
            "name": "word order: original or shuffled sentence",
            "modality": "text",
            "classes": ["original", "shuffled"],
            "packages": list(packages),
            "split": "by source file (hash of the file's path): no test sentence comes from a training file",
            "baseline": "bag of words and word bigrams",
        }
        _write_metadata(tmp, rows, description)

    return build_once(out, PROBE_SETS["text"], params, build)
