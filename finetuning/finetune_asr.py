#!/usr/bin/env python
"""Fine-tune a data2vec speech encoder for speech recognition with CTC (character vocabulary).

    python finetuning/finetune_asr.py --model_name_or_path PRETRAIN_OUTPUT_DIR \\
        --train_dir data/train --validation_dir data/dev --do_train --do_eval \\
        --per_device_train_batch_size 8 --learning_rate 1e-4 --max_steps 20000 --output_dir out/asr

Data: a folder with audio files and a ``metadata.csv``/``metadata.jsonl`` (``file_name`` plus a
transcript column, as written by ``build_speech_corpus``), a ``.csv``/``.jsonl`` manifest
(``--train_file``), or a Hub dataset (``--dataset_name``, network). Audio is decoded with soundfile
(never with ``datasets``' torchcodec decoding), down-mixed and resampled to the feature extractor's
rate. Transcripts are upper-cased (``--do_upper_case``) and stripped of ``--chars_to_ignore``; the CTC
vocabulary is the set of characters of the training transcripts, with ``|`` as word delimiter,
``<pad>`` as the CTC blank and ``<unk>``. ``Wav2Vec2CTCTokenizer`` + the feature extractor are saved as
a ``Wav2Vec2Processor`` with the model, so ``pipeline("automatic-speech-recognition", model=OUTPUT_DIR)``
works. Evaluation reports WER and CER of greedy CTC decoding.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from data2vec_hf.finetuning import card_and_push, common
from data2vec_hf.metrics import character_error_rate, word_error_rate
from data2vec_hf.pretraining.data import (
    DataError,
    UnreadableError,
    feature_encoder_receptive_field,
    pad_sequences,
    read_audio,
    resolve_column,
)
from data2vec_hf.pretraining.data.corpora import resample_audio
from transformers import (
    AutoFeatureExtractor,
    AutoModelForCTC,
    EvalPrediction,
    Trainer,
    TrainingArguments,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Processor,
    set_seed,
)

logger = logging.getLogger(__name__)

TEXT_COLUMNS = ("transcription", "text", "sentence", "transcript", "normalized_text")
CHARS_TO_IGNORE = [",", "?", ".", "!", "-", ";", ":", '"', "“", "%", "‘", "”", "�"]


@dataclass
class ModelArguments(common.ModelArguments):
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "an existing CTC tokenizer (default: the checkpoint's, else built from the transcripts)"
        },
    )
    freeze_feature_encoder: bool = field(
        default=True,
        metadata={"help": "keep the convolutional feature encoder frozen (as wav2vec 2.0 / data2vec)"},
    )
    attention_dropout: float | None = field(default=None, metadata={"help": "default: the checkpoint's"})
    activation_dropout: float | None = field(default=None, metadata={"help": "default: the checkpoint's"})
    feat_proj_dropout: float | None = field(default=None, metadata={"help": "default: the checkpoint's"})
    hidden_dropout: float | None = field(default=None, metadata={"help": "default: the checkpoint's"})
    final_dropout: float | None = field(default=None, metadata={"help": "dropout before the CTC head"})
    layerdrop: float | None = field(default=None, metadata={"help": "default: the checkpoint's"})
    mask_time_prob: float | None = field(
        default=None, metadata={"help": "SpecAugment time-mask probability (default: the checkpoint's)"}
    )
    mask_time_length: int | None = field(default=None, metadata={"help": "SpecAugment time-mask span"})
    mask_feature_prob: float | None = field(default=None, metadata={"help": "SpecAugment channel masks"})
    ctc_loss_reduction: str = field(default="mean", metadata={"help": "'mean' or 'sum'"})
    ctc_zero_infinity: bool = field(
        default=True, metadata={"help": "zero infinite CTC losses (transcript longer than the audio)"}
    )

    def config_fields(self) -> dict[str, Any]:
        names = (
            "attention_dropout activation_dropout feat_proj_dropout hidden_dropout final_dropout layerdrop "
            "mask_time_prob mask_time_length mask_feature_prob ctc_loss_reduction ctc_zero_infinity"
        ).split()
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


@dataclass
class DataTrainingArguments(common.SplitSourceArguments):
    train_dir: str | None = field(default=None, metadata={"help": "folder of audio + metadata.csv/.jsonl"})
    train_file: str | None = field(default=None, metadata={"help": "manifest .csv/.jsonl (file_name, text)"})
    validation_split_percentage: int = field(
        default=10,
        metadata={
            "help": "local data without a validation set: hold out this percentage of the training data"
        },
    )
    audio_column_name: str | None = field(
        default=None, metadata={"help": "default: audio/file/path/file_name"}
    )
    text_column_name: str | None = field(
        default=None, metadata={"help": "transcript column (default: " + "/".join(TEXT_COLUMNS) + ")"}
    )
    chars_to_ignore: list[str] | None = field(
        default=None,
        metadata={
            "help": "characters removed from the transcripts (default: "
            + " ".join(CHARS_TO_IGNORE).replace("%", "%%")
            + '; pass "" to keep every character)'
        },
    )
    do_upper_case: bool = field(default=True, metadata={"help": "upper-case the transcripts"})
    word_delimiter_token: str = field(default="|", metadata={"help": "stands for the space"})
    unk_token: str = field(default="<unk>", metadata={"help": "unknown character"})
    pad_token: str = field(default="<pad>", metadata={"help": "padding and CTC blank"})
    max_duration_in_seconds: float = field(default=20.0, metadata={"help": "longer clips are dropped"})
    min_duration_in_seconds: float = field(default=0.0, metadata={"help": "shorter clips are dropped"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use at most this many"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "evaluate on at most this many"})
    max_predict_samples: int | None = field(default=None, metadata={"help": "predict at most this many"})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "processes for decoding"})

    def __post_init__(self):
        if self.chars_to_ignore is None:
            self.chars_to_ignore = list(CHARS_TO_IGNORE)


# --------------------------------------------------------------------------------------------------
# Transcripts and vocabulary


def normalize_text(text: str | None, chars_to_ignore: Sequence[str] | None, upper_case: bool = True) -> str:
    """Upper-case, drop the ignored characters, single spaces."""
    text = text or ""
    text = text.upper() if upper_case else text
    ignored = "".join(chars_to_ignore or ())
    if ignored:
        text = re.sub(f"[{re.escape(ignored)}]", "", text)
    return " ".join(text.split())


def build_vocabulary(
    texts: Iterable[str], word_delimiter: str = "|", unk_token: str = "<unk>", pad_token: str = "<pad>"
) -> dict[str, int]:
    """Character vocabulary of normalised transcripts: ``pad`` (CTC blank) 0, ``unk`` 1, the word
    delimiter 2 (stands for the space), then the other characters in sorted order."""
    characters = sorted(set().union(*(set(text) for text in texts)) - {" "})
    if not characters:
        raise DataError("the training transcripts are empty: no vocabulary to build")
    tokens = [pad_token, unk_token, word_delimiter, *(c for c in characters if c != word_delimiter)]
    return {token: i for i, token in enumerate(tokens)}


def make_tokenizer(vocabulary: dict[str, int], folder: Path, data_args: DataTrainingArguments):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocabulary, ensure_ascii=False, indent=1))
    return Wav2Vec2CTCTokenizer(
        str(folder / "vocab.json"),
        unk_token=data_args.unk_token,
        pad_token=data_args.pad_token,
        word_delimiter_token=data_args.word_delimiter_token,
        bos_token=None,
        eos_token=None,
        do_lower_case=False,
    )


# --------------------------------------------------------------------------------------------------
# Data


def text_column(ds: datasets.Dataset, name: str | None) -> str:
    if name is not None:
        if name not in ds.column_names:
            raise DataError(
                f"column {name!r} does not exist in the dataset; available columns: {ds.column_names}"
            )
        return name
    found = next((c for c in TEXT_COLUMNS if c in ds.column_names), None)
    if found is None:
        raise DataError(
            f"no transcript column found (looked for {list(TEXT_COLUMNS)}); columns: {ds.column_names}"
        )
    return found


def _prepare_example(
    audio_value: Any, text: str | None, *, feature_extractor, tokenizer, data_args: DataTrainingArguments
) -> dict[str, Any]:
    try:
        audio, rate = read_audio(audio_value)
    except UnreadableError as error:
        return {"input_values": [], "input_length": 0, "labels": [], "status": error.reason}
    rate_wanted = feature_extractor.sampling_rate
    audio = resample_audio(audio, rate, rate_wanted) if len(audio) else audio
    values = feature_extractor(audio, sampling_rate=rate_wanted).input_values[0]
    transcript = normalize_text(text, data_args.chars_to_ignore, data_args.do_upper_case)
    labels = tokenizer(transcript).input_ids
    return {"input_values": values, "input_length": len(values), "labels": labels, "status": "ok"}


def prepare_dataset(
    raw: datasets.Dataset,
    *,
    feature_extractor,
    tokenizer,
    data_args: DataTrainingArguments,
    min_samples: int,
    max_samples: int,
    desc: str,
) -> datasets.Dataset:
    """Decode + resample + normalise the audio, tokenize the transcripts; drop unreadable clips, clips
    outside the duration range and empty transcripts (counted in the log)."""
    audio_column = resolve_column(raw, data_args.audio_column_name, "audio")
    transcript_column = text_column(raw, data_args.text_column_name)
    features = datasets.Features(
        {
            "input_values": datasets.List(datasets.Value("float32")),
            "input_length": datasets.Value("int64"),
            "labels": datasets.List(datasets.Value("int32")),
            "status": datasets.Value("string"),
        }
    )

    def prepare(audio_value, text):
        return _prepare_example(
            audio_value, text, feature_extractor=feature_extractor, tokenizer=tokenizer, data_args=data_args
        )

    ds = raw.map(
        prepare,
        input_columns=[audio_column, transcript_column],
        remove_columns=raw.column_names,
        features=features,
        num_proc=data_args.preprocessing_num_workers,
        desc=f"Decoding {desc} audio",
    )

    def keep(status, length, labels):
        return status == "ok" and min_samples <= length <= max_samples and len(labels) > 0

    kept = ds.filter(keep, input_columns=["status", "input_length", "labels"], desc=f"Filtering {desc}")
    logger.info(f"{desc}: kept {len(kept)} of {len(ds)} clips")
    if len(kept) == 0:
        raise DataError(f"no {desc} clip left after decoding and the duration filter")
    return kept.remove_columns("status").with_format("numpy")


@dataclass
class DataCollatorCTCWithPadding:
    """Pads ``input_values`` with 0 (+ ``attention_mask`` when the feature extractor returns one) and
    the CTC ``labels`` with -100 (ignored by the loss)."""

    return_attention_mask: bool = True
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        clips = [torch.tensor(np.asarray(f["input_values"], dtype=np.float32)) for f in features]
        input_values, attention_mask = pad_sequences(clips, 0.0, self.pad_to_multiple_of)
        labels = [torch.tensor(np.asarray(f["labels"], dtype=np.int64)) for f in features]
        labels, _ = pad_sequences(labels, -100)
        batch = {"input_values": input_values, "labels": labels}
        if self.return_attention_mask:
            batch["attention_mask"] = attention_mask
        return batch


def argmax_logits(logits, labels):
    """Keep only the greedy CTC ids during evaluation (``preprocess_logits_for_metrics``)."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def decode_predictions(tokenizer, pred_ids: np.ndarray) -> list[str]:
    """Greedy CTC: merge repeats, drop blanks (padding of the Trainer's concatenation is -100)."""
    pred_ids = np.where(pred_ids == -100, tokenizer.pad_token_id, pred_ids)
    return tokenizer.batch_decode(pred_ids)


