#!/usr/bin/env python
"""Fine-tune a data2vec text encoder on a GLUE task (or any text classification/regression data).

    python finetuning/finetune_glue.py --model_name_or_path PRETRAIN_OUTPUT_DIR --task_name mrpc \\
        --do_train --do_eval --max_seq_length 128 --per_device_train_batch_size 32 \\
        --learning_rate 2e-5 --num_train_epochs 10 --output_dir out/mrpc

Data: ``--task_name`` alone loads the Hub ``nyu-mll/glue`` dataset (network); local ``--train_file`` /
``--validation_file`` / ``--test_file`` (csv or json lines) work offline, with the text in
``sentence1``/``sentence2`` (or ``--sentence1_key``/``--sentence2_key``) and the label in ``label``
(``--label_column_name``). With ``--task_name`` the task's GLUE metrics are reported (CoLA Matthews
correlation, STS-B Pearson/Spearman as a regression, MRPC/QQP accuracy and F1, the rest accuracy); MNLI
is evaluated on ``validation_matched`` and ``validation_mismatched`` (keys suffixed ``_mm``, as
transformers' ``run_glue.py``). Without a task: accuracy (+ F1 for two classes), or Pearson/Spearman
when the labels are floats. ``--do_predict`` writes ``predict_results_<task>.txt``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from data2vec_hf.finetuning import card_and_push, common
from data2vec_hf.metrics import glue_metrics
from datasets import ClassLabel, DatasetDict, load_dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    Trainer,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GlueTask:
    sentence_keys: tuple[str, str | None]
    num_labels: int  # 1 = regression
    validation_splits: tuple[str, ...] = ("validation",)
    test_splits: tuple[str, ...] = ("test",)


GLUE_TASKS = {
    "cola": GlueTask(("sentence", None), 2),
    "sst2": GlueTask(("sentence", None), 2),
    "mrpc": GlueTask(("sentence1", "sentence2"), 2),
    "qqp": GlueTask(("question1", "question2"), 2),
    "stsb": GlueTask(("sentence1", "sentence2"), 1),
    "mnli": GlueTask(
        ("premise", "hypothesis"),
        3,
        ("validation_matched", "validation_mismatched"),
        ("test_matched", "test_mismatched"),
    ),
    "qnli": GlueTask(("question", "sentence"), 2),
    "rte": GlueTask(("sentence1", "sentence2"), 2),
    "wnli": GlueTask(("sentence1", "sentence2"), 2),
}
GLUE_HUB_DATASET = "nyu-mll/glue"


@dataclass
class ModelArguments(common.ModelArguments):
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "tokenizer name or path, if not the same as model_name_or_path"}
    )


@dataclass
class DataTrainingArguments:
    task_name: str | None = field(
        default=None, metadata={"help": "GLUE task: " + ", ".join(GLUE_TASKS), "choices": list(GLUE_TASKS)}
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": f"Hub dataset (default with --task_name: {GLUE_HUB_DATASET})"}
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "dataset configuration (default: the task name)"}
    )
    train_file: str | None = field(default=None, metadata={"help": "local training data (.csv/.json/.jsonl)"})
    validation_file: str | None = field(default=None, metadata={"help": "local validation data"})
    test_file: str | None = field(default=None, metadata={"help": "local test data (labels optional)"})
    sentence1_key: str | None = field(default=None, metadata={"help": "first text column (default: auto)"})
    sentence2_key: str | None = field(
        default=None, metadata={"help": "second text column (default: auto; 'none' for single sentences)"}
    )
    label_column_name: str = field(default="label", metadata={"help": "label column"})
    max_seq_length: int = field(
        default=128, metadata={"help": "longer inputs are truncated (capped by the model's positions)"}
    )
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "pad every input to max_seq_length (default: pad per batch)"}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "use at most this many examples"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "evaluate on at most this many"})
    max_predict_samples: int | None = field(default=None, metadata={"help": "predict at most this many"})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "processes for tokenizing"})

    def __post_init__(self):
        if self.task_name is None and not (self.dataset_name or self.train_file or self.validation_file):
            raise ValueError("give --task_name, --dataset_name or local --train_file/--validation_file")


# --------------------------------------------------------------------------------------------------
# Data


def load_raw_datasets(data_args: DataTrainingArguments, cache_dir: str | None) -> DatasetDict:
    local = {
        split: path
        for split, path in (
            ("train", data_args.train_file),
            ("validation", data_args.validation_file),
            ("test", data_args.test_file),
        )
        if path
    }
    if local:
        suffixes = {Path(p).suffix.lower() for p in local.values()}
        if suffixes == {".csv"}:
            builder = "csv"
        elif suffixes <= {".json", ".jsonl"}:
            builder = "json"
        else:
            raise common.BadInput(f"local files must all be .csv or all .json/.jsonl, got {sorted(suffixes)}")
        return load_dataset(builder, data_files=local, cache_dir=cache_dir)
    name = data_args.dataset_name or GLUE_HUB_DATASET
    return load_dataset(name, data_args.dataset_config_name or data_args.task_name, cache_dir=cache_dir)


def sentence_keys(data_args: DataTrainingArguments, columns: list[str]) -> tuple[str, str | None]:
    """The text column(s): explicit, the task's own, ``sentence1``/``sentence2``, else the first one or
    two non-label columns (as ``run_glue.py``)."""
    if data_args.sentence1_key:
        second = data_args.sentence2_key
        return data_args.sentence1_key, None if second in (None, "none", "None") else second
    task = GLUE_TASKS.get(data_args.task_name)
    if task and task.sentence_keys[0] in columns:
        return task.sentence_keys
    if "sentence1" in columns:
        return "sentence1", "sentence2" if "sentence2" in columns else None
    texts = [c for c in columns if c not in (data_args.label_column_name, "idx")]
    if not texts:
        raise common.BadInput(f"no text column among {columns}")
    return texts[0], texts[1] if len(texts) > 1 else None


def label_setup(raw: DatasetDict, data_args: DataTrainingArguments):
    """(is_regression, label names or None, value → id map or None)."""
    label = data_args.label_column_name
    splits = [s for s in raw.values() if label in s.column_names]
    if not splits:
        raise common.BadInput(f"no split has the label column {label!r}")
    feature = splits[0].features[label]
    if data_args.task_name is not None:
        is_regression = GLUE_TASKS[data_args.task_name].num_labels == 1
    else:
        is_regression = getattr(feature, "dtype", None) in ("float32", "float64")
    if is_regression:
        return True, None, None
    if isinstance(feature, ClassLabel):
        return False, list(feature.names), None
    values = sorted({v for s in splits for v in s.unique(label) if v is not None and v != -1})
    return False, [str(v) for v in values], {v: i for i, v in enumerate(values)}


def _label_config(is_regression: bool, label_list: list | None) -> dict:
    """The config's problem type and label names."""
    # (no finetuning_task: transformers 5 configs dropped that field; the task is in the model card)
    if is_regression:
        return dict(num_labels=1, problem_type="regression")
    return dict(
        num_labels=len(label_list),
        problem_type="single_label_classification",
        id2label=dict(enumerate(label_list)),
        label2id={name: i for i, name in enumerate(label_list)},
    )


