"""What a pretraining run leaves behind: the exported encoder.

The export is written into a temporary folder inside the output folder and moved into place only
when it is complete, so a full disk or a kill never leaves a half-written model next to the
checkpoints.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from data2vec_hf.atomic import replace_path

from .checkpoints import CheckpointError, is_disk_full

EXPORT_TEMPORARY = ".export-incomplete"


def export(accelerator, unwrapped, processor, args, spec, progress, last_metrics: dict):
    """Write the student encoder (a plain transformers checkpoint for v1), its processor, the full
    pretraining checkpoint in ``pretraining_model/`` and a model card (:func:`push_output` uploads them).
    ``unwrapped`` is the pretraining model with full tensors (on the main process)."""
    if not accelerator.is_main_process:
        return
    output_dir = Path(args.output_dir)
    temporary = output_dir / EXPORT_TEMPORARY
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        write_export(
            temporary, unwrapped, processor, args, spec, progress, last_metrics, accelerator.num_processes
        )
        for item in sorted(temporary.iterdir()):  # into the output folder, beside the checkpoints
            replace_path(item, output_dir / item.name)
        temporary.rmdir()
    except Exception as error:  # OSError, or a library's own error wrapping one (safetensors)
        shutil.rmtree(temporary, ignore_errors=True)
        reason = "the disk is full" if is_disk_full(error) else f"{type(error).__name__}: {error}"
        raise CheckpointError(
            f"exporting the model to {output_dir} failed ({reason}); the training checkpoints in "
            f"{output_dir / 'checkpoints'} are intact"
        ) from error


class PushError(CheckpointError):
    """``--push_to_hub`` failed at the end of a run; the output folder is complete and stays as it is."""


def push_output(accelerator, args) -> None:
    """``--push_to_hub``: upload the finished output folder in one commit (main process). Called after
    ``train_summary.json`` is written, so that a failed push loses nothing; a refused token or a Hub that
    stays unavailable is a :class:`PushError` naming the repository."""
    from data2vec_hf.hub import HubPushError, push_folder_to_hub

    if not (args.push_to_hub and accelerator.is_main_process):
        return
    output_dir = Path(args.output_dir)
    try:
        push_folder_to_hub(
            output_dir,
            args.hub_model_id or output_dir.name,
            token=args.hub_token,
            private=args.hub_private_repo or None,
        )
    except HubPushError as error:
        raise PushError(
            f"--push_to_hub: {error}; nothing is lost: {output_dir} holds the model, the checkpoints and "
            "train_summary.json"
        ) from error


def write_export(
    folder: Path, unwrapped, processor, args, spec, progress, last_metrics: dict, num_processes: int
) -> None:
    """The student encoder, its processor, ``pretraining_model/`` and the model card, into ``folder``."""
    folder.mkdir(parents=True)
    backbone = getattr(unwrapped, unwrapped.base_model_prefix)
    remote = {"remote_code": True} if args.remote_code else {}  # 2.0 only (checked at start-up)
    backbone.save_pretrained(folder, **remote)
    if processor is not None:
        processor.save_pretrained(folder)
    unwrapped.save_pretrained(folder / "pretraining_model", **remote)
    model_card(unwrapped.config, args, spec, progress, last_metrics, num_processes).save(folder / "README.md")


def model_card(config, args, spec, progress, last_metrics: dict, num_processes: int):
    """The exported model's card: how to load it, how it was trained, first and last metrics."""
    from data2vec_hf.cards import render_model_card
    from huggingface_hub import ModelCardData

    model_name = args.hub_model_id or Path(args.output_dir).name
    first = progress.first_metrics or {}
    results = [
        (k, f"{first[k]:.4g}", f"{last_metrics[k]:.4g}")
        for k in ("loss", "target_var", "pred_var")
        if k in first and k in last_metrics
    ]
    hub_base = args.model_name_or_path and not os.path.isdir(args.model_name_or_path)
    registers = (
        "" if args.version == 1 or args.remote_code else "import data2vec_hf  # registers data2vec 2.0\n"
    )
    trust = ", trust_remote_code=True)" if args.remote_code else ")"
    return render_model_card(
        "pretraining",
        ModelCardData(
            library_name="transformers",
            tags=["data2vec", f"data2vec-{args.version}", spec.name, "self-supervised", "data2vec-hf"],
            datasets=[args.dataset_name] if args.dataset_name else None,
            base_model=args.model_name_or_path if hub_base else None,
            pipeline_tag="feature-extraction",
        ),
        model_name=model_name,
        version="1.0" if args.version == 1 else "2.0",
        modality=spec.name,
        top_k=config.average_top_k_layers,
        usage=f'from transformers import AutoModel\n{registers}model = AutoModel.from_pretrained("{model_name}"{trust}',
        training_table=[
            ("updates", progress.num_updates),
            ("samples seen", progress.samples_seen),
            ("dataset", args.dataset_name or args.train_dir or args.train_file or "embedded default corpus"),
            ("peak learning rate", args.learning_rate),
            ("schedule", args.lr_scheduler_type),
            (
                "batch size per device x accumulation x processes",
                f"{args.per_device_train_batch_size} x {args.gradient_accumulation_steps} x {num_processes}",
            ),
            (
                "EMA decay",
                f"{config.ema_decay} → {config.ema_end_decay} over {config.ema_anneal_end_step} updates",
            ),
            ("hidden size / layers", f"{config.hidden_size} / {config.num_hidden_layers}"),
        ],
        results_table=results,
    )
