"""The vocabulary shared by every converter: what goes in, what comes out, how a converter looks.

A converter is registered once (``registry.py``) with a ``matches`` test on the checkpoint's own
config and a ``convert`` function that returns a :class:`Conversion`; the CLI does the rest (writing,
verification, model card, upload) the same way for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.initialization import no_init_weights

from .mapping import ConversionError, ExportView, KeyMapping, map_state_dict

EXPORTS = ("auto", "encoder", "pretraining")


@dataclass
class Source:
    """A checkpoint read safely (``checkpoint.load_checkpoint``), with what was detected about it."""

    path: Path
    checkpoint: dict
    sha256: str
    #: fairseq ``(model_cfg, task_cfg)`` as plain dicts, or None for non-fairseq files (BEiT codebase)
    sections: tuple[dict, dict] | None = None

    @property
    def model_name(self) -> str | None:
        return self.sections[0].get("_name") if self.sections else None


@dataclass
class Options:
    """Converter options the CLI passes through (see ``cli.py`` for their meaning)."""

    export: str = "auto"
    dtype: torch.dtype | None = torch.float32
    dict_path: Path | None = None
    encoder_json: Path | None = None
    vocab_bpe: Path | None = None
    model_config: dict = field(default_factory=dict)
    num_attention_heads: int | None = None
    image_size: int | None = None


@dataclass
class Conversion:
    """A converted model ready to be written, with everything the folder and card need."""

    model: PreTrainedModel
    version: str  # "1.0" | "2.0"
    modality: str  # "audio" | "text" | "vision"
    kind: str  # what the source is: "pretrained", "CTC fine-tuned", "image-classification fine-tuned", …
    # what was written: "encoder", "ctc", "image-classification", "sequence-classification", "pretraining"
    export: str
    pipeline_tag: str
    processors: list = field(default_factory=list)  # objects with save_pretrained(dir)
    notes: list[str] = field(default_factory=list)
    details: list[tuple[str, Any]] = field(default_factory=list)  # (setting, value) rows for the card
    needs_data2vec_hf: bool = False  # loading needs `import data2vec_hf` (pretraining export, v2)


@dataclass(frozen=True)
class Converter:
    """One entry of the registry. ``convert`` is None for recognised-but-unsupported formats, in which
    case ``unsupported`` says why."""

    name: str
    version: str
    modality: str | None  # None: decided per checkpoint (e.g. data2vec 2.0 covers all three)
    matches: Callable[[Source], bool]
    convert: Callable[[Source, Options], Conversion] | None = None
    unsupported: str | None = None
    describe: str = ""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConversionError(message)


def cast_floats(tensors: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Floating-point tensors in ``dtype`` (no copy when they already are); others unchanged."""
    if dtype is None:
        return dict(tensors)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}


def detach_shared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Clone tensors that share storage with an earlier one (slices of a fused tensor, a teacher
    synthesised from the student): safetensors and ``save_pretrained`` treat shared storage as tied
    weights, which these are not."""
    seen: set[int] = set()
    out = {}
    for key, tensor in tensors.items():
        pointer = tensor.untyped_storage().data_ptr() if tensor.numel() else None
        if pointer is not None and pointer in seen:
            tensor = tensor.clone()
        elif pointer is not None:
            seen.add(pointer)
        out[key] = tensor
    return out


def build_model(
    model_cls: type[PreTrainedModel],
    config,
    source: Mapping[str, torch.Tensor],
    mapping: KeyMapping | ExportView,
    extra: Mapping[str, torch.Tensor] | None = None,
    dtype: torch.dtype | None = torch.float32,
    **model_kwargs,
) -> PreTrainedModel:
    """Instantiate ``model_cls`` without random initialisation and fill it strictly from ``source``.

    The model's tensors are *assigned* the (memory-mapped) checkpoint tensors instead of being copied
    into, so a conversion holds about one copy of the exported weights in RAM.
    """
    with no_init_weights():
        model = model_cls(config, **model_kwargs)
    target_shapes = {k: v.shape for k, v in model.state_dict().items()}
    converted = map_state_dict(source, mapping, target_shapes, extra)
    converted = detach_shared(cast_floats(converted, dtype))
    model.load_state_dict(converted, strict=True, assign=True)
    if dtype is not None:
        model.config.dtype = dtype
    return model.eval()