def _max_seq_length(data_args: DataTrainingArguments, tokenizer, config) -> int:
    """``--max_seq_length`` capped by the tokenizer and by the model's positions (RoBERTa-style models,
    data2vec text among them, offset them by ``padding_idx + 1``)."""
    max_seq_length = min(data_args.max_seq_length, tokenizer.model_max_length)
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and config.pad_token_id is not None:
        positions -= config.pad_token_id + 1
    if positions is not None and max_seq_length > positions:
        logger.warning(
            f"max_seq_length {max_seq_length} exceeds the model's {positions} positions; using that"
        )
        max_seq_length = positions
    return max_seq_length


def _tokenized(
    raw: DatasetDict, tokenizer, keys, labels, max_seq_length: int, data_args, training_args
) -> DatasetDict:
    """Every split tokenized (``keys``: the text column(s)), its labels as ids (-1: none)."""
    key1, key2 = keys
    is_regression, _, label_to_id = labels
    label_column = data_args.label_column_name
    padding = "max_length" if data_args.pad_to_max_length else False

    def preprocess(examples):
        texts = (examples[key1],) if key2 is None else (examples[key1], examples[key2])
        result = tokenizer(*texts, padding=padding, max_length=max_seq_length, truncation=True)
        if label_column in examples:
            values = examples[label_column]
            if is_regression:
                result["label"] = [float(v) if v is not None else -1.0 for v in values]
            elif label_to_id is not None:
                result["label"] = [label_to_id.get(v, -1) for v in values]
            else:
                result["label"] = [-1 if v is None else v for v in values]
        return result

    with training_args.main_process_first(desc="tokenizing"):
        return DatasetDict(
            {
                name: split.map(
                    preprocess,
                    batched=True,
                    num_proc=data_args.preprocessing_num_workers,
                    remove_columns=split.column_names,
                    desc=f"Tokenizing {name}",
                )
                for name, split in raw.items()
            }
        )


