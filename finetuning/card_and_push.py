"""The end of a fine-tuning run: the model card (``OUTPUT_DIR/README.md``, rendered from this package's
templates, with the evaluation results in its model-index), the optional ``--remote_code`` files, and the
``--push_to_hub`` of the finished folder through :func:`data2vec_hf.hub.push_folder_to_hub` (one commit,
safetensors only) instead of ``Trainer.push_to_hub``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data2vec_hf.cards import render_model_card
from data2vec_hf.hub import push_folder_to_hub
from huggingface_hub import EvalResult, ModelCardData
from transformers import Trainer, TrainingArguments

logger = logging.getLogger(__name__)

# metric key → (model-index metric type, pretty name)
METRIC_NAMES = {
    "accuracy": ("accuracy", "Accuracy"),
    "top5_accuracy": ("top_5_accuracy", "Top-5 accuracy"),
    "f1": ("f1", "F1"),
    "matthews_correlation": ("matthews_correlation", "Matthews correlation"),
    "pearson": ("pearsonr", "Pearson correlation"),
    "spearmanr": ("spearmanr", "Spearman correlation"),
    "wer": ("wer", "WER"),
    "cer": ("cer", "CER"),
}


@dataclass
class HubSettings:
    """``--push_to_hub`` and friends, taken out of ``TrainingArguments`` so that ``Trainer`` neither
    creates the repository at start nor pushes checkpoints: the finished folder is pushed at the end."""

    push: bool
    repo_id: str
    token: str | None
    private: bool | None


def take_hub_settings(training_args: TrainingArguments) -> HubSettings:
    """The push settings of ``training_args``, whose ``push_to_hub`` is then turned off for ``Trainer``."""
    settings = HubSettings(
        push=bool(training_args.push_to_hub),
        repo_id=training_args.hub_model_id or Path(training_args.output_dir).name,
        token=training_args.hub_token,
        private=training_args.hub_private_repo,
    )
    training_args.push_to_hub = False
    return settings


@dataclass
class DatasetDescription:
    """Where the data came from, for the card: a Hub dataset (``hub_id``) or local files (``name``)."""

    name: str
    hub_id: str | None = None
    config: str | None = None

    @classmethod
    def from_args(cls, data_args, fallback: str = "local files") -> DatasetDescription:
        hub_id = getattr(data_args, "dataset_name", None)
        config = getattr(data_args, "dataset_config_name", None)
        if hub_id:
            return cls(name=f"{hub_id} ({config})" if config else hub_id, hub_id=hub_id, config=config)
        sources = [
            getattr(data_args, key, None)
            for key in ("train_file", "train_dir", "validation_file", "validation_dir")
        ]
        source = next((s for s in sources if s), None)
        return cls(name=Path(source).name if source else fallback)


def data2vec_version(config) -> str:
    """``"2.0"`` for the ``data2vec2-*`` model types, else ``"1.0"``."""
    return "2.0" if config.model_type.startswith("data2vec2") else "1.0"


def base_model_id(model_args) -> str | None:
    """The card's ``base_model``: ``--base_model_id``, else a Hub id given as ``--model_name_or_path``
    (``model_args``: a script's ``common.ModelArguments``)."""
    if model_args.base_model_id:
        return model_args.base_model_id
    path = model_args.model_name_or_path
    return None if os.path.exists(path) else path


def eval_results(
    results: Sequence[tuple[str, dict[str, float]]],
    *,
    task_type: str,
    task_name: str,
    dataset: DatasetDescription,
) -> list[EvalResult]:
    """One ``EvalResult`` per (split, metric) for the card's model-index."""
    entries = []
    for split, metrics in results:
        for key, value in metrics.items():
            metric_type, metric_name = METRIC_NAMES.get(key, (key, key))
            entries.append(
                EvalResult(
                    task_type=task_type,
                    task_name=task_name,
                    dataset_type=dataset.hub_id or "local",
                    dataset_name=dataset.name,
                    dataset_config=dataset.config,
                    dataset_split=split,
                    metric_type=metric_type,
                    metric_name=metric_name,
                    metric_value=round(float(value), 6),
                )
            )
    return entries


def training_table(trainer: Trainer, extra: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """The card's training rows (updates, epochs, schedule, optimizer, batch size, seed) plus ``extra``."""
    args = trainer.args
    batch = f"{args.per_device_train_batch_size} x {args.gradient_accumulation_steps} x {args.world_size}"
    return [
        ("updates", trainer.state.global_step),
        ("epochs", round(trainer.state.epoch or 0.0, 3)),
        ("peak learning rate", args.learning_rate),
        ("schedule", f"{_plain(args.lr_scheduler_type)}, warmup {args.warmup_steps}"),
        ("optimizer", f"{_plain(args.optim)}, weight decay {args.weight_decay}"),
        ("batch size per device x accumulation x processes", batch),
        ("seed", args.seed),
        *extra,
    ]


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)  # enum members as their plain value


def _import_line(version: str) -> str:
    return "import data2vec_hf  # registers the data2vec 2.0 classes\n" if version == "2.0" else ""


def _card_metadata(
    model_name: str,
    model_args,
    dataset: DatasetDescription,
    task_type: str,
    task_name: str,
    modality: str,
    version: str,
    results: Sequence[tuple[str, dict[str, float]]],
    tags: Sequence[str],
) -> ModelCardData:
    """The card's YAML metadata, with the model-index of ``results``."""
    metric_types = sorted({METRIC_NAMES.get(k, (k, k))[0] for _, metrics in results for k in metrics})
    return ModelCardData(
        model_name=model_name,
        base_model=base_model_id(model_args),
        datasets=[dataset.hub_id] if dataset.hub_id else None,
        library_name="transformers",
        pipeline_tag=task_type,
        tags=["data2vec", f"data2vec-{version}", modality, task_type, "data2vec-hf", *tags],
        metrics=metric_types or None,
        eval_results=eval_results(results, task_type=task_type, task_name=task_name, dataset=dataset) or None,
    )


def write_card_and_push(
    trainer: Trainer,
    hub: HubSettings,
    *,
    template: str,
    model_args,
    dataset: DatasetDescription,
    task_type: str,
    task_name: str,
    modality: str,
    results: Sequence[tuple[str, dict[str, float]]],
    usage: str,
    extra_training: Sequence[tuple[str, Any]] = (),
    tags: Sequence[str] = (),
    **variables: Any,
) -> Path | None:
    """Render ``model_cards/<template>.md`` into ``OUTPUT_DIR/README.md`` and push the folder when asked
    (main process only). ``model_args``: the script's ``common.ModelArguments``; ``results`` are
    ``(split, {metric: value})`` pairs; ``variables`` are extra template variables. Returns the card's
    path."""
    if not trainer.is_world_process_zero():
        return None
    output_dir = Path(trainer.args.output_dir)
    config = trainer.model.config
    version = data2vec_version(config)
    model_name = hub.repo_id
    remote_code = model_args.remote_code and write_remote_code(trainer.model, output_dir, version)
    if remote_code:  # the card's usage loads the folder's own code instead of importing data2vec_hf
        usage = usage.replace('model="{model}"', 'model="{model}", trust_remote_code=True')
    # combined_score (run_glue's mean of several metrics) stays in the JSON files, not in the card
    results = [(split, {k: v for k, v in m.items() if k != "combined_score"}) for split, m in results]
    card = render_model_card(
        template,
        _card_metadata(
            model_name, model_args, dataset, task_type, task_name, modality, version, results, tags
        ),
        model_name=model_name,
        base_model=base_model_id(model_args) or model_args.model_name_or_path,
        version=version,
        model_type=config.model_type,
        architecture=type(trainer.model).__name__,
        dataset=dataset.name,
        usage=usage.format(model=model_name, import_data2vec_hf="" if remote_code else _import_line(version)),
        training_table=training_table(trainer, extra_training),
        results_table=[
            (split, METRIC_NAMES.get(key, (key, key))[1], f"{value:.4f}")
            for split, metrics in results
            for key, value in metrics.items()
        ],
        **variables,
    )
    path = output_dir / "README.md"
    card.save(path)
    if hub.push:
        info = push_folder_to_hub(
            output_dir,
            hub.repo_id,
            token=hub.token,
            private=hub.private,
            commit_message=f"Fine-tuned {config.model_type} ({task_name}) with data2vec-hf",
        )
        logger.info(f"Pushed {output_dir} to {info.commit_url}")
    return path


def write_remote_code(model, output_dir: Path, version: str) -> bool:
    """``--remote_code``: the generated modelling files and ``auto_map`` next to the saved model (see
    ``data2vec_hf.remote_code``); False, with a warning, where there is nothing to do."""
    if version != "2.0":
        logger.warning("--remote_code ignored: a data2vec 1.0 model loads in plain transformers already")
        return False
    if not (output_dir / "config.json").is_file():
        logger.warning(f"--remote_code ignored: no model was saved in {output_dir} (train with --do_train)")
        return False
    from data2vec_hf.remote_code import export_remote_code

    files = export_remote_code(model, output_dir)
    logger.info(f"wrote {', '.join(p.name for p in files)} and the auto_map of {output_dir / 'config.json'}")
    return True
