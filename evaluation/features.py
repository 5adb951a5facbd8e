"""Frozen per-layer features of a data2vec encoder (1.0 or 2.0, any modality), on one or many processes.

For every hidden state the encoder returns (the block input, then every block's output) an example is
summarised by the **mean over its time steps / patches / tokens, padding excluded** (and extra tokens
such as a CLS token excluded); for data2vec 2.0 image encoders the **CLS token** of every layer is a
second feature set. Inputs are prepared as the pretraining scripts prepare their data: audio at the
processor's sampling rate, mono, normalised per clip; images resized to the model's ``image_size`` and
normalised with the processor's mean/std (ImageNet's for our exports); text with the run's tokenizer.

Several processes: examples are put into batches once, in a fixed order that does not depend on the
number of processes (sorted by length); process ``r`` encodes batches ``r, r + P, ...`` (every process
runs the same number of forwards, so sharded models work) and the pooled features are gathered with
``accelerator.gather_for_metrics`` and put back into example order. One process and two processes
therefore compute every example in the same batch, with the same padding.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

#: model_type -> (modality, data2vec version) of the encoders that can be probed
ENCODER_TYPES = {
    "data2vec-audio": ("audio", 1),
    "data2vec-audio-pretraining": ("audio", 1),
    "data2vec-vision": ("vision", 1),
    "data2vec-vision-pretraining": ("vision", 1),
    "data2vec-text": ("text", 1),
    "data2vec-text-pretraining": ("text", 1),
    "data2vec2-audio": ("audio", 2),
    "data2vec2-vision": ("vision", 2),
    "data2vec2-text": ("text", 2),
}
MODALITIES = ("audio", "vision", "text")


class NotAnEncoderError(ValueError):
    """The model is not a data2vec encoder that the probes know how to read."""


def student_encoder(model: nn.Module) -> nn.Module:
    """The encoder to probe: the student of a ``*ForPreTraining`` model or the backbone of a task model
    (``getattr(model, model.base_model_prefix)``), or the model itself when it is the encoder."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    inner = getattr(model, prefix, None) if prefix else None
    return inner if isinstance(inner, nn.Module) and inner is not model else model