def decode_references(tokenizer, label_ids: np.ndarray) -> list[str]:
    label_ids = np.where(label_ids == -100, tokenizer.pad_token_id, label_ids)
    return tokenizer.batch_decode(label_ids, group_tokens=False)


# --------------------------------------------------------------------------------------------------


def _raw_splits(model_args, data_args, training_args) -> tuple:
    """``(train, validation, test, tokenizer source)``: the raw splits (validation held out of the
    training data when none is given) and where the CTC vocabulary comes from (None: built from the
    training transcripts)."""
    raw_train = common.load_split(data_args, "train", "audio", model_args.cache_dir)
    raw_eval = (
        common.load_split(data_args, "validation", "audio", model_args.cache_dir)
        if training_args.do_eval
        else None
    )
    raw_test = (
        common.load_split(data_args, "test", "audio", model_args.cache_dir)
        if training_args.do_predict
        else None
    )
    # Tokenizer: given, the checkpoint's own (already fine-tuned), or built from the training transcripts.
    source = model_args.tokenizer_name_or_path
    if source is None and (Path(model_args.model_name_or_path) / "vocab.json").is_file():
        source = model_args.model_name_or_path
    if raw_train is None and (training_args.do_train or source is None):
        raise common.BadInput(
            "give training data (--train_dir, --train_file or --dataset_name); without training, "
            "a checkpoint with a CTC vocabulary (vocab.json) or --tokenizer_name_or_path"
        )
    if training_args.do_eval and raw_eval is None:
        if data_args.dataset_name or raw_train is None:
            raise common.BadInput(
                "--do_eval needs validation data (--validation_dir/--validation_file/--eval_split_name)"
            )
        held_out = raw_train.train_test_split(
            test_size=data_args.validation_split_percentage / 100, seed=training_args.seed
        )
        raw_train, raw_eval = held_out["train"], held_out["test"]
    return raw_train, raw_eval, raw_test, source


