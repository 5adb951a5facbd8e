"""fairseq ``data2vec_multi`` state dict → ``Data2Vec2*`` weights: one :class:`~.mapping.KeyMapping` per
modality onto the *pretraining* model's names (student, convolutional decoder, ``_ema`` teacher), the
:class:`~.mapping.ExportView` of it for an encoder or task-head export, and the tensor fixes a file needs
before mapping (position tables, ALiBi scales, a missing teacher). See ``fairseq_v2.py`` for the formats.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from data2vec_hf import (
    Data2Vec2AudioForPreTraining,
    Data2Vec2AudioModel,
    Data2Vec2TextForPreTraining,
    Data2Vec2TextModel,
    Data2Vec2VisionForPreTraining,
    Data2Vec2VisionModel,
)
from data2vec_hf.data2vec2_vision import sincos_positions_2d

from .core import require
from .fairseq_v2_formats import Format
from .fairseq_v2_heads import Head
from .mapping import ExportView, KeyMapping

BLOCK = r"(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)"
POSITIONS = r"modality_encoders\.IMAGE\.fixed_positional_encoder\.positions"


def _common_rules(modality: str, prefix: str, teacher: str) -> list[tuple]:
    enc = rf"modality_encoders\.{modality}\."
    return [
        (rf"blocks\.(\d+)\.{BLOCK}", rf"{prefix}.blocks.\1.\2.\3"),
        (rf"{enc}context_encoder\.norm\.(weight|bias)", rf"{prefix}.context_norm.\1"),
        (rf"{enc}context_encoder\.blocks\.(\d+)\.{BLOCK}", rf"{prefix}.prenet.\1.\2.\3"),
        (rf"{enc}extra_tokens", rf"{prefix}.extra_tokens"),
        (rf"{enc}decoder\.blocks\.(\d+)\.0\.(weight|bias)", r"decoder.convs.\1.\2"),
        (rf"{enc}decoder\.proj\.(weight|bias)", r"decoder.proj.0.\1"),
        (rf"{enc}decoder\.proj\.(\d+)\.(weight|bias)", r"decoder.proj.\1.\2"),
        # EMA teacher (full copy when ema_encoder_only=False; blocks only, keyed "N.", otherwise)
        (rf"_ema/blocks\.(\d+)\.{BLOCK}", rf"{teacher}.blocks.\1.\2.\3"),
        (rf"_ema/(\d+)\.{BLOCK}", rf"{teacher}.blocks.\1.\2.\3"),
        (rf"_ema/{enc}context_encoder\.norm\.(weight|bias)", rf"{teacher}.context_norm.\1"),
        (rf"_ema/{enc}context_encoder\.blocks\.(\d+)\.{BLOCK}", rf"{teacher}.prenet.\1.\2.\3"),
        (rf"_ema/{enc}extra_tokens", rf"{teacher}.extra_tokens"),
    ]


def _audio_rules(prefix: str, teacher: str) -> list[tuple]:
    enc = r"modality_encoders\.AUDIO\."
    return [
        (
            rf"{enc}local_encoder\.conv_layers\.(\d+)\.0\.(weight|bias)",
            rf"{prefix}.feature_extractor.conv_layers.\1.conv.\2",
        ),
        (
            rf"{enc}local_encoder\.conv_layers\.(\d+)\.2\.1\.(weight|bias)",
            rf"{prefix}.feature_extractor.conv_layers.\1.layer_norm.\2",
        ),
        (rf"{enc}project_features\.1\.(weight|bias)", rf"{prefix}.feature_projection.0.\1"),
        (rf"{enc}project_features\.2\.(weight|bias)", rf"{prefix}.feature_projection.1.\1"),
        # index 0 of fairseq's positional Sequential is a TransposeLast
        (
            rf"{enc}relative_positional_encoder\.(\d+)\.0\.(weight|bias)",
            lambda m: f"{prefix}.relative_positions.layers.{int(m[1]) - 1}.conv.{m[2]}",
        ),
        (rf"{enc}alibi_scale", f"{prefix}.alibi_scale"),
        (
            rf"_ema/{enc}relative_positional_encoder\.(\d+)\.0\.(weight|bias)",
            lambda m: f"{teacher}.relative_positions.layers.{int(m[1]) - 1}.conv.{m[2]}",
        ),
        (rf"_ema/{enc}alibi_scale", f"{teacher}.alibi_scale"),
    ]


def _vision_rules(prefix: str, teacher: str) -> list[tuple]:
    enc = r"modality_encoders\.IMAGE\."
    return [
        (rf"{enc}local_encoder\.proj\.(weight|bias)", rf"{prefix}.patch_embedding.\1"),
        (rf"_ema/{enc}local_encoder\.proj\.(weight|bias)", rf"{teacher}.patch_embedding.\1"),
    ]


def _text_rules(prefix: str, teacher: str) -> list[tuple]:
    enc = r"modality_encoders\.TEXT\."
    return [
        (rf"{enc}local_encoder\.embed_tokens\.weight", f"{prefix}.word_embeddings.weight"),
        (rf"{enc}local_encoder\.embed_positions\.weight", f"{prefix}.position_embeddings.weight"),
        (rf"{enc}local_encoder\.layernorm_embedding\.(weight|bias)", rf"{prefix}.embedding_norm.\1"),
    ]


#: modality key → (pretraining class, encoder class, backbone attribute, layout rules)
MODALITIES = {
    "AUDIO": (Data2Vec2AudioForPreTraining, Data2Vec2AudioModel, "data2vec2_audio", _audio_rules),
    "IMAGE": (Data2Vec2VisionForPreTraining, Data2Vec2VisionModel, "data2vec2_vision", _vision_rules),
    "TEXT": (Data2Vec2TextForPreTraining, Data2Vec2TextModel, "data2vec2_text", _text_rules),
}


def pretraining_mapping(modality: str, source_prefix: str = "") -> KeyMapping:
    """``data2vec_multi`` names (under ``source_prefix``) → ``Data2Vec2*ForPreTraining`` names."""
    _, _, backbone, specific = MODALITIES[modality]
    mapping = KeyMapping(
        rules=specific(backbone, "teacher.model") + _common_rules(modality, backbone, "teacher.model"),
        drop=[
            # a constant table, checked against ours by prepare_state instead of being loaded
            rf"(_ema/)?{POSITIONS}",
            # the teacher of a 2.0 audio/text model reads the student's local features
            r"_ema/modality_encoders\.(AUDIO|TEXT)\.(local_encoder|project_features)\..*",
        ],
    )
    return mapping.with_source_prefix(re.escape(source_prefix)) if source_prefix else mapping


def export_view(mapping: KeyMapping, backbone: str, fmt: Format, head: Head | None, keep_head: bool):
    """The encoder (``keep_head=False``: decoder, teacher and head dropped, backbone names unprefixed)
    or task-model (``keep_head=True``) view of a pretraining ``mapping`` extended by ``head``'s rules."""
    drop_targets = [r"decoder\..*", r"teacher\..*"]
    rename = [(f"{backbone}.", f"{backbone}." if keep_head else "")]
    if head is not None:
        if keep_head:
            rename += [(t, t) for t in head.targets]
        else:
            drop_targets += [re.escape(t) + ".*" for t in head.targets]
    return ExportView(
        mapping,
        rename=rename,
        drop_targets=drop_targets,
        drop_sources=[re.escape(f"{fmt.prefix}_ema/") + ".*"],
    )


