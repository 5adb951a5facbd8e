#!/usr/bin/env python
"""Fine-tune a data2vec vision encoder for image classification (BEiT / data2vec recipe).

    python finetuning/finetune_image.py --model_name_or_path PRETRAIN_OUTPUT_DIR \\
        --train_dir data/train --validation_dir data/val --do_train --do_eval \\
        --learning_rate 4e-3 --weight_decay 0.05 --layer_decay 0.65 --drop_path_rate 0.1 \\
        --mixup 0.8 --cutmix 1.0 --label_smoothing_factor 0.1 --warmup_steps 0.1 \\
        --num_train_epochs 100 --output_dir out/image

Data: an image folder (one sub-folder per class, or a ``metadata.csv``/``.jsonl`` with ``file_name``
and ``label``), a ``.csv``/``.jsonl`` manifest (``--train_file``), or a Hub dataset
(``--dataset_name``, network). Images that do not decode are skipped and counted.

Training uses timm's ImageNet transform (random resized crop, flip, RandAugment ``--auto_augment``,
colour jitter, random erasing ``--reprob``) and, with ``--mixup``/``--cutmix`` > 0, timm's ``Mixup``
with a soft-target cross-entropy; evaluation resizes to ``image_size / crop_pct`` and centre-crops,
exactly as the image processor saved with the model does for ``pipeline("image-classification")``.
``--layer_decay`` < 1 gives block ``i`` the learning rate ``lr * layer_decay ** (num_layers + 1 - (i + 1))``
(embeddings the smallest, the head the full rate). Metrics: top-1 ``accuracy`` (+ ``top5_accuracy``
when there are more than five classes).
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from data2vec_hf.finetuning import card_and_push, common, layer_decay
from data2vec_hf.metrics import top_k_accuracy
from data2vec_hf.pretraining.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    prepare_image_dataset,
    read_image,
    resolve_column,
)
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    BeitImageProcessor,
    EvalPrediction,
    TrainingArguments,
    set_seed,
)

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments(common.ModelArguments):
    layer_decay: float = field(
        default=0.65,
        metadata={"help": "layer-wise learning-rate decay (1.0 = off); data2vec/BEiT base: 0.65"},
    )
    drop_path_rate: float | None = field(
        default=0.1, metadata={"help": "stochastic depth rate (None: the checkpoint's)"}
    )


@dataclass
class DataTrainingArguments(common.SplitSourceArguments):
    train_dir: str | None = field(default=None, metadata={"help": "image folder (class sub-folders)"})
    train_file: str | None = field(default=None, metadata={"help": "manifest .csv/.jsonl (file_name, label)"})
    train_val_split: float = field(
        default=0.15, metadata={"help": "local data without a validation set: hold out this fraction"}
    )
    image_column_name: str | None = field(
        default=None, metadata={"help": "default: image/img/file_name/path"}
    )
    label_column_name: str = field(default="label", metadata={"help": "label column"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use at most this many"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "evaluate on at most this many"})
    max_predict_samples: int | None = field(default=None, metadata={"help": "predict at most this many"})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "processes for checking"})


@dataclass
class AugmentationArguments:
    """timm augmentation; defaults are BEiT's / data2vec's ImageNet fine-tuning recipe."""

    input_size: int | None = field(default=None, metadata={"help": "default: the model's image_size"})
    crop_min_scale: float = field(default=0.08, metadata={"help": "random resized crop: smallest area"})
    hflip: float = field(default=0.5, metadata={"help": "horizontal flip probability"})
    auto_augment: str | None = field(
        default="rand-m9-mstd0.5-inc1", metadata={"help": "timm auto-augment policy ('none' = off)"}
    )
    color_jitter: float | None = field(
        default=0.4, metadata={"help": "colour jitter (used without auto_augment)"}
    )
    reprob: float = field(default=0.25, metadata={"help": "random erasing probability"})
    remode: str = field(default="pixel", metadata={"help": "random erasing mode"})
    recount: int = field(default=1, metadata={"help": "random erasing count"})
    interpolation: str = field(default="bicubic", metadata={"help": "resize interpolation"})
    crop_pct: float = field(
        default=0.875, metadata={"help": "evaluation: resize to size / crop_pct, centre crop"}
    )
    mixup: float = field(default=0.0, metadata={"help": "mixup alpha (> 0 enables; recipe: 0.8)"})
    cutmix: float = field(default=0.0, metadata={"help": "cutmix alpha (> 0 enables; recipe: 1.0)"})
    cutmix_minmax: list[float] | None = field(default=None, metadata={"help": "cutmix min/max area ratio"})
    mixup_prob: float = field(default=1.0, metadata={"help": "probability of mixing a batch"})
    mixup_switch_prob: float = field(default=0.5, metadata={"help": "probability of cutmix instead of mixup"})
    mixup_mode: str = field(default="batch", metadata={"help": "batch, pair or elem"})

    @property
    def mixing(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0 or self.cutmix_minmax is not None


# --------------------------------------------------------------------------------------------------
# Transforms, data, loss


def build_transforms(aug: AugmentationArguments, size: int, mean: Sequence[float], std: Sequence[float]):
    """(train, eval) timm transforms; eval = squash-resize to ``size / crop_pct`` + centre crop, the same
    geometry as :func:`build_image_processor`."""
    from timm.data import create_transform

    auto_augment = None if aug.auto_augment in (None, "", "none", "None") else aug.auto_augment
    train = create_transform(
        input_size=size,
        is_training=True,
        scale=(aug.crop_min_scale, 1.0),
        hflip=aug.hflip,
        color_jitter=aug.color_jitter or 0.0,
        auto_augment=auto_augment,
        interpolation=aug.interpolation,
        re_prob=aug.reprob,
        re_mode=aug.remode,
        re_count=aug.recount,
        mean=tuple(mean),
        std=tuple(std),
    )
    evaluation = create_transform(
        input_size=size,
        is_training=False,
        interpolation=aug.interpolation,
        crop_pct=aug.crop_pct,
        crop_mode="squash",
        mean=tuple(mean),
        std=tuple(std),
    )
    return train, evaluation


def build_image_processor(aug: AugmentationArguments, size: int, mean, std) -> BeitImageProcessor:
    """The processor saved with the model: what the evaluation transform does, for ``pipeline``."""
    from transformers.image_utils import PILImageResampling

    scaled = int(size / aug.crop_pct)
    resample = {"bicubic": PILImageResampling.BICUBIC, "bilinear": PILImageResampling.BILINEAR}
    return BeitImageProcessor(
        do_resize=True,
        size={"height": scaled, "width": scaled},
        resample=resample.get(aug.interpolation, PILImageResampling.BICUBIC),
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        do_rescale=True,
        do_normalize=True,
        image_mean=list(mean),
        image_std=list(std),
        do_reduce_labels=False,
    )


def label_names(ds: datasets.Dataset, column: str) -> tuple[list[str], dict[Any, int] | None]:
    """(class names, value → id map, or None when the column already holds ``ClassLabel`` ids)."""
    if column not in ds.column_names:
        raise common.BadInput(f"no label column {column!r}; columns: {ds.column_names}")
    feature = ds.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names), None
    values = sorted({v for v in ds.unique(column) if v is not None})
    return [str(v) for v in values], {v: i for i, v in enumerate(values)}


def _transform_batch(batch: dict[str, list], *, image_column: str, label_column: str, transform, to_id):
    result = {"pixel_values": [transform(read_image(value)) for value in batch[image_column]]}
    if label_column in batch:
        result["labels"] = [to_id(v) for v in batch[label_column]]
    return result


def prepare(raw, transform: Callable, *, image_column, label_column, to_id, limit, cache_dir, num_proc):
    """Skip images that do not decode (checked once, cached), then transform on the fly."""
    if raw is None:
        return None
    raw = raw.select(range(min(limit, len(raw)))) if limit else raw
    dataset, _ = prepare_image_dataset(
        raw, transform, image_column=image_column, num_proc=num_proc, cache_dir=cache_dir
    )
    # prepare_image_dataset's own on-the-fly transform keeps only pixel_values: replace it by one
    # that also returns the labels.
    return dataset.with_transform(
        functools.partial(
            _transform_batch,
            image_column=image_column,
            label_column=label_column,
            transform=transform,
            to_id=to_id,
        )
    )


def collate(examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    batch = {"pixel_values": torch.stack([torch.as_tensor(e["pixel_values"]) for e in examples])}
    if "labels" in examples[0]:
        batch["labels"] = torch.tensor([e["labels"] for e in examples], dtype=torch.long)
    return batch


class ImageClassificationTrainer(layer_decay.LayerDecayTrainer):
    """Layer-wise LR decay (see :class:`layer_decay.LayerDecayTrainer`) and, in training, timm's
    mixup/cutmix with a soft-target cross-entropy (label smoothing folded into the targets)."""

    def __init__(self, *args, mixup=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.mixup = mixup
        if mixup is not None:
            self.loss_is_scaled_for_ga = False  # our loss is a per-batch mean

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.mixup is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        from timm.data.mixup import mixup_target

        pixel_values, labels = inputs["pixel_values"], inputs["labels"]
        if len(labels) % 2 == 0:
            pixel_values, targets = self.mixup(pixel_values, labels)
        else:  # timm mixes a batch with its flipped self and needs an even size: smoothing only here
            targets = mixup_target(labels, self.mixup.num_classes, 1.0, self.mixup.label_smoothing)
        outputs = model(pixel_values=pixel_values)
        log_probs = F.log_softmax(outputs.logits.float(), dim=-1)
        loss = torch.sum(-targets * log_probs, dim=-1).mean()
        return (loss, outputs) if return_outputs else loss


# --------------------------------------------------------------------------------------------------


def _raw_splits(model_args, data_args, training_args) -> tuple:
    """``(train, validation, test)`` raw splits; validation held out of the training data when none is
    given (the training data is required: it defines the classes)."""
    raw_train = common.load_split(data_args, "train", "vision", model_args.cache_dir)
    raw_eval = (
        common.load_split(data_args, "validation", "vision", model_args.cache_dir)
        if training_args.do_eval
        else None
    )
    raw_test = (
        common.load_split(data_args, "test", "vision", model_args.cache_dir)
        if training_args.do_predict
        else None
    )
    if raw_train is None:
        raise common.BadInput(
            "give training data (--train_dir, --train_file or --dataset_name); it defines the classes"
        )
    if training_args.do_eval and raw_eval is None:
        if data_args.dataset_name:
            raise common.BadInput(f"the dataset has no split {data_args.eval_split_name!r}")
        held_out = raw_train.train_test_split(test_size=data_args.train_val_split, seed=training_args.seed)
        raw_train, raw_eval = held_out["train"], held_out["test"]
    return raw_train, raw_eval, raw_test


def _pretrained_normalisation(model_args) -> tuple:
    """The mean/std the encoder was pretrained with (ImageNet's when the checkpoint has no processor)."""
    try:
        pretrained_processor = AutoImageProcessor.from_pretrained(
            model_args.model_name_or_path, cache_dir=model_args.cache_dir
        )
        return pretrained_processor.image_mean, pretrained_processor.image_std
    except (OSError, ValueError, AttributeError):
        return IMAGENET_MEAN, IMAGENET_STD


def _config_fields(labels: list[str], model_args) -> dict:
    """The config's labels (and ``--drop_path_rate`` when given)."""
    fields = dict(
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        problem_type="single_label_classification",
    )
    if model_args.drop_path_rate is not None:
        fields["drop_path_rate"] = model_args.drop_path_rate
    return fields


def _mixup(aug_args, training_args, num_classes: int):
    """timm's ``Mixup`` for ``--mixup``/``--cutmix`` (label smoothing folded into its targets), or None."""
    if not aug_args.mixing:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=aug_args.mixup,
        cutmix_alpha=aug_args.cutmix,
        cutmix_minmax=aug_args.cutmix_minmax,
        prob=aug_args.mixup_prob,
        switch_prob=aug_args.mixup_switch_prob,
        mode=aug_args.mixup_mode,
        label_smoothing=training_args.label_smoothing_factor,
        num_classes=num_classes,
    )


