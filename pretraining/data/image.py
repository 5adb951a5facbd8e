"""Images: read and decode pictures (skipping unreadable ones), the pretraining transform, and the collator."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import Dataset, IterableDataset

from .common import DataStats, UnreadableError, as_tensor, cached_map, keep_usable, open_source, source_name
from .sources import check_column_type, column_names, disable_decoding, resolve_column

logger = logging.getLogger(__name__)


IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


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
    source = open_source(value)
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
        return {"status": error.reason, "source": source_name(value)}
    return {"status": "ok", "source": source_name(value)}


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
    raw = disable_decoding(raw)
    column = resolve_column(raw, image_column, "vision")
    check_column_type(raw, column, "vision")
    stats = DataStats("vision", streaming=isinstance(raw, IterableDataset))
    if stats.streaming:
        apply = functools.partial(_transform_image, transform=transform)
        ds = raw.map(apply, input_columns=[column], remove_columns=column_names(raw))
        return keep_usable(ds, stats), stats
    ds = cached_map(
        raw, "map", _image_status, cache_dir=cache_dir, num_proc=num_proc, desc="Checking images",
        input_columns=[column],
    )  # fmt: skip
    ds = keep_usable(ds, stats)
    logger.info(stats.summary())
    return ds.with_transform(functools.partial(_transform_batch, column=column, transform=transform)), stats


@dataclass
class ImageCollator:
    """Stacks ``pixel_values`` (tensors or arrays, 3 x H x W) into a float32 batch."""

    def __call__(self, examples: Sequence[dict[str, Any]], generators=None) -> dict[str, torch.Tensor]:
        pixels = [as_tensor(e["pixel_values"], np.float32) for e in examples]
        return {"pixel_values": torch.stack(pixels)}