def _processor(source: str | None, raw_train, model_args, data_args, training_args) -> Wav2Vec2Processor:
    """The CTC tokenizer (from ``source``, or built from ``raw_train``'s transcripts) and the checkpoint's
    feature extractor (a default 16 kHz one where it has none)."""
    with training_args.main_process_first(desc="vocabulary"):
        if source is not None:
            tokenizer = Wav2Vec2CTCTokenizer.from_pretrained(source, cache_dir=model_args.cache_dir)
        else:
            transcripts = [
                normalize_text(t, data_args.chars_to_ignore, data_args.do_upper_case)
                for t in raw_train[text_column(raw_train, data_args.text_column_name)]
            ]
            vocabulary = build_vocabulary(
                transcripts, data_args.word_delimiter_token, data_args.unk_token, data_args.pad_token
            )
            with tempfile.TemporaryDirectory() as folder:  # saved with the processor by main
                tokenizer = make_tokenizer(vocabulary, Path(folder), data_args)
    try:
        feature_extractor = AutoFeatureExtractor.from_pretrained(
            model_args.model_name_or_path, cache_dir=model_args.cache_dir
        )
    except (OSError, ValueError):  # a checkpoint saved without a preprocessor config
        feature_extractor = Wav2Vec2FeatureExtractor(
            feature_size=1,
            sampling_rate=16000,
            padding_value=0.0,
            do_normalize=True,
            return_attention_mask=True,
        )
    return Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer)