def _evaluate_and_predict(
    trainer: ImageClassificationTrainer, eval_dataset, test_dataset, labels: list, data_args
) -> list:
    """Evaluate, and write the test split's predicted classes to ``predict_results.txt``; the card's
    results."""
    results = []
    if eval_dataset is not None:
        metrics = common.evaluate(trainer, eval_dataset)
        split = data_args.eval_split_name if data_args.dataset_name else "validation"
        results.append((split, common.split_metrics(metrics)))
    if test_dataset is not None:
        output = trainer.predict(test_dataset, metric_key_prefix="predict")
        if output.label_ids is not None:
            trainer.log_metrics("predict", output.metrics)
            trainer.save_metrics("predict", output.metrics)
        if trainer.is_world_process_zero():
            logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
            with open(Path(trainer.args.output_dir) / "predict_results.txt", "w") as writer:
                writer.write("index\tprediction\n")
                for index, value in enumerate(np.argmax(logits, axis=-1)):
                    writer.write(f"{index}\t{labels[int(value)]}\n")
    return results


def _write_card(
    trainer: ImageClassificationTrainer, hub, args: tuple, size: int, num_labels: int, results: list
) -> None:
    """``args``: the script's (model, data, augmentation, training) arguments."""
    model_args, data_args, aug_args, training_args = args
    config = trainer.model.config
    recipe = [
        ("layer-wise lr decay", model_args.layer_decay),
        ("drop path", config.drop_path_rate if hasattr(config, "drop_path_rate") else None),
        ("input size / eval crop", f"{size} / {aug_args.crop_pct}"),
        ("auto augment", aug_args.auto_augment),
        ("random erasing", aug_args.reprob),
        ("mixup / cutmix", f"{aug_args.mixup} / {aug_args.cutmix}" if aug_args.mixing else "off"),
        ("label smoothing", training_args.label_smoothing_factor),
    ]
    card_and_push.write_card_and_push(
        trainer,
        hub,
        template="finetuned_image_classification",
        model_args=model_args,
        dataset=card_and_push.DatasetDescription.from_args(data_args),
        task_type="image-classification",
        task_name="Image Classification",
        modality="vision",
        results=results,
        usage=(
            "from transformers import pipeline\n{import_data2vec_hf}"
            'classifier = pipeline("image-classification", model="{model}")\n'
            'classifier("image.jpg")'
        ),
        extra_training=recipe,
        tags=["timm-augmentation"],
        num_labels=num_labels,
    )


