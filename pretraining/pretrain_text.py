#!/usr/bin/env python
"""data2vec text pretraining: ``accelerate launch pretraining/pretrain_text.py --output_dir DIR [...]``.

Text lines (empty ones dropped and counted) are tokenized with ``--tokenizer_name`` or, when none is
given, with a byte-level BPE tokenizer trained on the corpus (saved in ``OUTPUT_DIR/tokenizer`` and
exported with the model), then packed into blocks of ``--max_seq_length`` tokens.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from data2vec_hf import Data2VecTextForPreTraining
from data2vec_hf.data2vec2_text import Data2Vec2TextForPreTraining, sample_text_masks_v2
from data2vec_hf.data2vec_text import sample_text_masks
from data2vec_hf.pretraining.data import (
    TextCollator,
    data_source_kwargs,
    load_or_train_tokenizer,
    load_raw_dataset,
    prepare_text_dataset,
)
from data2vec_hf.pretraining.spec import ConfigError, ModalitySpec
from data2vec_hf.pretraining.trainer import run


@dataclass
class TextArguments:
    """The text script's flags."""

    _argument_group_name = "text"

    text_column: str | None = field(
        default=None, metadata={"help": "text column (default: text/sentence/content)"}
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "tokenizer name or path (default: train a BPE tokenizer on the corpus)"},
    )
    bpe_vocab_size: int = field(
        default=8192, metadata={"help": "vocabulary size of the trained BPE tokenizer"}
    )
    skip_undecodable_lines: bool = field(
        default=False,
        metadata={
            "help": "drop (and count) the lines of --train_file/--train_dir text files that are not valid UTF-8, "
            "instead of stopping with an error that names the file"
        },
    )
    max_seq_length: int = field(
        default=512, metadata={"help": "tokens per training block (at most max_position_embeddings - 2)"}
    )


add_arguments = TextArguments  # the spec's hook: build_parser parses the dataclass's fields as flags


def prepare_config(args, config):
    """Load (or train) the tokenizer and make the config's vocabulary and special ids match it."""
    if args.max_seq_length > config.max_position_embeddings - 2:  # before any data is read
        raise ConfigError(
            f"--max_seq_length {args.max_seq_length} exceeds the model's max_position_embeddings - 2 = "
            f"{config.max_position_embeddings - 2} (raise max_position_embeddings with --config_overrides)"
        )
    report: dict = {}
    raw = load_raw_dataset("text", **data_source_kwargs(args), report=report)
    args.undecodable_lines = report.get("undecodable_lines", 0)
    tokenizer = load_or_train_tokenizer(
        args.tokenizer_name or args.model_name_or_path
        if _has_tokenizer(args.model_name_or_path)
        else args.tokenizer_name,
        raw,
        Path(args.output_dir) / "tokenizer",
        vocab_size=args.bpe_vocab_size,
        text_column=args.text_column,
    )
    if tokenizer.mask_token_id is None:
        raise ConfigError(f"--tokenizer_name {args.tokenizer_name}: the tokenizer has no mask token")
    ids = dict(
        mask_token_id=tokenizer.mask_token_id,  # data2vec 2.0 has no mask token (the field is skipped)
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id,
        eos_token_id=tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id,
    )
    if args.model_name_or_path and config.vocab_size != len(tokenizer):
        raise ConfigError(
            f"the checkpoint's vocabulary ({config.vocab_size}) does not match the tokenizer ({len(tokenizer)}); "
            "pass the tokenizer it was trained with via --tokenizer_name"
        )
    config.vocab_size = len(tokenizer)
    for key, value in ids.items():
        if hasattr(config, key):
            setattr(config, key, value)
    args.raw_text, args.tokenizer = raw, tokenizer
    return config


def _has_tokenizer(path) -> bool:
    return bool(path) and (Path(path) / "tokenizer.json").exists()


def build_data(args, config, accelerator):
    dataset, stats = prepare_text_dataset(
        args.raw_text,
        args.tokenizer,
        max_seq_length=args.max_seq_length,
        text_column=args.text_column,
        num_proc=args.preprocessing_num_workers,
        cache_dir=args.cache_dir,
        undecodable_lines=args.undecodable_lines,
    )
    if args.max_train_samples is not None and not stats.streaming:
        dataset = dataset.select(range(min(args.max_train_samples, len(dataset))))
    return dataset, TextCollator(pad_token_id=config.pad_token_id), args.tokenizer


SPEC = ModalitySpec(
    name="text",
    model_classes={1: Data2VecTextForPreTraining, 2: Data2Vec2TextForPreTraining},
    defaults={
        1: dict(
            # fairseq examples/data2vec/config/text/pretraining/base.yaml
            learning_rate=2e-4,
            weight_decay=0.01,
            adam_beta1=0.9,
            adam_beta2=0.98,
            adam_epsilon=1e-6,
            max_grad_norm=5.0,
            lr_scheduler_type="cosine",
            warmup_fraction=0.01,
        ),
        2: dict(
            # fairseq examples/data2vec/config/v2/base_text_only_task.yaml
            learning_rate=2e-4,
            weight_decay=0.01,
            adam_beta1=0.9,
            adam_beta2=0.98,
            adam_epsilon=1e-6,
            max_grad_norm=1.0,
            lr_scheduler_type="cosine",
            warmup_fraction=4000 / 1000000,
        ),
    },
    add_arguments=add_arguments,
    build_data=build_data,
    sample_masks={1: sample_text_masks, 2: sample_text_masks_v2},
    prepare_config=prepare_config,
)


def main(argv=None) -> int:
    return run(SPEC, argv)


if __name__ == "__main__":
    sys.exit(main())