def _prepared_splits(raw_splits, processor: Wav2Vec2Processor, config, data_args, training_args) -> tuple:
    """``(train, validation, test)`` decoded, tokenized and filtered by duration (at least the feature
    encoder's receptive field); None for a split not given or not needed."""
    raw_train, raw_eval, raw_test = raw_splits
    rate = processor.feature_extractor.sampling_rate
    min_samples = int(data_args.min_duration_in_seconds * rate)
    if hasattr(config, "conv_kernel") and hasattr(config, "conv_stride"):
        min_samples = max(
            min_samples, feature_encoder_receptive_field(config.conv_kernel, config.conv_stride)
        )
    max_samples = int(data_args.max_duration_in_seconds * rate)

    def prepared(raw, limit, desc):
        if raw is None:
            return None
        raw = raw.select(range(min(limit, len(raw)))) if limit else raw
        return prepare_dataset(
            raw,
            feature_extractor=processor.feature_extractor,
            tokenizer=processor.tokenizer,
            data_args=data_args,
            min_samples=min_samples,
            max_samples=max_samples,
            desc=desc,
        )

    with training_args.main_process_first(desc="preprocessing"):
        train_dataset = (
            prepared(raw_train, data_args.max_train_samples, "train") if training_args.do_train else None
        )
        eval_dataset = prepared(raw_eval, data_args.max_eval_samples, "validation")
        test_dataset = prepared(raw_test, data_args.max_predict_samples, "test")
    return train_dataset, eval_dataset, test_dataset


