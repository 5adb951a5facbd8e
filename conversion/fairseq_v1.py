"""fairseq data2vec 1.0 (audio, text) → data2vec_hf pretraining models: configs and weight names.

fairseq layouts read from ``examples/data2vec/models/data2vec_{audio,text}.py`` and the modules they
build (wav2vec ``TransformerEncoder``, fairseq ``TransformerEncoder``). The fairseq EMA teacher is
stored as a nested ``_ema`` dict; its copies of shared tensors (positional convolution, embeddings)
are dropped because our teacher reads those from the student.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from data2vec_hf import (
    Data2VecAudioForPreTraining,
    Data2VecAudioPreTrainingConfig,
    Data2VecTextForPreTraining,
    Data2VecTextPreTrainingConfig,
)

from .mapping import ConversionError, KeyMapping, flatten_nested, map_state_dict, safe_literal


def load_fairseq_checkpoint(path: str | Path) -> dict:
    """Read a fairseq checkpoint without executing pickled code (``weights_only=True``)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for refused or broken pickles
        raise ConversionError(f"cannot read {path} as a weights-only fairseq checkpoint: {error}") from error
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ConversionError(f"{path} is not a fairseq checkpoint (no 'model' state dict)")
    return checkpoint


def fairseq_state_dict(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """The model state dict with the nested EMA dict flattened to ``<prefix>_ema/<name>`` keys."""
    return flatten_nested(checkpoint["model"])


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConversionError(message)


_OBJECTIVE_KEYS = (
    "average_top_k_layers",
    "instance_norm_target_layer",
    "layer_norm_target_layer",
    "instance_norm_targets",
    "layer_norm_targets",
    "loss_beta",
    "ema_decay",
    "ema_end_decay",
    "ema_anneal_end_step",
)


def _objective_fields(model_cfg: Mapping) -> dict:
    _require(
        not model_cfg.get("batch_norm_target_layer") and not model_cfg.get("group_norm_target_layer"),
        "batch/group-norm target layers are not supported",
    )
    fields = {k: model_cfg[k] for k in _OBJECTIVE_KEYS if model_cfg.get(k) is not None}
    if "min_target_var" in model_cfg:
        fields.update(min_target_var=model_cfg["min_target_var"], min_pred_var=model_cfg["min_pred_var"])
    return fields


# ---------------------------------------------------------------------------------------------- audio


def audio_config(model_cfg: Mapping) -> Data2VecAudioPreTrainingConfig:
    """Translate a fairseq ``data2vec_audio`` model config."""
    _require(
        model_cfg.get("extractor_mode", "layer_norm") == "layer_norm",
        "only extractor_mode=layer_norm exists in transformers' Data2VecAudio",
    )
    _require(
        not model_cfg.get("layer_norm_first", False),
        "layer_norm_first=True has no transformers Data2VecAudio equivalent",
    )
    conv_layers = safe_literal(model_cfg["conv_feature_layers"])
    depth = model_cfg.get("pos_conv_depth", 1)
    _require(
        depth > 1, "pos_conv_depth=1 (wav2vec-style weight-normed positional conv) is not data2vec's layout"
    )
    return Data2VecAudioPreTrainingConfig(
        hidden_size=model_cfg["encoder_embed_dim"],
        num_hidden_layers=model_cfg["encoder_layers"],
        num_attention_heads=model_cfg["encoder_attention_heads"],
        intermediate_size=model_cfg["encoder_ffn_embed_dim"],
        hidden_act=model_cfg.get("activation_fn", "gelu"),
        conv_dim=tuple(c[0] for c in conv_layers),
        conv_kernel=tuple(c[1] for c in conv_layers),
        conv_stride=tuple(c[2] for c in conv_layers),
        conv_bias=bool(model_cfg.get("conv_bias", False)),
        num_conv_pos_embeddings=depth,
        conv_pos_kernel_size=max(3, model_cfg["conv_pos"] // depth),
        num_conv_pos_embedding_groups=model_cfg["conv_pos_groups"],
        hidden_dropout=model_cfg.get("dropout", 0.1),
        attention_dropout=model_cfg.get("attention_dropout", 0.1),
        activation_dropout=model_cfg.get("activation_dropout", 0.0),
        feat_proj_dropout=model_cfg.get("dropout_input", 0.0),
        layerdrop=model_cfg.get("encoder_layerdrop", 0.0),
        layer_norm_eps=1e-5,
        loss_scale=model_cfg.get("loss_scale"),
        mask_prob=model_cfg.get("mask_prob", 0.65),
        mask_length=model_cfg.get("mask_length", 10),
        **_objective_fields(model_cfg),
    )


def _encoder_layer_rules(src: str, dst: str) -> list[tuple[str, str]]:
    """wav2vec ``TransformerSentenceEncoderLayer`` → transformers ``Data2VecAudioEncoderLayer``."""
    layer = rf"{src}layers\.(\d+)\."
    out = rf"{dst}layers.\1."
    return [
        (layer + r"self_attn\.(k_proj|v_proj|q_proj|out_proj)\.(weight|bias)", out + r"attention.\2.\3"),
        (layer + r"self_attn_layer_norm\.(weight|bias)", out + r"layer_norm.\2"),
        (layer + r"fc1\.(weight|bias)", out + r"feed_forward.intermediate_dense.\2"),
        (layer + r"fc2\.(weight|bias)", out + r"feed_forward.output_dense.\2"),
        (layer + r"final_layer_norm\.(weight|bias)", out + r"final_layer_norm.\2"),
        (rf"{src}layer_norm\.(weight|bias)", rf"{dst}layer_norm.\1"),
    ]


AUDIO_MAPPING = KeyMapping(
    rules=[
        (r"mask_emb", "data2vec_audio.masked_spec_embed"),
        (
            r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)",
            r"data2vec_audio.feature_extractor.conv_layers.\1.conv.\2",
        ),
        (
            r"feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)",
            r"data2vec_audio.feature_extractor.conv_layers.\1.layer_norm.\2",
        ),
        (r"layer_norm\.(weight|bias)", r"data2vec_audio.feature_projection.layer_norm.\1"),
        (r"post_extract_proj\.(weight|bias)", r"data2vec_audio.feature_projection.projection.\1"),
        (
            r"encoder\.pos_conv\.(\d+)\.0\.(weight|bias)",
            r"data2vec_audio.encoder.pos_conv_embed.layers.\1.conv.\2",
        ),
        *_encoder_layer_rules(r"encoder\.", "data2vec_audio.encoder."),
        (r"final_proj\.(weight|bias)", r"final_proj.\1"),
        *_encoder_layer_rules(r"_ema/", "teacher.model."),
    ],
    # the teacher's positional convolution is shared with the student in data2vec_hf
    drop=[r"_ema/pos_conv\..*"],
)


# ----------------------------------------------------------------------------------------------- text


def text_config(
    model_cfg: Mapping,
    task_cfg: Mapping | None,
    state: Mapping[str, torch.Tensor],
    mask_token_id: int | None = None,
) -> Data2VecTextPreTrainingConfig:
    """Translate a fairseq ``data2vec_text`` model (+ ``masked_lm`` task) config."""
    transformer = model_cfg["transformer"]
    encoder = transformer["encoder"]
    _require(
        not encoder.get("normalize_before", False),
        "normalize_before=True has no transformers Data2VecText equivalent",
    )
    _require(
        transformer.get("layernorm_embedding", False),
        "layernorm_embedding=False has no transformers Data2VecText equivalent",
    )
    _require(
        transformer.get("no_scale_embedding", False),
        "scaled embeddings have no transformers Data2VecText equivalent",
    )
    _require(
        encoder.get("learned_pos", False), "sinusoidal positions have no transformers Data2VecText equivalent"
    )
    vocab_size, _ = state["encoder.sentence_encoder.embed_tokens.weight"].shape
    num_positions, _ = state["encoder.sentence_encoder.embed_positions.weight"].shape
    task_cfg = task_cfg or {}
    leave, random = task_cfg.get("leave_unmasked_prob", 0.1), task_cfg.get("random_token_prob", 0.1)
    loss_scale = model_cfg.get("loss_scale")
    return Data2VecTextPreTrainingConfig(
        vocab_size=vocab_size,
        hidden_size=encoder["embed_dim"],
        num_hidden_layers=encoder["layers"],
        num_attention_heads=encoder["attention_heads"],
        intermediate_size=encoder["ffn_embed_dim"],
        hidden_act=transformer.get("activation_fn", "gelu"),
        hidden_dropout_prob=transformer.get("dropout", 0.1),
        attention_probs_dropout_prob=transformer.get("attention_dropout", 0.1),
        max_position_embeddings=num_positions,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        # fairseq appends <mask> after the dictionary, so it is the last embedding row
        mask_token_id=vocab_size - 1 if mask_token_id is None else mask_token_id,
        head_layers=model_cfg.get("head_layers", 1),
        loss_scale=None if loss_scale is None or loss_scale <= 0 else loss_scale,
        mlm_probability=task_cfg.get("mask_prob", 0.15),
        mask_replace_prob=1.0 - leave - random,
        random_replace_prob=random,
        mask_span_length=task_cfg.get("mask_multiple_length", 1),
        **_objective_fields(model_cfg),
    )


def _text_layer_rules(src: str, dst: str) -> list[tuple[str, str]]:
    """fairseq ``TransformerEncoderLayer`` → transformers ``Data2VecTextLayer``."""
    layer = rf"{src}layers\.(\d+)\."
    out = rf"{dst}encoder.layer.\1."
    return [
        (layer + r"self_attn\.q_proj\.(weight|bias)", out + r"attention.self.query.\2"),
        (layer + r"self_attn\.k_proj\.(weight|bias)", out + r"attention.self.key.\2"),
        (layer + r"self_attn\.v_proj\.(weight|bias)", out + r"attention.self.value.\2"),
        (layer + r"self_attn\.out_proj\.(weight|bias)", out + r"attention.output.dense.\2"),
        (layer + r"self_attn_layer_norm\.(weight|bias)", out + r"attention.output.LayerNorm.\2"),
        (layer + r"fc1\.(weight|bias)", out + r"intermediate.dense.\2"),
        (layer + r"fc2\.(weight|bias)", out + r"output.dense.\2"),
        (layer + r"final_layer_norm\.(weight|bias)", out + r"output.LayerNorm.\2"),
    ]


TEXT_MAPPING = KeyMapping(
    rules=[
        (
            r"encoder\.sentence_encoder\.embed_tokens\.weight",
            "data2vec_text.embeddings.word_embeddings.weight",
        ),
        (
            r"encoder\.sentence_encoder\.embed_positions\.weight",
            "data2vec_text.embeddings.position_embeddings.weight",
        ),
        (
            r"encoder\.sentence_encoder\.layernorm_embedding\.(weight|bias)",
            r"data2vec_text.embeddings.LayerNorm.\1",
        ),
        *_text_layer_rules(r"encoder\.sentence_encoder\.", "data2vec_text."),
        (r"encoder\.regression_head\.(\d+)\.(weight|bias)", r"regression_head.\1.\2"),
        *_text_layer_rules(r"encoder\._ema/", "teacher.model."),
    ],
    drop=[
        r"(encoder\.sentence_encoder\.|encoder\._ema/)version",  # fairseq bookkeeping
        # the teacher's embeddings are shared with the student in data2vec_hf
        r"encoder\._ema/(embed_tokens|embed_positions|layernorm_embedding)\..*",
    ],
)


# -------------------------------------------------------------------------------------------- loading


def _load_into(model, state: dict[str, torch.Tensor], mapping: KeyMapping, extra=None):
    target_shapes = {k: v.shape for k, v in model.state_dict().items()}
    converted = map_state_dict(state, mapping, target_shapes, extra)
    model.load_state_dict(converted, strict=True)
    return model


def audio_model_from_fairseq(checkpoint: Mapping) -> Data2VecAudioForPreTraining:
    """A :class:`Data2VecAudioForPreTraining` holding the fairseq student, head and teacher weights."""
    config = audio_config(checkpoint["cfg"]["model"])
    state = fairseq_state_dict(checkpoint)
    _require(
        "_ema/layer_norm.weight" in state or not any(k.startswith("_ema") for k in state),
        "incomplete _ema teacher",
    )
    model = Data2VecAudioForPreTraining(config)
    if not any(k.startswith("_ema/") for k in state):  # fine-tuned or EMA-less file: teacher = student
        state.update(
            {f"_ema/{k[len('encoder.') :]}": v for k, v in state.items() if k.startswith("encoder.")}
        )
    return _load_into(model.eval(), state, AUDIO_MAPPING)


def text_model_from_fairseq(
    checkpoint: Mapping, mask_token_id: int | None = None
) -> Data2VecTextForPreTraining:
    """A :class:`Data2VecTextForPreTraining` holding the fairseq student, head and teacher weights."""
    state = fairseq_state_dict(checkpoint)
    config = text_config(checkpoint["cfg"]["model"], checkpoint["cfg"].get("task"), state, mask_token_id)
    model = Data2VecTextForPreTraining(config)
    if not any(k.startswith("encoder._ema/") for k in state):
        prefix = "encoder.sentence_encoder."
        state.update(
            {f"encoder._ema/{k[len(prefix) :]}": v for k, v in state.items() if k.startswith(prefix)}
        )
    # fairseq has no token-type embedding; a single zero row makes transformers' sum a no-op
    token_types = torch.zeros(1, config.hidden_size)
    return _load_into(
        model.eval(),
        state,
        TEXT_MAPPING,
        {"data2vec_text.embeddings.token_type_embeddings.weight": token_types},
    )
