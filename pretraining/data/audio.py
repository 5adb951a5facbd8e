"""Audio: read and decode clips, resample, normalise, and collate them into cropped or padded batches.

Audio is decoded with ``soundfile``, down-mixed to mono and **resampled** to the target rate with
``scipy.signal.resample_poly`` when its rate differs (counted as ``resampled``), then optionally
normalised to zero mean and unit variance per clip as fairseq's ``normalize: true``. Clips shorter than
``min_samples`` are skipped and counted. :class:`AudioCollator` crops a batch to its shortest clip, as
fairseq's collater does (or pads it), with a fresh random offset each time a clip is drawn.

Typical use in a script (preprocessing runs once on the main process and is cached; the other
processes then read the cache)::

    with accelerator.main_process_first():
        raw = load_raw_dataset("audio", **data_source_kwargs(args))
        train_set, stats = prepare_audio_dataset(raw, sampling_rate=16000, min_samples=400)
    logger.info(stats.summary())
    loader = DataLoader(train_set, collate_fn=AudioCollator(max_samples=250_000), ...)"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import torch
from datasets import Dataset, IterableDataset

from .common import (
    DataStats,
    UnreadableError,
    as_tensor,
    cached_map,
    keep_usable,
    open_source,
    pad_sequences,
    source_name,
)
from .corpora import resample_audio
from .sources import check_column_type, column_names, disable_decoding, resolve_column

logger = logging.getLogger(__name__)


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

        source = open_source(value)
        try:
            with sf.SoundFile(source) as handle:
                rate = handle.samplerate
                window = int(max_seconds * rate) if max_seconds else None
                if window is not None and handle.frames > window:
                    handle.seek(_window_start(source_name(value), handle.frames - window))
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


def zero_mean_unit_var(audio: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Per-clip normalisation, as fairseq's ``normalize: true`` (``F.layer_norm(wav, wav.shape)``)."""
    return ((audio - audio.mean()) / np.sqrt(audio.var() + eps)).astype(np.float32)


def _decode_audio(
    value: Any, sampling_rate: int, min_samples: int, normalize: bool, max_seconds: float | None
) -> dict[str, Any]:
    empty = np.zeros(0, dtype=np.float32)
    source = source_name(value)
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
    raw = disable_decoding(raw)
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
    ds = cached_map(
        raw, "map", decode, cache_dir=cache_dir, num_proc=num_proc, desc="Decoding audio",
        input_columns=[column], remove_columns=column_names(raw), features=features,
    )  # fmt: skip
    stats = DataStats("audio", streaming=isinstance(ds, IterableDataset))
    ds = keep_usable(ds, stats)
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
        clips = [as_tensor(e["input_values"], np.float32) for e in examples]
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