def _evaluate_and_predict(trainer: Trainer, eval_dataset, test_dataset, tokenizer, data_args) -> list:
    """Evaluate (WER/CER) and transcribe the test split into ``predict_results.txt``; the card's results."""
    results = []
    if eval_dataset is not None:
        metrics = common.evaluate(trainer, eval_dataset)
        results.append(
            (
                data_args.eval_split_name if data_args.dataset_name else "validation",
                common.split_metrics(metrics),
            )
        )
    if test_dataset is not None:
        output = trainer.predict(test_dataset, metric_key_prefix="predict")
        trainer.log_metrics("predict", output.metrics)
        trainer.save_metrics("predict", output.metrics)
        if trainer.is_world_process_zero():
            with open(Path(trainer.args.output_dir) / "predict_results.txt", "w") as writer:
                writer.write("index\ttranscription\n")
                for index, text in enumerate(decode_predictions(tokenizer, np.asarray(output.predictions))):
                    writer.write(f"{index}\t{text}\n")
    return results


def _write_card(trainer: Trainer, hub, model_args, data_args, tokenizer, rate: int, results: list) -> None:
    vocabulary = "".join(
        t for t in tokenizer.get_vocab() if len(t) == 1 and t != data_args.word_delimiter_token
    )
    card_and_push.write_card_and_push(
        trainer,
        hub,
        template="finetuned_speech_recognition",
        model_args=model_args,
        dataset=card_and_push.DatasetDescription.from_args(data_args),
        task_type="automatic-speech-recognition",
        task_name="Automatic Speech Recognition",
        modality="audio",
        results=results,
        usage=(
            "import soundfile as sf\nfrom transformers import pipeline\n{import_data2vec_hf}"
            'asr = pipeline("automatic-speech-recognition", model="{model}")\n'
            f'audio, rate = sf.read("speech.wav", dtype="float32")  # {rate} Hz mono\n'
            'asr({{"raw": audio, "sampling_rate": rate}})["text"]'
        ),
        extra_training=[
            ("feature encoder", "frozen" if model_args.freeze_feature_encoder else "trained"),
            ("max clip duration (s)", data_args.max_duration_in_seconds),
        ],
        tags=["ctc"],
        vocabulary=" ".join(sorted(vocabulary)),
        sampling_rate=rate,
    )


@common.reports_bad_input
def main(argv=None) -> int:
    model_args, data_args, training_args = common.parse_arguments(
        (ModelArguments, DataTrainingArguments, TrainingArguments), argv
    )
    hub = card_and_push.take_hub_settings(training_args)
    training_args.remove_unused_columns = False  # the collator reads input_values/labels itself
    common.setup_logging(training_args)
    checkpoint = common.resolve_checkpoint(training_args)
    set_seed(training_args.seed)

    raw_train, raw_eval, raw_test, source = _raw_splits(model_args, data_args, training_args)
    processor = _processor(source, raw_train, model_args, data_args, training_args)
    tokenizer, feature_extractor = processor.tokenizer, processor.feature_extractor
    config = common.load_config(
        model_args,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        **model_args.config_fields(),
    )
    model = common.load_model(AutoModelForCTC, model_args, config)
    if model_args.freeze_feature_encoder and hasattr(model, "freeze_feature_encoder"):
        model.freeze_feature_encoder()
    train_dataset, eval_dataset, test_dataset = _prepared_splits(
        (raw_train, raw_eval, raw_test), processor, config, data_args, training_args
    )

    def compute_metrics(p: EvalPrediction) -> dict:
        predictions = decode_predictions(tokenizer, np.asarray(p.predictions))
        references = decode_references(tokenizer, np.asarray(p.label_ids))
        return {
            "wer": word_error_rate(references, predictions),
            "cer": character_error_rate(references, predictions),
        }

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        data_collator=DataCollatorCTCWithPadding(
            return_attention_mask=feature_extractor.return_attention_mask
        ),
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=argmax_logits,
    )
    if trainer.is_world_process_zero():
        processor.save_pretrained(training_args.output_dir)  # usable (and reloadable) before training ends

    if training_args.do_train:
        common.train(trainer, checkpoint, len(train_dataset))
    results = _evaluate_and_predict(trainer, eval_dataset, test_dataset, tokenizer, data_args)
    _write_card(trainer, hub, model_args, data_args, tokenizer, feature_extractor.sampling_rate, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
