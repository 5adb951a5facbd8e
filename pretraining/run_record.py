"""What wrote a checkpoint: ``training_run.json``, read before anything is loaded from it.

Every checkpoint records the run it belongs to (a random id kept across resumes), the model (version,
class, architecture config, parameter shapes) and the topology (processes, accumulation steps, batch,
workers, replicated or sharded). Resuming compares the record with the run about to continue:

- a checkpoint of another model (version, class, config, shapes) is the user's mistake, not damage: the
  run stops with exit code 2 naming the difference, before it writes anything;
- a topology that splits each update differently over processes and micro-batches (2 processes x 1
  micro-batch -> 1 x 2, and back) continues exactly, and the log says so; any change of the examples
  per update, of replicated vs sharded, and any change at all for a streamed dataset is refused;
- checkpoint rotation deletes only checkpoints of the same run (the same id).
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

from .checkpoints import CheckpointError

logger = logging.getLogger("data2vec_hf.pretraining")

RUN_RECORD = "training_run.json"
# config entries that do not describe the model (bookkeeping of transformers and of the run)
NOT_ARCHITECTURE = ("transformers_version", "_name_or_path", "architectures", "torch_dtype", "dtype")


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def describe_model(spec_name: str, version: int, model) -> dict:
    """The model part of a record: what a checkpoint's weights need to fit."""
    config = {k: v for k, v in model.config.to_dict().items() if k not in NOT_ARCHITECTURE}
    config = json.loads(json.dumps(config, default=str))  # as it reads back from the file (tuples -> lists)
    shapes = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    name = next(c.__name__ for c in type(model).__mro__ if not c.__name__.startswith("FSDP"))
    return {
        "modality": spec_name,
        "version": version,
        "model_class": name,
        "config": config,
        "shapes": shapes,
    }


def describe_topology(args, num_processes: int, streaming: bool, workers: int, sharded: bool) -> dict:
    """How an update is split: processes x micro-batches x examples (or ``max_tokens`` samples)."""
    return {
        "num_processes": num_processes,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "max_tokens": getattr(args, "max_tokens", None) or None,
        "streaming": streaming,
        "stream_workers": workers if streaming else None,
        "sharded": sharded,
    }


def read_run_record(folder: Path) -> dict | None:
    """The record of a checkpoint folder, or None for checkpoints written before records existed."""
    path = folder / RUN_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path} is unreadable ({error})") from error


def write_run_record(folder: Path, record: dict) -> None:
    (folder / RUN_RECORD).write_text(json.dumps(record, indent=1))


def check_same_model(folder: Path, written: dict, current: dict) -> None:
    """Raise :class:`CheckpointError` naming how the checkpoint's model differs from this run's."""

    def title(model: dict) -> str:
        return f"data2vec {model['version']}.0 {model['modality']}"

    def listed(keys: list[str]) -> str:
        text = ", ".join(
            f"{k}={written['config'].get(k)!r} -> {current['config'].get(k)!r}" for k in keys[:8]
        )
        return text + (" ..." if len(keys) > 8 else "")

    differences = []
    keys = sorted(set(written["config"]) | set(current["config"]))
    changed = [k for k in keys if written["config"].get(k) != current["config"].get(k)]
    shapes = [
        f"{name} {written['shapes'].get(name)} -> {current['shapes'].get(name)}"
        for name in sorted(set(written["shapes"]) | set(current["shapes"]))
        if written["shapes"].get(name) != current["shapes"].get(name)
    ]
    if (written["version"], written["modality"], written["model_class"]) != (
        current["version"],
        current["modality"],
        current["model_class"],
    ):
        differences.append(
            f"it is a {title(written)} checkpoint ({written['model_class']}) and this run is "
            f"{title(current)} ({current['model_class']})"
        )
    elif shapes:
        differences.append(f"config {listed(changed)}")
        differences.append(
            f"{len(shapes)} weight shape(s) differ: {'; '.join(shapes[:4])}"
            + (" ..." if len(shapes) > 4 else "")
        )
    if differences:
        raise CheckpointError(
            f"checkpoint {folder} does not fit this run's model: {'; '.join(differences)}. Nothing was "
            "loaded or deleted: resume with the flags that run was started with (--version, "
            "--config_name, --config_overrides), or start a new run in another --output_dir"
        )
    if changed:
        logger.warning(
            "the checkpoint was written with other settings, which this run changes: %s", listed(changed)
        )


def examples_per_update(topology: dict) -> str:
    per_device = (
        f"{topology['max_tokens']} samples"
        if topology["max_tokens"]
        else f"{topology['per_device_train_batch_size']} examples"
    )
    return (
        f"{topology['num_processes']} process(es) x {topology['gradient_accumulation_steps']} micro-batch(es) "
        f"x {per_device}"
    )


def check_topology(folder: Path, written: dict, current: dict) -> None:
    """Refuse a resume on a topology that cannot continue the run exactly; log one that can."""
    if written == current:
        return
    before, after = examples_per_update(written), examples_per_update(current)
    if written["sharded"] != current["sharded"]:
        kinds = {True: "sharded (FSDP2)", False: "replicated (DDP)"}
        raise CheckpointError(
            f"checkpoint {folder} holds a {kinds[written['sharded']]} model and this run is "
            f"{kinds[current['sharded']]}: resume with the same parallelism it was written with"
        )
    if written["streaming"] or current["streaming"]:
        raise CheckpointError(
            f"checkpoint {folder} was written by a streaming run on {before}"
            + (f" with {written['stream_workers']} DataLoader worker(s)" if written["streaming"] else "")
            + f"; this run is {after}"
            + (f" with {current['stream_workers']} worker(s)" if current["streaming"] else "")
            + ". A streamed dataset is resumed only on the topology that wrote it (same processes, "
            "--gradient_accumulation_steps, --per_device_train_batch_size, --dataloader_num_workers)"
        )
    same_batch = (written["per_device_train_batch_size"], written["max_tokens"]) == (
        current["per_device_train_batch_size"],
        current["max_tokens"],
    )
    splits = [t["num_processes"] * t["gradient_accumulation_steps"] for t in (written, current)]
    if not same_batch or splits[0] != splits[1]:
        raise CheckpointError(
            f"checkpoint {folder} was written with {before} per update; this run would take {after}, a "
            "different batch, and the rest of the epoch could not continue exactly. Keep processes x "
            f"--gradient_accumulation_steps = {splits[0]} and the same per-device batch (e.g. "
            f"--gradient_accumulation_steps {max(splits[0] // current['num_processes'], 1)} on "
            f"{current['num_processes']} process(es))"
        )
    logger.info(
        "resuming on another topology: %s per update, written with %s; every update holds the same "
        "examples as before, split differently",
        after,
        before,
    )


def run_id_of(folder: Path) -> str | None:
    try:
        record = read_run_record(folder)
    except CheckpointError:
        return None
    return record.get("run_id") if record else None
