"""fairseq ``data2vec_multi`` model config → ``Data2Vec2AudioConfig`` / ``Data2Vec2VisionConfig`` /
``Data2Vec2TextConfig``. A setting without a faithful home in the ``Data2Vec2*`` models is refused with a
:class:`~.mapping.ConversionError` naming it. See ``fairseq_v2.py`` for the formats and the converter.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from data2vec_hf import Data2Vec2AudioConfig, Data2Vec2TextConfig, Data2Vec2VisionConfig

from .core import require
from .fairseq_v2_formats import MODALITY_NAMES
from .mapping import safe_literal

#: target settings copied only when the file sets them (otherwise our config's defaults apply)
_OPTIONAL_TARGET_FIELDS = (
    "average_top_k_layers",
    "instance_norm_target_layer",
    "layer_norm_target_layer",
    "instance_norm_targets",
    "layer_norm_targets",
    "ema_decay",
    "ema_end_decay",
    "ema_anneal_end_step",
)


def _check_shared(model_cfg: Mapping, modality_cfg: Mapping) -> None:
    """Refuse the settings of every modality that the ``Data2Vec2*`` models do not implement."""
    require(
        not model_cfg.get("layer_norm_first", False),
        "layer_norm_first=True (pre-LN) 2.0 models are not supported",
    )
    require(
        model_cfg.get("norm_affine", True), "norm_affine=False (LayerNorms without weights) is not supported"
    )
    require(model_cfg.get("shared_decoder") is None, "a shared decoder is not supported")
    require(not model_cfg.get("recon_loss"), "recon_loss is not supported")
    require(
        not modality_cfg.get("learned_alibi") and not modality_cfg.get("learned_alibi_scale_per_layer"),
        "learned/per-layer ALiBi is not supported",
    )
    decoder = modality_cfg.get("decoder") or {}
    require(decoder.get("decoder_dim") is not None, "checkpoints without a decoder config are not supported")
    require(
        not decoder.get("add_positions_masked") and not decoder.get("add_positions_all"),
        "decoder positions are not supported",
    )
    require(not model_cfg.get("batch_norm_target_layer"), "batch-norm target layers are not supported")
    require(not model_cfg.get("end_of_block_targets"), "end-of-block targets are not supported")


def _encoder_fields(model_cfg: Mapping, modality_cfg: Mapping) -> dict:
    """Transformer, prenet and masking fields shared by the three configs."""
    return dict(
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
    )


def _objective_fields(model_cfg: Mapping, modality_cfg: Mapping) -> dict:
    """Decoder, teacher and loss fields shared by the three configs."""
    decoder = modality_cfg["decoder"]
    fields = dict(
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
    for key in _OPTIONAL_TARGET_FIELDS:
        if model_cfg.get(key) is not None:
            fields[key] = model_cfg[key]
    return fields


def _audio_config(modality_cfg: Mapping, fields: dict) -> Data2Vec2AudioConfig:
    require(
        modality_cfg.get("extractor_mode", "layer_norm") == "layer_norm",
        "only extractor_mode=layer_norm is supported",
    )
    require(not modality_cfg.get("conv_pos_pre_ln"), "conv_pos_pre_ln is not supported")
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


def _vision_config(model_cfg: Mapping, modality_cfg: Mapping, fields: dict) -> Data2Vec2VisionConfig:
    require(
        modality_cfg.get("embed_dim", model_cfg["embed_dim"]) == model_cfg["embed_dim"],
        "a patch embedding of another width is not supported",
    )
    require(
        modality_cfg.get("fixed_positions", True) and not modality_cfg.get("use_alibi_encoder"),
        "only fixed sin-cos positions are supported for images",
    )
    require(not modality_cfg.get("transformer_decoder"), "transformer decoders are not supported")
    return Data2Vec2VisionConfig(
        image_size=modality_cfg.get("input_size", 224),
        patch_size=modality_cfg.get("patch_size", 16),
        num_channels=modality_cfg.get("in_chans", 3),
        **fields,
    )


def _text_config(
    modality_cfg: Mapping, state: Mapping[str, torch.Tensor], prefix: str, fields: dict
) -> Data2Vec2TextConfig:
    require(
        modality_cfg.get("learned_pos", True) and modality_cfg.get("no_scale_embedding", True),
        "only learned positions without embedding scaling are supported",
    )
    require(modality_cfg.get("layernorm_embedding", True), "layernorm_embedding=False is not supported")
    require(not modality_cfg.get("use_alibi_encoder"), "ALiBi for text is not supported")
    embed = f"{prefix}modality_encoders.TEXT.local_encoder."
    require(f"{embed}embed_tokens.weight" in state, f"no token embedding {embed}embed_tokens.weight")
    vocab_size, _ = state[f"{embed}embed_tokens.weight"].shape
    positions, _ = state[f"{embed}embed_positions.weight"].shape
    return Data2Vec2TextConfig(
        vocab_size=vocab_size,
        max_position_embeddings=positions,
        embedding_dropout=modality_cfg.get("dropout", 0.1),
        **fields,
    )


def v2_config(model_cfg: Mapping, state: Mapping[str, torch.Tensor], prefix: str = "", **extra):
    """The ``Data2Vec2*Config`` of a (plain-dict) ``data2vec_multi`` model config; ``extra`` adds head
    fields (``vocab_size``, ``num_labels``, dropouts). ``prefix``: where the model's tensors sit in
    ``state`` (the text vocabulary is read from the embedding's shape)."""
    modality = model_cfg.get("supported_modality")
    modality = modality.upper() if isinstance(modality, str) else modality
    require(
        modality in MODALITY_NAMES,
        f"unsupported or missing supported_modality {modality!r} (a multi-modality checkpoint?)",
    )
    modalities = model_cfg.get("modalities") or {}
    require(
        isinstance(modalities.get(modality.lower()), Mapping),
        f"the model config has no modalities.{modality.lower()} section",
    )
    modality_cfg = modalities[modality.lower()]
    _check_shared(model_cfg, modality_cfg)
    fields = {
        **_encoder_fields(model_cfg, modality_cfg),
        **_objective_fields(model_cfg, modality_cfg),
        **extra,
    }
    alibi_heads = modality_cfg.get("num_alibi_heads", model_cfg["num_heads"])
    require(
        not modality_cfg.get("use_alibi_encoder") or alibi_heads == model_cfg["num_heads"],
        f"num_alibi_heads={alibi_heads} differs from num_heads={model_cfg['num_heads']}",
    )
    if modality == "AUDIO":
        return _audio_config(modality_cfg, fields)
    if modality == "IMAGE":
        return _vision_config(model_cfg, modality_cfg, fields)
    return _text_config(modality_cfg, state, prefix, fields)