def _chosen_splits(tokenized: DatasetDict, task: GlueTask | None, data_args, training_args) -> tuple:
    """``(train, [(name, validation split)], [(name, test split)])`` for the requested stages, each cut to
    its ``--max_*_samples``."""

    def pick(names: tuple[str, ...], limit: int | None, what: str) -> list[tuple[str, object]]:
        found = [(name, tokenized[name]) for name in names if name in tokenized]
        if not found:
            raise common.BadInput(f"{what} needs a {' or '.join(names)} split; have {list(tokenized)}")
        return [(name, ds.select(range(min(limit, len(ds)))) if limit else ds) for name, ds in found]

    validation_names = task.validation_splits if task and not data_args.validation_file else ("validation",)
    test_names = task.test_splits if task and not data_args.test_file else ("test",)
    train_dataset = (
        pick(("train",), data_args.max_train_samples, "--do_train")[0][1] if training_args.do_train else None
    )
    eval_splits = (
        pick(validation_names, data_args.max_eval_samples, "--do_eval") if training_args.do_eval else []
    )
    test_splits = (
        pick(test_names, data_args.max_predict_samples, "--do_predict") if training_args.do_predict else []
    )
    return train_dataset, eval_splits, test_splits


def _evaluate_splits(trainer: Trainer, eval_splits: list) -> list:
    """Evaluate every validation split (MNLI mismatched: keys suffixed ``_mm``) into one
    ``eval_results.json``; the card's results."""
    results = []
    combined = {}
    for name, dataset in eval_splits:
        suffix = "_mm" if name.endswith("mismatched") else ""
        metrics = common.evaluate(trainer, dataset, suffix=suffix, save=False)
        combined.update(metrics)
        results.append((name, common.split_metrics(metrics, suffix=suffix)))
    if eval_splits:
        trainer.save_metrics("eval", combined)
    return results


def _predict_splits(trainer: Trainer, test_splits: list, labels, data_args) -> None:
    """``predict_results_<task>[_<split>].txt`` per test split, plus metrics where the split has labels."""
    is_regression, label_list, _ = labels
    for name, dataset in test_splits:
        values = np.asarray(dataset["label"]) if "label" in dataset.column_names else None
        # GLUE's test splits carry label -1 (STS-B: -1.0): predictions only, no metrics
        has_labels = values is not None and ((values != -1).any() if is_regression else (values >= 0).all())
        if not has_labels and "label" in dataset.column_names:
            dataset = dataset.remove_columns("label")  # GLUE test splits: label -1
        output = trainer.predict(dataset, metric_key_prefix="predict")
        predictions = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
        predictions = predictions.reshape(-1) if is_regression else np.argmax(predictions, axis=1)
        if has_labels:
            trainer.log_metrics("predict", output.metrics)
            trainer.save_metrics("predict", output.metrics)
        if trainer.is_world_process_zero():
            suffix = name.removeprefix("test").lstrip("_")
            stem = data_args.task_name or "text"
            path = (
                Path(trainer.args.output_dir) / f"predict_results_{stem}{'_' + suffix if suffix else ''}.txt"
            )
            with open(path, "w") as writer:
                writer.write("index\tprediction\n")
                for index, value in enumerate(predictions):
                    text = repr(float(value)) if is_regression else label_list[int(value)]
                    writer.write(f"{index}\t{text}\n")
            logger.info(f"Predictions written to {path}")


