"""fairseq data2vec 2.0 (``data2vec_multi``) → data2vec_hf ``Data2Vec2*ForPreTraining``: configs and weights.

Layout facts from fairseq's ``examples/data2vec/models/data2vec2.py`` and ``modalities/*.py``. Only the
post-LN block layout (``layer_norm_first=False``, used by every released 2.0 model) is supported.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from data2vec_hf import (
    Data2Vec2AudioConfig,
    Data2Vec2AudioForPreTraining,
    Data2Vec2TextConfig,
    Data2Vec2TextForPreTraining,
    Data2Vec2VisionConfig,
    Data2Vec2VisionForPreTraining,
)

from .fairseq_v1 import fairseq_state_dict
from .mapping import ConversionError, KeyMapping, map_state_dict, safe_literal

BLOCK = r"(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConversionError(message)


def _shared_config(model_cfg: Mapping, modality_cfg: Mapping) -> dict:
    _require(
        not model_cfg.get("layer_norm_first", False),
        "layer_norm_first=True (pre-LN) 2.0 models are not supported",
    )
    _require(model_cfg.get("shared_decoder") is None, "a shared decoder is not supported")
    _require(not model_cfg.get("recon_loss"), "recon_loss is not supported")
    _require(
        not modality_cfg.get("learned_alibi") and not modality_cfg.get("learned_alibi_scale_per_layer"),
        "learned/per-layer ALiBi is not supported",
    )
    decoder = modality_cfg.get("decoder") or {}
    _require(decoder.get("decoder_dim") is not None, "checkpoints without a decoder config are not supported")
    _require(
        not decoder.get("add_positions_masked") and not decoder.get("add_positions_all"),
        "decoder positions are not supported",
    )
    fields = dict(
        hidden_size=model_cfg["embed_dim"],
        num_hidden_layers=model_cfg["depth"],
        num_attention_heads=model_cfg["num_heads"],
        intermediate_size=int(model_cfg["embed_dim"] * model_cfg.get("mlp_ratio", 4)),
        layer_norm_eps=model_cfg.get("norm_eps", 1e-6),
        hidden_dropout=model_cfg.get("encoder_dropout", 0.1),
        attention_dropout=model_cfg.get("attention_dropout", 0.1),
        activation_dropout=model_cfg.get("activation_dropout", 0.0),
        post_mlp_dropout=model_cfg.get("post_mlp_drop", 0.1),
        layerdrop=model_cfg.get("layerdrop", 0.0),
        drop_path_rate=model_cfg.get("end_drop_path_rate", 0.0),
        prenet_depth=modality_cfg.get("prenet_depth", 0),
        prenet_dropout=modality_cfg.get("prenet_dropout", 0.0),
        prenet_layerdrop=modality_cfg.get("prenet_layerdrop", 0.0),
        num_extra_tokens=modality_cfg.get("num_extra_tokens", 0),
        clone_batch=model_cfg.get("clone_batch", 1),
        mask_prob=modality_cfg.get("mask_prob", 0.7),
        mask_length=modality_cfg.get("mask_length", 5),
        inverse_mask=modality_cfg.get("inverse_mask", False),
        mask_prob_adjust=modality_cfg.get("mask_prob_adjust", 0.0),
        mask_noise_std=modality_cfg.get("mask_noise_std", 0.01),
        decoder_dim=decoder["decoder_dim"],
        decoder_kernel=decoder["decoder_kernel"],
        decoder_layers=decoder["decoder_layers"],
        decoder_groups=decoder["decoder_groups"],
        decoder_residual=decoder.get("decoder_residual", True),
        decoder_input_dropout=decoder.get("input_dropout", 0.1),
        decoder_projection_layers=decoder.get("projection_layers", 1),
        decoder_projection_ratio=decoder.get("projection_ratio", 2.0),
        cls_loss=model_cfg.get("cls_loss", 0.0),
        ema_encoder_only=model_cfg.get("ema_encoder_only", True),
        ema_local_encoder=modality_cfg.get("ema_local_encoder", False),
        loss_beta=model_cfg.get("loss_beta", 0.0),
        loss_scale=model_cfg.get("loss_scale"),
        min_target_var=model_cfg.get("min_target_var", 0.1),
        min_pred_var=model_cfg.get("min_pred_var", 0.01),
    )
    for key in (
        "average_top_k_layers",
        "instance_norm_target_layer",
        "layer_norm_target_layer",
        "instance_norm_targets",
        "layer_norm_targets",
        "ema_decay",
        "ema_end_decay",
        "ema_anneal_end_step",
    ):
        if model_cfg.get(key) is not None:
            fields[key] = model_cfg[key]
    _require(not model_cfg.get("batch_norm_target_layer"), "batch-norm target layers are not supported")
    _require(not model_cfg.get("end_of_block_targets"), "end-of-block targets are not supported")
    return fields


def _common_rules(modality: str, prefix: str, teacher: str) -> list[tuple]:
    enc = rf"modality_encoders\.{modality}\."
    rules = [
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
    return rules


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


MODALITIES = {
    "AUDIO": (Data2Vec2AudioForPreTraining, "data2vec2_audio", _audio_rules),
    "IMAGE": (Data2Vec2VisionForPreTraining, "data2vec2_vision", _vision_rules),
    "TEXT": (Data2Vec2TextForPreTraining, "data2vec2_text", _text_rules),
}


def config_from_fairseq_v2(checkpoint: Mapping, state: Mapping[str, torch.Tensor]):
    model_cfg = checkpoint["cfg"]["model"]
    modality = model_cfg.get("supported_modality")
    _require(
        modality in MODALITIES,
        f"unsupported or missing supported_modality {modality!r} (a multi-modality checkpoint?)",
    )
    modality_cfg = model_cfg["modalities"][modality.lower()]
    fields = _shared_config(model_cfg, modality_cfg)
    if modality == "AUDIO":
        _require(
            modality_cfg.get("extractor_mode", "layer_norm") == "layer_norm",
            "only extractor_mode=layer_norm is supported",
        )
        _require(not modality_cfg.get("conv_pos_pre_ln"), "conv_pos_pre_ln is not supported")
        conv = safe_literal(modality_cfg["feature_encoder_spec"])
        depth = modality_cfg.get("conv_pos_depth", 5)
        return Data2Vec2AudioConfig(
            conv_dim=tuple(c[0] for c in conv),
            conv_kernel=tuple(c[1] for c in conv),
            conv_stride=tuple(c[2] for c in conv),
            num_conv_pos_embeddings=depth,
            conv_pos_kernel_size=max(3, modality_cfg.get("conv_pos_width", 95) // depth),
            num_conv_pos_embedding_groups=modality_cfg.get("conv_pos_groups", 16),
            use_alibi=bool(modality_cfg.get("use_alibi_encoder", False)),
            alibi_scale_init=modality_cfg.get("alibi_scale", 1.0),
            learned_alibi_scale=bool(modality_cfg.get("learned_alibi_scale", False)),
            **fields,
        )
    if modality == "IMAGE":
        _require(
            modality_cfg.get("embed_dim", model_cfg["embed_dim"]) == model_cfg["embed_dim"],
            "a patch embedding of another width is not supported",
        )
        _require(
            modality_cfg.get("fixed_positions", True) and not modality_cfg.get("use_alibi_encoder"),
            "only fixed sin-cos positions are supported for images",
        )
        _require(not modality_cfg.get("transformer_decoder"), "transformer decoders are not supported")
        return Data2Vec2VisionConfig(
            image_size=modality_cfg.get("input_size", 224),
            patch_size=modality_cfg.get("patch_size", 16),
            num_channels=modality_cfg.get("in_chans", 3),
            **fields,
        )
    _require(
        modality_cfg.get("learned_pos", True) and modality_cfg.get("no_scale_embedding", True),
        "only learned positions without embedding scaling are supported",
    )
    _require(modality_cfg.get("layernorm_embedding", True), "layernorm_embedding=False is not supported")
    vocab_size, _ = state["modality_encoders.TEXT.local_encoder.embed_tokens.weight"].shape
    positions, _ = state["modality_encoders.TEXT.local_encoder.embed_positions.weight"].shape
    return Data2Vec2TextConfig(
        vocab_size=vocab_size,
        max_position_embeddings=positions,
        embedding_dropout=modality_cfg.get("dropout", 0.1),
        **fields,
    )


def model_from_fairseq_v2(checkpoint: Mapping):
    """A ``Data2Vec2*ForPreTraining`` holding the fairseq student, decoder and EMA teacher weights."""
    state = fairseq_state_dict(checkpoint)
    config = config_from_fairseq_v2(checkpoint, state)
    modality = checkpoint["cfg"]["model"]["supported_modality"]
    model_cls, prefix, specific = MODALITIES[modality]
    model = model_cls(config).eval()
    positions_key = "modality_encoders.IMAGE.fixed_positional_encoder.positions"
    for key in (positions_key, "_ema/" + positions_key):
        if key in state:  # a constant table: check it instead of loading it
            ours = getattr(model, prefix).fixed_positions
            _require(
                torch.allclose(state[key].float(), ours, atol=1e-5),
                f"{key} differs from the 2-D sin-cos table",
            )
    for key in [k for k in state if k.endswith("alibi_scale")]:
        state[key] = state[key].reshape(-1)  # fairseq keeps (1, 1, heads, 1, 1)
    mapping = KeyMapping(
        rules=specific(prefix, "teacher.model") + _common_rules(modality, prefix, "teacher.model"),
        drop=[
            r"(_ema/)?modality_encoders\.IMAGE\.fixed_positional_encoder\.positions",
            # the teacher of a 2.0 audio/text model reads the student's local features
            r"_ema/modality_encoders\.(AUDIO|TEXT)\.(local_encoder|project_features)\..*",
        ],
    )
    target_shapes = {k: v.shape for k, v in model.state_dict().items()}
    model.load_state_dict(map_state_dict(state, mapping, target_shapes), strict=True)
    return model