def encoder_kind(encoder: nn.Module) -> tuple[str, int]:
    """``(modality, version)`` of a data2vec encoder; :class:`NotAnEncoderError` for anything else."""
    config = getattr(encoder, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in ENCODER_TYPES:
        raise NotAnEncoderError(
            f"{type(encoder).__name__} (model_type {model_type!r}) is not a data2vec encoder: the probes read "
            f"the hidden states of data2vec 1.0/2.0 encoders ({', '.join(sorted(ENCODER_TYPES))})"
        )
    return ENCODER_TYPES[model_type]


def image_size_of(config) -> tuple[int, int]:
    size = config.image_size
    return (size, size) if isinstance(size, int) else tuple(size)


def max_text_length(config, tokenizer=None) -> int:
    """Longest token sequence the encoder takes (RoBERTa-style positions keep 2 for the padding offset)."""
    limit = getattr(config, "max_position_embeddings", 514) - 2
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < 1_000_000:
        limit = min(limit, model_max)
    return max(limit, 8)


# --------------------------------------------------------------------------------------------------
# Inputs


def default_processor(modality: str, config):
    """What the pretraining scripts export with an encoder, for checkpoints that carry no processor."""
    if modality == "audio":
        from transformers import Wav2Vec2FeatureExtractor

        return Wav2Vec2FeatureExtractor(
            feature_size=1,
            sampling_rate=16000,
            padding_value=0.0,
            do_normalize=True,
            return_attention_mask=True,
        )
    if modality == "vision":
        from data2vec_hf.pretraining.data import IMAGENET_MEAN, IMAGENET_STD
        from transformers import BeitImageProcessor

        height, width = image_size_of(config)
        return BeitImageProcessor(
            size={"height": height, "width": width},
            do_center_crop=False,
            image_mean=list(IMAGENET_MEAN),
            image_std=list(IMAGENET_STD),
        )
    raise ValueError("a text encoder needs its tokenizer: pass the one it was trained with")


def sampling_rate_of(processor) -> int:
    return int(getattr(processor, "sampling_rate", None) or 16000)


class EncoderInputs:
    """One split's examples, decoded once, batched for the encoder on demand.

    ``values`` are decoded examples: mono float32 arrays at the processor's sampling rate (audio), PIL
    images (vision) or strings (text). Images are resized to the encoder's ``image_size`` (bicubic) and
    text tokenized (truncated to what the encoder takes) here, once; the processor then pads and
    normalises every batch as it does for pretraining data.
    """

    def __init__(self, modality: str, values: Sequence, processor, config, max_seconds: float | None = 30.0):
        self.modality, self.processor = modality, processor
        if modality == "audio":
            rate = sampling_rate_of(processor)
            limit = int(max_seconds * rate) if max_seconds else None
            self.items = [_centre_crop(np.asarray(v, dtype=np.float32), limit) for v in values]
            self.lengths = [len(v) for v in self.items]
        elif modality == "vision":
            from PIL import Image

            height, width = image_size_of(config)
            self.items = [
                np.asarray(v.convert("RGB").resize((width, height), Image.BICUBIC), dtype=np.uint8)
                for v in values
            ]
            self.lengths = [1] * len(self.items)
        elif modality == "text":
            length = max_text_length(config, processor)
            self.items = processor(list(values), truncation=True, max_length=length)["input_ids"]
            self.lengths = [len(ids) for ids in self.items]
        else:
            raise ValueError(f"unknown modality {modality!r}")

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Model inputs for the examples ``indices`` (padded where needed, with an attention mask)."""
        items = [self.items[i] for i in indices]
        if self.modality == "audio":
            out = self.processor(
                items,
                sampling_rate=sampling_rate_of(self.processor),
                padding=True,
                return_attention_mask=True,
                return_tensors="pt",
            )
            return {"input_values": out["input_values"], "attention_mask": out["attention_mask"]}
        if self.modality == "vision":
            return {"pixel_values": self.processor(items, return_tensors="pt")["pixel_values"]}
        out = self.processor.pad({"input_ids": items}, return_tensors="pt")
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}


def _centre_crop(audio: np.ndarray, limit: int | None) -> np.ndarray:
    if limit is None or len(audio) <= limit:
        return audio
    start = (len(audio) - limit) // 2
    return audio[start : start + limit]


def plan_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Batches of example indices sorted by length (little padding), at most ``batch_size`` examples
    and, when given, ``longest x count <= max_tokens``. Depends only on the lengths, never on how
    many processes will encode them."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches, current = [], []
    for index in order:
        longest = max([lengths[i] for i in current] + [lengths[index]])
        if current and (
            len(current) >= batch_size or (max_tokens and longest * (len(current) + 1) > max_tokens)
        ):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


# --------------------------------------------------------------------------------------------------
# Pooling


@dataclass
class PooledLayers:
    """Per-example, per-layer summaries: ``mean`` ``(B, L, D)``; ``cls`` ``(B, L, D)`` or None."""

    mean: torch.Tensor
    cls: torch.Tensor | None = None


def pool_hidden_states(
    hidden_states: Sequence[torch.Tensor], valid: torch.Tensor | None, extra_tokens: int, keep_cls: bool
) -> PooledLayers:
    """Mean over the valid positions of every layer (after ``extra_tokens`` leading tokens, which are
    excluded), and optionally the first token (CLS) of every layer."""
    stacked = torch.stack([h.float() for h in hidden_states], dim=1)  # B x L x T x D
    content = stacked[:, :, extra_tokens:]
    if valid is None:
        mean = content.mean(dim=2)
    else:
        weights = valid[:, None, :, None].to(content.dtype)
        mean = (content * weights).sum(2) / weights.sum(2).clamp_min(1.0)
    return PooledLayers(mean, stacked[:, :, 0] if keep_cls else None)


def encode_batch(encoder: nn.Module, kind: tuple[str, int], batch: dict[str, torch.Tensor]) -> PooledLayers:
    """Run the encoder on one batch with ``output_hidden_states=True`` and pool every layer."""
    from data2vec_hf.data2vec_audio import backbone_hidden_states, num_frames

    modality, version = kind
    if modality == "audio" and version == 1 and hasattr(encoder, "feature_extractor"):
        # transformers' v1 audio encoder lets padding leak into its later positional conv layers
        hidden = backbone_hidden_states(encoder, batch["input_values"], batch.get("attention_mask"))
    else:
        hidden = encoder(**batch, output_hidden_states=True, return_dict=True).hidden_states
    extra = 0 if version == 1 else int(getattr(encoder.config, "num_extra_tokens", 0) or 0)
    if modality == "vision" and version == 1:
        extra = 1  # BEiT-style encoders always put a CLS token first
    valid = None
    length = hidden[0].shape[1] - extra
    if modality == "audio" and batch.get("attention_mask") is not None:
        frames = num_frames(encoder.config, batch["attention_mask"].sum(-1))
        valid = torch.arange(length, device=frames.device)[None, :] < frames[:, None]
    elif modality == "text":
        valid = batch["attention_mask"].bool()
    return pool_hidden_states(hidden, valid, extra, keep_cls=modality == "vision" and version == 2)


# --------------------------------------------------------------------------------------------------
# Extraction over a split, on one or several processes


@contextlib.contextmanager
def frozen(model: nn.Module):
    """Evaluation mode (dropout off) inside, the model's own train/eval mode restored afterwards; a
    root module sharded with FSDP2 has its parameters gathered meanwhile (the encoder is called
    directly, not through the root's forward, which would gather them)."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    sharded = hasattr(model, "unshard") and hasattr(model, "reshard")
    if sharded:
        model.unshard()
    try:
        yield
    finally:
        if sharded:
            model.reshard()
        for module, training in modes.items():
            module.training = training


@torch.no_grad()
def extract_features(
    model: nn.Module,
    inputs: EncoderInputs,
    batch_size: int = 16,
    max_tokens: int | None = None,
    accelerator=None,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Pooled features of every example of ``inputs``: ``{"mean": (L, N, D), "cls": (L, N, D)}`` (``cls``
    only for 2.0 image encoders), in example order, on every process.

    ``model`` is an encoder or a model holding one (a ``*ForPreTraining`` model: its student is read).
    With an ``accelerator`` of several processes each process encodes its share of the batches and
    the results are gathered with ``gather_for_metrics``. The model's train/eval mode is restored.
    """
    encoder = student_encoder(model)
    kind = encoder_kind(encoder)
    if device is None:
        device = accelerator.device if accelerator is not None else next(encoder.parameters()).device
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    batches = plan_batches(inputs.lengths, batch_size, max_tokens)
    mine = batches[rank::world]
    # every process runs as many forwards as the busiest one (collectives of sharded models pair up);
    # the extra ones repeat a batch and are dropped
    rounds = -(-len(batches) // world)
    autocast = accelerator.autocast() if accelerator is not None else contextlib.nullcontext()
    rows: dict[str, list[torch.Tensor]] = {}
    indices: list[int] = []
    with frozen(model), autocast:
        for step in range(rounds):
            real = step < len(mine)
            chunk = mine[step] if real else batches[0]
            batch = {k: v.to(device) for k, v in inputs.batch(chunk).items()}
            pooled = encode_batch(encoder, kind, batch)
            for name in ("mean", "cls"):
                value = getattr(pooled, name)
                if value is not None:
                    # a repeated batch contributes no rows (but its shape, for a process without batches)
                    rows.setdefault(name, []).append(value.float() if real else value[:0].float())
            indices += chunk if real else []
    local = {name: torch.cat(parts) for name, parts in rows.items()}
    index = torch.tensor(indices, dtype=torch.long, device=device)
    if world > 1:
        index = accelerator.gather_for_metrics(accelerator.pad_across_processes(index, dim=0, pad_index=-1))
        local = {
            name: accelerator.gather_for_metrics(accelerator.pad_across_processes(value, dim=0))
            for name, value in local.items()
        }
    keep = index >= 0
    order = index[keep].argsort()
    return {name: value[keep][order].transpose(0, 1).contiguous() for name, value in local.items()}
