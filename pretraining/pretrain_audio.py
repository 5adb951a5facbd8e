#!/usr/bin/env python
"""data2vec audio pretraining: ``accelerate launch pretraining/pretrain_audio.py --output_dir DIR [...]``.

Audio files are decoded with soundfile, mixed to mono and **resampled** to ``--sampling_rate`` when
their rate differs; clips shorter than ``--min_length_seconds`` are skipped (counted). As in fairseq's
recipes, batches hold clips of similar duration (at most ``--max_tokens`` samples) and every clip is
cropped, at a random offset, to the shortest clip of its batch (``--no-crop_to_shortest`` pads instead).
See ``--help`` for every flag.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from data2vec_hf import Data2VecAudioForPreTraining
from data2vec_hf.data2vec2_audio import Data2Vec2AudioForPreTraining, sample_audio_masks_v2
from data2vec_hf.data2vec_audio import sample_audio_masks
from data2vec_hf.pretraining.audio_waste import AudioWaste
from data2vec_hf.pretraining.data import (
    AudioCollator,
    data_source_kwargs,
    feature_encoder_receptive_field,
    load_raw_dataset,
    prepare_audio_dataset,
)
from data2vec_hf.pretraining.spec import ModalitySpec
from data2vec_hf.pretraining.trainer import run
from transformers import Wav2Vec2FeatureExtractor


@dataclass
class AudioArguments:
    """The audio script's flags; those left None are filled from the recipe of ``--version``."""

    _argument_group_name = "audio"

    audio_column: str | None = field(
        default=None, metadata={"help": "audio column (default: audio/file/path/file_name)"}
    )
    sampling_rate: int = field(default=16000, metadata={"help": "audio is resampled to this rate"})
    max_length_seconds: float | None = field(
        default=None,
        metadata={
            "help": "longer clips are randomly cropped, afresh every epoch (fairseq's max_sample_size); files "
            "longer than 4x this keep one seeded random window of 4x this, so they are never decoded whole"
        },
    )
    min_length_seconds: float | None = field(
        default=None,
        metadata={
            "help": "shorter clips are skipped and counted, never shorter than the receptive field "
            "(fairseq's min_sample_size)"
        },
    )
    max_tokens: int | None = field(
        default=None,
        metadata={
            "help": "audio samples per process and micro-batch, counted as longest clip x clips (fairseq's "
            "max_tokens); 0 = no limit"
        },
    )
    group_by_length: bool = field(
        default=True,
        metadata={
            "help": "batch clips of similar duration together (length-sorted buckets, shuffled, from the seed)"
        },
    )
    crop_to_shortest: bool | None = field(
        default=None,
        metadata={
            "help": "crop every clip of a batch to its shortest one, as fairseq does; --no-crop_to_shortest pads "
            "to the longest instead (exact: padding is never read nor regressed)"
        },
    )
    normalize: bool = field(default=True, metadata={"help": "zero mean, unit variance per clip"})


add_arguments = AudioArguments  # the spec's hook: build_parser parses the dataclass's fields as flags


LONG_FILE_WINDOW = 4  # longer files keep a window of this many crop lengths


def build_data(args, config, accelerator):
    receptive_field = feature_encoder_receptive_field(config.conv_kernel, config.conv_stride)
    min_samples = max(receptive_field, int(args.min_length_seconds * args.sampling_rate))
    raw = load_raw_dataset("audio", **data_source_kwargs(args))
    dataset, stats = prepare_audio_dataset(
        raw,
        sampling_rate=args.sampling_rate,
        min_samples=min_samples,
        normalize=args.normalize,
        audio_column=args.audio_column,
        num_proc=args.preprocessing_num_workers,
        cache_dir=args.cache_dir,
        # a long file (a 2-hour recording) keeps one window, so it is never decoded whole; the collator
        # still draws a fresh crop of --max_length_seconds from that window every epoch
        max_seconds=LONG_FILE_WINDOW * args.max_length_seconds,
    )
    if args.max_train_samples is not None and not stats.streaming:
        dataset = dataset.select(range(min(args.max_train_samples, len(dataset))))
    processor = Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=args.sampling_rate,
        padding_value=0.0,
        do_normalize=args.normalize,
        return_attention_mask=True,
    )
    collator = AudioCollator(max_samples=max_samples(args), crop_to_shortest=args.crop_to_shortest)
    return dataset, collator, processor


def max_samples(args) -> int:
    return int(args.max_length_seconds * args.sampling_rate)


def example_lengths(args, dataset) -> list[int]:
    """Clip lengths in samples, capped at the crop length, for batching by duration."""
    if hasattr(dataset, "column_names") and "length" in dataset.column_names:
        lengths = dataset.with_format(None)["length"]
    else:
        lengths = [len(example["input_values"]) for example in dataset]
    cap = max_samples(args)
    return [min(int(n), cap) for n in lengths]


SPEC = ModalitySpec(
    name="audio",
    model_classes={1: Data2VecAudioForPreTraining, 2: Data2Vec2AudioForPreTraining},
    defaults={
        1: dict(
            # fairseq examples/data2vec/config/audio/pretraining/base_librispeech.yaml
            learning_rate=5e-4,
            weight_decay=0.01,
            adam_beta1=0.9,
            adam_beta2=0.98,
            adam_epsilon=1e-6,
            max_grad_norm=0.0,
            lr_scheduler_type="tri_stage",
            warmup_fraction=0.03,
            max_tokens=3_800_000,
            max_length_seconds=20.0,  # max_sample_size 320000
            min_length_seconds=2.0,  # min_sample_size 32000
            crop_to_shortest=True,
        ),
        2: dict(
            # fairseq examples/data2vec/config/v2/base_audio_only_task.yaml
            learning_rate=7.5e-4,
            weight_decay=0.01,
            adam_beta1=0.9,
            adam_beta2=0.98,
            adam_epsilon=1e-6,
            max_grad_norm=0.0,
            lr_scheduler_type="cosine",
            warmup_fraction=8000 / 400000,
            max_tokens=1_000_000,
            max_length_seconds=20.0,  # max_sample_size 320000
            min_length_seconds=2.0,  # min_sample_size 32000
            crop_to_shortest=True,
        ),
    },
    add_arguments=add_arguments,
    build_data=build_data,
    sample_masks={1: sample_audio_masks, 2: sample_audio_masks_v2},
    example_lengths=example_lengths,
    accounting=AudioWaste,
)


def main(argv=None) -> int:
    return run(SPEC, argv)


if __name__ == "__main__":
    sys.exit(main())