def _write_card(
    trainer: Trainer, hub, model_args, data_args, pair: bool, max_seq_length: int, results
) -> None:
    usage = (
        "from transformers import pipeline\n{import_data2vec_hf}"
        'classifier = pipeline("text-classification", model="{model}")\n'
        'classifier("A sentence to classify.")'
    )
    if pair:
        usage += '  # or {{"text": "first sentence", "text_pair": "second sentence"}}'
    card_and_push.write_card_and_push(
        trainer,
        hub,
        template="finetuned_text_classification",
        model_args=model_args,
        dataset=dataset_description(data_args),
        task_type="text-classification",
        task_name=f"GLUE {data_args.task_name.upper()}" if data_args.task_name else "Text Classification",
        modality="text",
        results=results,
        usage=usage,
        extra_training=[("max sequence length", max_seq_length)],
        tags=["glue"] if data_args.task_name else [],
        task=data_args.task_name.upper() if data_args.task_name else None,
    )


@common.reports_bad_input
def main(argv=None) -> int:
    model_args, data_args, training_args = common.parse_arguments(
        (ModelArguments, DataTrainingArguments, TrainingArguments), argv
    )
    hub = card_and_push.take_hub_settings(training_args)
    common.setup_logging(training_args)
    checkpoint = common.resolve_checkpoint(training_args)
    set_seed(training_args.seed)

    raw = load_raw_datasets(data_args, model_args.cache_dir)
    task = GLUE_TASKS.get(data_args.task_name)
    labels = label_setup(raw, data_args)
    is_regression, label_list, _ = labels
    num_labels = 1 if is_regression else len(label_list)
    if task is not None and not is_regression and num_labels != task.num_labels:
        logger.warning(f"{data_args.task_name} has {task.num_labels} labels, the data has {num_labels}")
    config = common.load_config(model_args, **_label_config(is_regression, label_list))
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.tokenizer_name or model_args.model_name_or_path,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
    )
    model = common.load_model(AutoModelForSequenceClassification, model_args, config)

    max_seq_length = _max_seq_length(data_args, tokenizer, config)
    keys = sentence_keys(data_args, next(iter(raw.values())).column_names)
    tokenized = _tokenized(raw, tokenizer, keys, labels, max_seq_length, data_args, training_args)
    train_dataset, eval_splits, test_splits = _chosen_splits(tokenized, task, data_args, training_args)

    def compute_metrics(p: EvalPrediction) -> dict:
        predictions = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        predictions = predictions.reshape(-1) if is_regression else np.argmax(predictions, axis=1)
        return glue_metrics(data_args.task_name, predictions, p.label_ids, is_regression=is_regression)

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_splits[0][1] if eval_splits else None,
        processing_class=tokenizer,
        data_collator=default_data_collator
        if data_args.pad_to_max_length
        else DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
    )
    if training_args.do_train:
        common.train(trainer, checkpoint, len(train_dataset))
    results = _evaluate_splits(trainer, eval_splits)
    _predict_splits(trainer, test_splits, labels, data_args)
    _write_card(trainer, hub, model_args, data_args, keys[1] is not None, max_seq_length, results)
    return 0


def dataset_description(data_args: DataTrainingArguments) -> card_and_push.DatasetDescription:
    """For the card: the local files, or the Hub dataset actually loaded (``nyu-mll/glue`` + task)."""
    if data_args.train_file or data_args.validation_file or data_args.test_file:
        return card_and_push.DatasetDescription.from_args(data_args)
    name = data_args.dataset_name or GLUE_HUB_DATASET
    config = data_args.dataset_config_name or data_args.task_name
    return card_and_push.DatasetDescription(
        name=f"{name} ({config})" if config else name, hub_id=name, config=config
    )


if __name__ == "__main__":
    sys.exit(main())