@common.reports_bad_input
def main(argv=None) -> int:
    args = common.parse_arguments(
        (ModelArguments, DataTrainingArguments, AugmentationArguments, TrainingArguments), argv
    )
    model_args, data_args, aug_args, training_args = args
    hub = card_and_push.take_hub_settings(training_args)
    training_args.remove_unused_columns = False  # images are transformed on the fly from their column
    common.setup_logging(training_args)
    checkpoint = common.resolve_checkpoint(training_args)
    set_seed(training_args.seed)

    raw_train, raw_eval, raw_test = _raw_splits(model_args, data_args, training_args)
    label_column = data_args.label_column_name
    labels, value_to_id = label_names(raw_train, label_column)
    config = common.load_config(model_args, **_config_fields(labels, model_args))
    model = common.load_model(AutoModelForImageClassification, model_args, config)

    mean, std = _pretrained_normalisation(model_args)
    image_size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    size = aug_args.input_size or image_size
    train_transform, eval_transform = build_transforms(aug_args, size, mean, std)
    common_kwargs = dict(
        image_column=resolve_column(raw_train, data_args.image_column_name, "vision"),
        label_column=label_column,
        to_id=(lambda v: int(v)) if value_to_id is None else value_to_id.__getitem__,
        cache_dir=model_args.cache_dir,
        num_proc=data_args.preprocessing_num_workers,
    )
    with training_args.main_process_first(desc="checking images"):
        train_dataset = (
            prepare(raw_train, train_transform, limit=data_args.max_train_samples, **common_kwargs)
            if training_args.do_train
            else None
        )
        eval_dataset = prepare(raw_eval, eval_transform, limit=data_args.max_eval_samples, **common_kwargs)
        test_dataset = prepare(raw_test, eval_transform, limit=data_args.max_predict_samples, **common_kwargs)

    def compute_metrics(p: EvalPrediction) -> dict:
        logits = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        metrics = {"accuracy": top_k_accuracy(logits, p.label_ids, k=1)}
        if len(labels) > 5:
            metrics["top5_accuracy"] = top_k_accuracy(logits, p.label_ids, k=5)
        return metrics

    trainer = ImageClassificationTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=build_image_processor(aug_args, size, mean, std),
        data_collator=collate,
        compute_metrics=compute_metrics,
        layer_decay=model_args.layer_decay,
        mixup=_mixup(aug_args, training_args, len(labels)),
    )
    if training_args.do_train:
        common.train(trainer, checkpoint, len(train_dataset))
    results = _evaluate_and_predict(trainer, eval_dataset, test_dataset, labels, data_args)
    _write_card(trainer, hub, args, size, len(labels), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