def prepare_state(state: dict, config, source_prefix: str = "") -> dict:
    """Check the fixed sin-cos position tables against ours and bring fairseq's ALiBi scales,
    (1, 1, heads or 1, 1, 1), into our per-head shape."""
    positions = re.compile(rf"^{re.escape(source_prefix)}(_ema/)?{POSITIONS}$")
    table = None
    for key in [k for k in state if positions.match(k)]:
        if table is None:
            table = sincos_positions_2d(config.hidden_size, config.grid_size).unsqueeze(0)
        theirs = state[key].float()
        require(
            theirs.shape == table.shape and torch.allclose(theirs, table, atol=1e-5),
            f"{key} {tuple(theirs.shape)} differs from the 2-D sin-cos table {tuple(table.shape)} of a "
            f"{config.image_size}px / patch {config.patch_size} model (interpolated positions?)",
        )
    for key in [k for k in state if k.endswith("alibi_scale")]:
        scale = state[key].reshape(-1)
        if scale.numel() == 1:  # learned_alibi_scale_per_head=False: one scale for every head
            scale = scale.expand(config.num_attention_heads).clone()
        state[key] = scale
    return state


def has_ema(state: Mapping, source_prefix: str = "") -> bool:
    """Whether the state dict carries the EMA teacher (``_ema/*`` keys)."""
    return any(k.startswith(f"{source_prefix}_ema/") for k in state)


def teacher_from_student(state: dict, config) -> dict:
    """A file without its ``_ema`` teacher: the teacher starts as a copy of the student's averaged
    parts (the blocks when ``ema_encoder_only``; otherwise everything but the decoder and the shared
    local encoder)."""
    state = dict(state)
    for key in list(state):
        if config.ema_encoder_only:
            match = re.match(r"^blocks\.(.*)$", key)
            if match:
                state[f"_ema/{match[1]}"] = state[key]
        elif ".decoder." not in key and (
            config.ema_local_encoder or not re.search(r"\.(local_encoder|project_features)\.", key)
        ):
            state[f"_ema/{key}"] = state[key]
    return state
