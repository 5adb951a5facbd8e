"""The Accelerate training loop shared by ``pretrain_audio.py``, ``pretrain_vision.py`` and ``pretrain_text.py``.

Reads top to bottom: arguments → model → data → optimizer/schedule → (resume) → train → save.
A modality entry point supplies a :class:`ModalitySpec` (its model classes, arguments, data and
mask sampling); everything else — accumulation, loss normalisation, EMA, checkpointing, collapse
guard, logging, export, Hub push — is here once.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm.auto import tqdm
from transformers import get_scheduler

logger = logging.getLogger("data2vec_hf.pretraining")

CHECKPOINT_PREFIX = "step-"


class TrainingStopped(RuntimeError):
    """Training stopped on purpose (collapse guard, repeated non-finite losses)."""


# --------------------------------------------------------------------------------------------------
# The modality contract


@dataclasses.dataclass
class ModalitySpec:
    """What a modality entry point provides to the shared loop.

    Attributes:
        name: "audio", "vision" or "text".
        model_classes: ``{version: *ForPreTraining class}``.
        defaults: ``{version: {flag: value}}``, the released base recipe (learning rate, schedule, ...).
        add_arguments: adds the modality's own flags to the parser.
        build_data: ``(args, config, accelerator) -> (dataset, collate_fn, processor)``; the processor
            (feature extractor / image processor / tokenizer) is saved with the exported encoder.
        sample_masks: ``{version: (config, batch, generators) -> dict}`` of mask arguments for the forward,
            one generator per sample so masks do not depend on how batches are split over processes.
        prepare_config: optional hook ``(args, config) -> config`` run before the model is built
            (e.g. to set the vocabulary size from the tokenizer).
    """

    name: str
    model_classes: dict[int, type]
    defaults: dict[int, dict[str, Any]]
    add_arguments: Callable[[argparse.ArgumentParser], None]
    build_data: Callable
    sample_masks: dict[int, Callable]
    prepare_config: Callable | None = None


# --------------------------------------------------------------------------------------------------
# Arguments


def build_parser(spec: ModalitySpec) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=f"data2vec {spec.name} pretraining with Accelerate. Run with `accelerate launch` for "
        "several processes/GPUs/nodes; without any dataset argument it trains on a small embedded corpus.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = parser.add_argument_group("model")
    g.add_argument(
        "--version", type=int, choices=sorted(spec.model_classes), default=1, help="data2vec version"
    )
    g.add_argument(
        "--model_name_or_path",
        default=None,
        help="continue from a checkpoint (ours, or a native transformers data2vec one)",
    )
    g.add_argument(
        "--config_name",
        default=None,
        help="config to start from (path or name); default: the released base config",
    )
    g.add_argument(
        "--config_overrides",
        default=None,
        help='comma-separated overrides, e.g. "hidden_size=64,num_hidden_layers=2,conv_dim=(32,32)"',
    )

    g = parser.add_argument_group("data")
    g.add_argument("--dataset_name", default=None, help="a datasets hub name or loading script")
    g.add_argument("--dataset_config_name", default=None, help="the dataset configuration name")
    g.add_argument("--train_split_name", default="train", help="split to train on")
    g.add_argument("--streaming", action="store_true", help="stream the dataset instead of downloading it")
    g.add_argument("--train_dir", default=None, help="local folder of training files")
    g.add_argument("--train_file", default=None, help="local training file (csv/json/jsonl/txt)")
    g.add_argument("--cache_dir", default=None, help="where datasets and the embedded corpus are cached")
    g.add_argument(
        "--max_train_samples", type=int, default=None, help="truncate the training set (debugging)"
    )
    g.add_argument(
        "--preprocessing_num_workers", type=int, default=None, help="processes for dataset preprocessing"
    )
    g.add_argument("--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes")

    g = parser.add_argument_group("optimisation")
    g.add_argument(
        "--per_device_train_batch_size", type=int, default=8, help="samples per process and micro-batch"
    )
    g.add_argument(
        "--gradient_accumulation_steps", type=int, default=1, help="micro-batches per optimizer update"
    )
    recipe_flags = {
        "learning_rate": (float, "peak learning rate"),
        "weight_decay": (float, "AdamW weight decay (not applied to norms, biases, embeddings)"),
        "adam_beta1": (float, "AdamW beta1"),
        "adam_beta2": (float, "AdamW beta2"),
        "adam_epsilon": (float, "AdamW epsilon"),
        "max_grad_norm": (float, "gradient clipping norm (0 disables)"),
    }
    for name, (kind, text) in recipe_flags.items():
        g.add_argument(
            f"--{name}",
            type=kind,
            default=argparse.SUPPRESS,
            help=f"{text} (default: {recipe_default(spec, name)})",
        )
    g.add_argument("--max_train_steps", type=int, default=1000, help="number of optimizer updates")
    g.add_argument(
        "--lr_scheduler_type",
        default=argparse.SUPPRESS,
        help="tri_stage (fairseq's) or any transformers scheduler name (cosine, linear, constant_with_warmup, ...) "
        f"(default: {recipe_default(spec, 'lr_scheduler_type')})",
    )
    g.add_argument(
        "--num_warmup_steps",
        type=int,
        default=None,
        help="warmup updates (default: 3%% of the run for tri_stage, else the recipe's warmup fraction)",
    )
    g.add_argument(
        "--tri_stage_ratios",
        default="0.03,0.9,0.07",
        help="warmup/hold/decay fractions of the tri_stage schedule",
    )
    g.add_argument("--seed", type=int, default=42, help="random seed (masks, init, data order)")
    g.add_argument(
        "--mixed_precision",
        choices=["no", "fp16", "bf16"],
        default=None,
        help="overrides accelerate's config",
    )
    g.add_argument(
        "--max_nonfinite_updates",
        type=int,
        default=5,
        help="stop after this many updates in a row with a NaN/inf loss (they are skipped)",
    )

    g = parser.add_argument_group("checkpointing and logging")
    g.add_argument("--output_dir", required=True, help="where the encoder, checkpoints and logs are written")
    g.add_argument(
        "--overwrite_output_dir", action="store_true", help="allow a non-empty output dir without resuming"
    )
    g.add_argument(
        "--checkpointing_steps",
        type=int,
        default=500,
        help="save a resumable checkpoint every N updates (and at the end)",
    )
    g.add_argument("--checkpoints_total_limit", type=int, default=2, help="keep only the last K checkpoints")
    g.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help="a checkpoint folder, or 'latest' (starts fresh when none exists)",
    )
    g.add_argument("--logging_steps", type=int, default=10, help="log metrics every N updates")
    g.add_argument("--with_tracking", action="store_true", help="log metrics to the trackers in --report_to")
    g.add_argument(
        "--report_to", default="tensorboard", help="accelerate tracker(s): tensorboard, wandb, all, ..."
    )
    g.add_argument(
        "--push_to_hub", action="store_true", help="upload the output folder to the Hub at the end"
    )
    g.add_argument(
        "--hub_model_id", default=None, help="repository id for --push_to_hub (default: output dir name)"
    )
    g.add_argument("--hub_token", default=None, help="Hub token (default: the logged-in one)")
    g.add_argument("--hub_private_repo", action="store_true", help="create the Hub repository as private")

    spec.add_arguments(parser.add_argument_group(spec.name))
    return parser


def recipe_default(spec: ModalitySpec, name: str) -> str:
    """How ``--help`` shows a default that depends on ``--version``."""
    return ", ".join(f"v{version}: {values[name]}" for version, values in sorted(spec.defaults.items()))


def apply_recipe_defaults(spec: ModalitySpec, args) -> None:
    """Fill the optimisation flags the user did not set from the released recipe of ``--version``."""
    for name, value in spec.defaults[args.version].items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)


def parse_config_overrides(text: str | None) -> dict[str, Any]:
    """Parse ``"a=1,b=0.5,c=(32,32),d=true,e=gelu"`` into typed values."""
    if not text:
        return {}
    items, depth, current = [], 0, ""
    for char in text:  # split on commas outside brackets
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    overrides = {}
    for item in filter(None, (i.strip() for i in items)):
        if "=" not in item:
            raise ValueError(f"config override {item!r} is not of the form key=value")
        key, raw = (s.strip() for s in item.split("=", 1))
        lowered = raw.lower()
        if lowered in ("true", "false"):
            value = lowered == "true"
        elif lowered in ("none", "null"):
            value = None
        else:
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw
        overrides[key] = value
    return overrides


# --------------------------------------------------------------------------------------------------
# Model, optimizer, schedule


def build_model(spec: ModalitySpec, args) -> nn.Module:
    model_cls = spec.model_classes[args.version]
    overrides = parse_config_overrides(args.config_overrides)
    config_cls = model_cls.config_class
    if args.model_name_or_path:
        config = config_cls.from_pretrained(args.model_name_or_path, **overrides)
    elif args.config_name:
        config = config_cls.from_pretrained(args.config_name, **overrides)
    else:
        config = config_cls(**overrides)
    unknown = [k for k in overrides if not hasattr(config, k)]
    if unknown:
        raise ValueError(f"unknown config field(s) in --config_overrides: {', '.join(unknown)}")
    if spec.prepare_config is not None:
        config = spec.prepare_config(args, config)
    if args.model_name_or_path:
        return model_cls.from_pretrained(args.model_name_or_path, config=config)
    return model_cls(config)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on Linear/Conv weight matrices only — never on norms, biases,
    embeddings, mask/CLS tokens or position tables. The (frozen) EMA teacher is left out."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            is_matrix = isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d) and name == "weight"
            (decay if is_matrix else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def tri_stage_lambda(total_steps: int, ratios: tuple[float, float, float], init_scale=0.01, final_scale=0.01):
    """fairseq's tri-stage schedule: linear warmup from ``init_scale``, hold, exponential decay to
    ``final_scale`` (multipliers of the peak learning rate)."""
    warmup, hold = (round(r * total_steps) for r in ratios[:2])
    decay = max(total_steps - warmup - hold, 0)
    decay_factor = -math.log(final_scale) / decay if decay else 0.0

    def multiplier(step: int) -> float:
        if step < warmup:
            return init_scale + (1 - init_scale) * step / warmup
        if step < warmup + hold:
            return 1.0
        if step < warmup + hold + decay:
            return math.exp(-decay_factor * (step - warmup - hold))
        return final_scale

    return multiplier


def build_scheduler(args, optimizer, spec: ModalitySpec):
    if args.lr_scheduler_type == "tri_stage":
        ratios = tuple(float(r) for r in args.tri_stage_ratios.split(","))
        if len(ratios) != 3 or abs(sum(ratios) - 1) > 1e-6:
            raise ValueError(
                f"--tri_stage_ratios must be three fractions summing to 1, got {args.tri_stage_ratios}"
            )
        return torch.optim.lr_scheduler.LambdaLR(optimizer, tri_stage_lambda(args.max_train_steps, ratios))
    warmup = args.num_warmup_steps
    if warmup is None:
        warmup = int(args.warmup_fraction * args.max_train_steps)
    return get_scheduler(
        args.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=args.max_train_steps
    )


# --------------------------------------------------------------------------------------------------
# Data position, per-sample masks


class WithIndex(Dataset):
    """Adds each example's dataset index, from which its mask seed is derived."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return index, self.dataset[index]


