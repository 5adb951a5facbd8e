#!/usr/bin/env python
"""data2vec vision pretraining: ``accelerate launch pretraining/pretrain_vision.py --output_dir DIR [...]``.

Images are decoded with PIL (corrupt files skipped and counted) and augmented as the released recipes
do, with timm: random resized crop (scale 0.08-1 for version 1, 0.2-1 for 2), horizontal flip and, for
version 1, colour jitter 0.4. See ``--help`` for every flag.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from data2vec_hf import Data2VecVisionForPreTraining
from data2vec_hf.data2vec2_vision import Data2Vec2VisionForPreTraining, sample_vision_masks_v2
from data2vec_hf.data2vec_vision import sample_vision_masks
from data2vec_hf.pretraining.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageCollator,
    build_image_transform,
    data_source_kwargs,
    load_raw_dataset,
    prepare_image_dataset,
)
from data2vec_hf.pretraining.spec import ModalitySpec
from data2vec_hf.pretraining.trainer import run
from transformers import BeitImageProcessor


@dataclass
class VisionArguments:
    """The vision script's flags; those left None are filled from the recipe of ``--version``."""

    _argument_group_name = "vision"

    image_column: str | None = field(
        default=None, metadata={"help": "image column (default: image/img/file_name/path)"}
    )
    crop_min_scale: float | None = field(
        default=None, metadata={"help": "smallest area fraction of the random resized crop"}
    )
    color_jitter: float | None = field(
        default=None, metadata={"help": "brightness/contrast/saturation jitter strength, 0 = none"}
    )
    hflip: float = field(default=0.5, metadata={"help": "horizontal flip probability"})


add_arguments = VisionArguments  # the spec's hook: build_parser parses the dataclass's fields as flags


def build_data(args, config, accelerator):
    size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    transform = build_image_transform(
        size, crop_scale=(args.crop_min_scale, 1.0), hflip=args.hflip, color_jitter=args.color_jitter
    )
    raw = load_raw_dataset("vision", **data_source_kwargs(args))
    dataset, stats = prepare_image_dataset(
        raw,
        transform,
        image_column=args.image_column,
        num_proc=args.preprocessing_num_workers,
        cache_dir=args.cache_dir,
    )
    if args.max_train_samples is not None and not stats.streaming:
        dataset = dataset.select(range(min(args.max_train_samples, len(dataset))))
    processor = BeitImageProcessor(
        size={"height": size, "width": size},
        do_center_crop=False,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )
    return dataset, ImageCollator(), processor


SPEC = ModalitySpec(
    name="vision",
    model_classes={1: Data2VecVisionForPreTraining, 2: Data2Vec2VisionForPreTraining},
    defaults={
        1: dict(
            # fairseq examples/data2vec/config/vision/pretraining/base_imagenet_d2v1.yaml
            learning_rate=5e-4,
            weight_decay=0.05,
            adam_beta1=0.9,
            adam_beta2=0.999,
            adam_epsilon=1e-8,
            max_grad_norm=3.0,
            lr_scheduler_type="cosine",
            warmup_fraction=12510 / 375300,
            crop_min_scale=0.08,  # RandomResizedCrop's default scale (0.08, 1)
            color_jitter=0.4,  # ColorJitter(0.4, 0.4, 0.4)
        ),
        2: dict(
            # fairseq examples/data2vec/config/v2/base_images_only_task.yaml
            learning_rate=1e-3,
            weight_decay=0.05,
            adam_beta1=0.9,
            adam_beta2=0.95,
            adam_epsilon=1e-8,
            max_grad_norm=4.0,
            lr_scheduler_type="cosine",
            warmup_fraction=50040 / 375300,
            crop_min_scale=0.2,  # MaeImageDataset: RandomResizedCrop(scale=(0.2, 1.0))
            color_jitter=0.0,
        ),
    },
    add_arguments=add_arguments,
    build_data=build_data,
    sample_masks={1: sample_vision_masks, 2: sample_vision_masks_v2},
)


def main(argv=None) -> int:
    return run(SPEC, argv)


if __name__ == "__main__":
    sys.exit(main())
