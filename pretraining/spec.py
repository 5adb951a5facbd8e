"""The types every part of the pretraining package shares: what a modality entry point gives the loop
(:class:`ModalitySpec`) and the errors that end a run with a message instead of a traceback.

They live here, apart from the modules that use them, so that those modules need not import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch


class ConfigError(ValueError):
    """The model configuration asked for on the command line cannot be built; the message says why."""


class ArgumentError(ValueError):
    """A flag's value, or a combination of flags, that cannot work; the message names the flag, the
    value and the rule (the scripts turn it into ``parser.error``: usage, the message, exit status 2)."""


class TrainingStopped(RuntimeError):
    """Training stopped on purpose (collapse guard, repeated non-finite losses, SIGTERM, a failed save);
    ``exit_code`` is the script's exit status."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class ModalitySpec:
    """What a modality entry point provides to the shared loop.

    Attributes:
        name: "audio", "vision" or "text".
        model_classes: ``{version: *ForPreTraining class}``.
        defaults: ``{version: {flag: value}}``, the released base recipe (learning rate, schedule, ...).
        add_arguments: the modality's own flags: a dataclass of them (parsed with the shared ones by
            ``HfArgumentParser``), or a function that adds them to an argparse group.
        build_data: ``(args, config, accelerator) -> (dataset, collate_fn, processor)``; the processor
            (feature extractor / image processor / tokenizer) is saved with the exported encoder.
            ``collate_fn(examples, generators)`` receives one random generator per example.
        sample_masks: ``{version: (config, batch, generators) -> dict}`` of mask arguments for the forward,
            one generator per sample so masks do not depend on how batches are split over processes.
        prepare_config: optional hook ``(args, config) -> config`` run before the model is built
            (e.g. to set the vocabulary size from the tokenizer).
        example_lengths: optional ``(args, dataset) -> lengths`` used to group examples of similar length
            into batches (audio); None batches examples in random order.
        accounting: optional factory of a :class:`BatchAccounting`, for what the modality measures about
            its batches beside the loss (audio: how much was cropped away or padded).
    """

    name: str
    model_classes: dict[int, type]
    defaults: dict[int, dict[str, Any]]
    add_arguments: Callable
    build_data: Callable
    sample_masks: dict[int, Callable]
    prepare_config: Callable | None = None
    example_lengths: Callable | None = None
    accounting: Callable[[], BatchAccounting] | None = None


class BatchAccounting(Protocol):
    """What a modality counts about its batches, beside the loss, through the whole run.

    The collator adds one entry, ``info_key``, to every batch; :meth:`measure` turns it into the
    micro-batch's sums of ``names``, which are summed over the update and all processes with the loop's
    statistics. Its running state is a plain dict that the loop checkpoints with its progress."""

    info_key: str
    names: tuple[str, ...]

    def measure(self, info: torch.Tensor) -> torch.Tensor:
        """One micro-batch's sums of ``names`` from its ``info_key`` entry."""

    def add(self, state: dict, totals: dict) -> None:
        """Count one update's reduced sums (``totals[name]`` for each of ``names``) into ``state``."""

    def metrics(self, state: dict) -> dict[str, float]:
        """Values to log with the update's metrics."""

    def end_epoch(self, state: dict, epoch: int) -> str | None:
        """Close an epoch in ``state``; a line for the log, or None."""

    def summary(self, state: dict) -> dict[str, Any]:
        """Entries for ``train_summary.json``."""