class WithCounter(IterableDataset):
    """Streaming counterpart of :class:`WithIndex` (a running count per process)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __iter__(self):
        yield from enumerate(self.dataset)


class MaskingCollator:
    """Pads a batch with the modality's collator, then samples each example's mask from a generator
    seeded by (seed, epoch, example index): masks do not depend on batch size or process count."""

    def __init__(self, collate, sample_masks, config, seed: int):
        self.collate, self.sample_masks, self.config, self.seed = collate, sample_masks, config, seed
        self.epoch = 0

    def __call__(self, items):
        indices, examples = zip(*items)
        batch = self.collate(list(examples))
        generators = [
            torch.Generator().manual_seed(hash((self.seed, self.epoch, int(i))) & 0x7FFF_FFFF_FFFF_FFFF)
            for i in indices
        ]
        batch.update(self.sample_masks(self.config, batch, generators))
        return batch


@dataclasses.dataclass
class Progress:
    """Resumable loop state, saved with every checkpoint via ``register_for_checkpointing``."""

    num_updates: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0
    samples_seen: int = 0
    first_metrics: dict | None = None
    history: list = dataclasses.field(default_factory=list)  # (update, loss, target_var) every logging step

    def state_dict(self):
        return dataclasses.asdict(self)

    def load_state_dict(self, state):
        for key, value in state.items():
            setattr(self, key, value)


# --------------------------------------------------------------------------------------------------
# Checkpoints


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (incomplete saves live under a temporary name)."""
    if not checkpoint_dir.is_dir():
        return []
    found = [p for p in checkpoint_dir.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def save_checkpoint(accelerator: Accelerator, checkpoint_dir: Path, step: int, keep: int) -> Path:
    """Write the full training state atomically: into a temporary folder, then one rename.
    A kill during the save leaves the previous checkpoints intact."""
    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{step}"
    temporary = checkpoint_dir / f".incomplete-{CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
        for old in list_checkpoints(checkpoint_dir)[: -max(keep, 1)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(argument: str | None, checkpoint_dir: Path) -> Path | None:
    if not argument:
        return None
    if argument == "latest":
        found = list_checkpoints(checkpoint_dir)
        return found[-1] if found else None
    path = Path(argument)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {argument}: no such checkpoint folder")
    return path


# --------------------------------------------------------------------------------------------------
# Output


def check_output_dir(args) -> Path:
    output_dir = Path(args.output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise SystemExit(f"error: output dir {output_dir} is not writable: {error}") from error
    existing = [p for p in output_dir.iterdir() if p.name not in ("checkpoints", "runs")]
    if existing and not args.resume_from_checkpoint and not args.overwrite_output_dir:
        raise SystemExit(
            f"error: output dir {output_dir} is not empty; pass --resume_from_checkpoint latest to continue "
            "or --overwrite_output_dir to start over"
        )
    return output_dir


def export(accelerator, model, processor, args, spec: ModalitySpec, progress: Progress, last_metrics: dict):
    """Write the student encoder (a plain transformers checkpoint for v1), its processor, the full
    pretraining checkpoint in ``pretraining_model/`` and a model card; push when asked."""
    from data2vec_hf.cards import render_model_card
    from data2vec_hf.hub import push_folder_to_hub
    from huggingface_hub import ModelCardData

    if not accelerator.is_main_process:
        return
    output_dir = Path(args.output_dir)
    unwrapped = accelerator.unwrap_model(model)
    backbone = getattr(unwrapped, unwrapped.base_model_prefix)
    backbone.save_pretrained(output_dir)
    if processor is not None:
        processor.save_pretrained(output_dir)
    unwrapped.save_pretrained(output_dir / "pretraining_model")

    config = unwrapped.config
    model_name = args.hub_model_id or output_dir.name
    first = progress.first_metrics or {}
    results = [
        (k, f"{first[k]:.4g}", f"{last_metrics[k]:.4g}")
        for k in ("loss", "target_var", "pred_var")
        if k in first and k in last_metrics
    ]
    card = render_model_card(
        "pretraining",
        ModelCardData(
            library_name="transformers",
            tags=["data2vec", f"data2vec-{args.version}", spec.name, "self-supervised", "data2vec-hf"],
            datasets=[args.dataset_name] if args.dataset_name else None,
            base_model=args.model_name_or_path
            if args.model_name_or_path and not os.path.isdir(args.model_name_or_path)
            else None,
            pipeline_tag="feature-extraction",
        ),
        model_name=model_name,
        version="1.0" if args.version == 1 else "2.0",
        modality=spec.name,
        top_k=config.average_top_k_layers,
        usage=(
            "from transformers import AutoModel\n"
            + ("" if args.version == 1 else "import data2vec_hf  # registers data2vec 2.0\n")
            + f'model = AutoModel.from_pretrained("{model_name}")'
        ),
        training_table=[
            ("updates", progress.num_updates),
            ("samples seen", progress.samples_seen),
            ("dataset", args.dataset_name or args.train_dir or args.train_file or "embedded default corpus"),
            ("peak learning rate", args.learning_rate),
            ("schedule", args.lr_scheduler_type),
            (
                "batch size per device x accumulation x processes",
                f"{args.per_device_train_batch_size} x {args.gradient_accumulation_steps} x {accelerator.num_processes}",
            ),
            (
                "EMA decay",
                f"{config.ema_decay} → {config.ema_end_decay} over {config.ema_anneal_end_step} updates",
            ),
            ("hidden size / layers", f"{config.hidden_size} / {config.num_hidden_layers}"),
        ],
        results_table=results,
    )
    card.save(output_dir / "README.md")
    if args.push_to_hub:
        push_folder_to_hub(
            output_dir,
            args.hub_model_id or output_dir.name,
            token=args.hub_token,
            private=args.hub_private_repo or None,
        )


# --------------------------------------------------------------------------------------------------
# The loop


def run(spec: ModalitySpec, argv: list[str] | None = None) -> int:
    parser = build_parser(spec)
    args = parser.parse_args(argv)
    apply_recipe_defaults(spec, args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    from .data import DataError

    try:
        train(spec, args)
    except TrainingStopped as stop:
        print(f"\ntraining stopped: {stop}", file=sys.stderr, flush=True)
        return 1
    except DataError as error:  # bad input data: say what is wrong, no traceback into the pipeline
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    return 0


def train(spec: ModalitySpec, args) -> None:
    output_dir = check_output_dir(args)
    checkpoint_dir = output_dir / "checkpoints"
    accelerator = Accelerator(
        # without an accelerator device, several launched processes must still form a (gloo) group:
        # accelerate only does that when told it runs on CPU
        cpu=not torch.accelerator.is_available(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        # the schedule counts optimizer updates; accelerate would otherwise step it once per process
        step_scheduler_with_optimizer=False,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to if args.with_tracking else None,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "runs")
        ),
        # a seeded sampler makes the data order a function of (seed, epoch), so resuming can skip batches
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(args.seed)
    logger.info(
        "processes: %d, device: %s, mixed precision: %s",
        accelerator.num_processes,
        accelerator.device,
        accelerator.mixed_precision,
    )

    with accelerator.main_process_first():  # builds the default corpus / tokenizer once, then caches
        model = build_model(spec, args)
        config = model.config
        dataset, collate, processor = spec.build_data(args, config, accelerator)
    streaming = isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__")
    collator = MaskingCollator(collate, spec.sample_masks[args.version], config, args.seed)
    dataloader = DataLoader(
        WithCounter(dataset) if streaming else WithIndex(dataset),
        batch_size=args.per_device_train_batch_size,
        shuffle=not streaming,
        collate_fn=collator,
        num_workers=args.dataloader_num_workers,
        # its own generator: creating an iterator (also when resuming) must not draw from the global RNG,
        # whose restored state drives dropout after a resume
        generator=torch.Generator().manual_seed(args.seed),
        drop_last=False,
    )

    optimizer = torch.optim.AdamW(
        param_groups(model, args.weight_decay),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
    )
    scheduler = build_scheduler(args, optimizer, spec)
    model, optimizer, dataloader, scheduler = accelerator.prepare(model, optimizer, dataloader, scheduler)
    progress = Progress()
    accelerator.register_for_checkpointing(progress)
    unwrapped = accelerator.unwrap_model(model)
    trainable = [p for p in model.parameters() if p.requires_grad]

    resume = resolve_resume(args.resume_from_checkpoint, checkpoint_dir)
    if resume is not None:
        accelerator.load_state(str(resume))
        logger.info(
            "resumed from %s at update %d (epoch %d, batch %d)",
            resume,
            progress.num_updates,
            progress.epoch,
            progress.batches_in_epoch,
        )
    elif args.resume_from_checkpoint:
        logger.info("no checkpoint to resume from in %s; starting from scratch", checkpoint_dir)

    if args.with_tracking:
        accelerator.init_trackers(
            "data2vec_pretraining",
            config={
                k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in vars(args).items()
            },
        )

    bar = tqdm(
        total=args.max_train_steps,
        initial=progress.num_updates,
        disable=not accelerator.is_local_main_process,
        desc=f"data2vec {spec.name}",
        # redrawn in place on a terminal; in a log file, one line every 30 s instead of every update
        mininterval=0.1 if sys.stderr.isatty() else 30.0,
    )
    window = torch.zeros(4, device=accelerator.device)  # masked positions, loss sum, non-finite flag, samples
    last_metrics: dict = {}
    started, samples_at_start = time.perf_counter(), progress.samples_seen
    model.train()

    while progress.num_updates < args.max_train_steps:
        collator.epoch = progress.epoch
        if hasattr(dataloader, "set_epoch"):
            dataloader.set_epoch(progress.epoch)
        epoch_loader = dataloader
        if progress.batches_in_epoch:
            epoch_loader = accelerator.skip_first_batches(dataloader, progress.batches_in_epoch)
        for batch in epoch_loader:
            with accelerator.accumulate(model):
                out = model(**batch)
                loss_sum = out.loss * out.num_masked  # summed: normalised below by the global count
                finite = bool(torch.isfinite(loss_sum))
                window += torch.stack(
                    [
                        out.num_masked.float(),
                        loss_sum.detach().float() if finite else torch.zeros((), device=window.device),
                        torch.tensor(0.0 if finite else 1.0, device=window.device),
                        torch.tensor(float(len(next(iter(batch.values())))), device=window.device),
                    ]
                )
                accelerator.backward(loss_sum)
                progress.batches_in_epoch += 1
                if not accelerator.sync_gradients:
                    continue

                totals = accelerator.reduce(window, reduction="sum")
                window.zero_()
                masked, loss_total, nonfinite, samples = totals.tolist()
                if nonfinite > 0 or masked == 0:
                    optimizer.zero_grad(set_to_none=True)
                    progress.nonfinite_in_row += int(nonfinite > 0)
                    progress.nonfinite_total += int(nonfinite > 0)
                    if progress.nonfinite_in_row >= args.max_nonfinite_updates:
                        raise TrainingStopped(
                            f"{progress.nonfinite_in_row} updates in a row had a NaN/inf loss "
                            f"(--max_nonfinite_updates {args.max_nonfinite_updates}); the last good checkpoint is kept in {checkpoint_dir}"
                        )
                    continue
                progress.nonfinite_in_row = 0

                # DDP averaged the per-process sums; turn that into the sum over all processes divided
                # by the number of masked positions in the whole update.
                torch._foreach_mul_(
                    [p.grad for p in trainable if p.grad is not None], accelerator.num_processes / masked
                )
                if args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                progress.num_updates += 1
                progress.samples_seen += int(samples)
                decay = unwrapped.ema_step(progress.num_updates)

                stats = accelerator.reduce(
                    torch.stack([out.target_var, out.pred_var]).float(), reduction="mean"
                ).tolist()
                last_metrics = {
                    "loss": loss_total / masked,
                    "lr": scheduler.get_last_lr()[0],
                    "ema_decay": decay,
                    "target_var": stats[0],
                    "pred_var": stats[1],
                    "masked_fraction": float(out.mask.float().mean()),
                    "samples_per_s": (progress.samples_seen - samples_at_start)
                    / max(time.perf_counter() - started, 1e-9),
                }
                if progress.first_metrics is None:
                    progress.first_metrics = dict(last_metrics)
                check_collapse(config, progress.num_updates, last_metrics, checkpoint_dir)
                bar.update(1)
                bar.set_postfix(
                    {k: f"{v:.3g}" for k, v in last_metrics.items() if k != "lr"}
                    | {"lr": f"{last_metrics['lr']:.2e}"}
                )
                if args.with_tracking and progress.num_updates % args.logging_steps == 0:
                    accelerator.log(last_metrics, step=progress.num_updates)
                if progress.num_updates % args.logging_steps == 0:
                    progress.history.append(
                        (progress.num_updates, last_metrics["loss"], last_metrics["target_var"])
                    )
                if progress.num_updates % args.logging_steps == 0 and accelerator.is_main_process:
                    logger.info(
                        "update %d: %s",
                        progress.num_updates,
                        json.dumps({k: round(v, 6) for k, v in last_metrics.items()}),
                    )
                if (
                    progress.num_updates % args.checkpointing_steps == 0
                    or progress.num_updates == args.max_train_steps
                ):
                    save_checkpoint(
                        accelerator, checkpoint_dir, progress.num_updates, args.checkpoints_total_limit
                    )
                if progress.num_updates >= args.max_train_steps:
                    break
        else:
            progress.epoch += 1
            progress.batches_in_epoch = 0
            continue
        break

    bar.close()
    if progress.nonfinite_total:
        logger.warning("skipped %d update(s) with a NaN/inf loss", progress.nonfinite_total)
    accelerator.wait_for_everyone()
    export(accelerator, model, processor, args, spec, progress, last_metrics)
    if accelerator.is_main_process:
        summary = {
            "num_processes": accelerator.num_processes,
            "updates": progress.num_updates,
            "skipped_nonfinite_updates": progress.nonfinite_total,
            "first": progress.first_metrics,
            "history": progress.history,
            "last": last_metrics,
        }
        (Path(args.output_dir) / "train_summary.json").write_text(json.dumps(summary, indent=2))
    accelerator.end_training()


def check_collapse(config, num_updates: int, metrics: dict, checkpoint_dir: Path) -> None:
    """fairseq's collapse guard: after a warm-up, targets or predictions with (almost) no variance
    mean the representation collapsed; stop before it overwrites a good checkpoint."""
    if num_updates <= config.collapse_guard_after:
        return
    for key, limit in (("target_var", config.min_target_var), ("pred_var", config.min_pred_var)):
        if metrics[key] < limit:
            raise TrainingStopped(
                f"{key} = {metrics[key]:.4g} fell below {limit} at update {num_updates}: the representation is "
                f"collapsing. The last good checkpoint is kept in {checkpoint_dir}; lower the learning rate or "
                "raise the EMA decay and resume from it."
            )
