"""fairseq data2vec 2.0 (``data2vec_multi``) → data2vec_hf ``Data2Vec2*``: configs, weight layouts, converter.

Layout facts from fairseq's ``examples/data2vec/models/data2vec2.py`` and ``modalities/*.py``. Only the
post-LN block layout (``layer_norm_first=False``, used by every released 2.0 model) is supported.

Source formats (the ``data2vec_multi`` state dict, possibly nested in a fine-tuning wrapper):

* pretrained ``data2vec_multi``: student (``modality_encoders.<M>.*``, ``blocks.*``), convolutional
  decoder (``modality_encoders.<M>.decoder.*``) and the EMA teacher as a nested ``_ema`` dict (the
  blocks only, keyed ``N.*``, when ``ema_encoder_only``; otherwise a model copy without decoder);
* ``wav2vec_ctc`` around it (``fairseq/models/wav2vec/wav2vec2_asr.py``): ``w2v_encoder.w2v_model.*``
  (pretraining modules removed) + the output projection ``w2v_encoder.proj``; config in ``w2v_args``;
* ``mae_image_classification`` around it (``examples/data2vec/models/mae_image_classification.py``, the
  fine-tuning model of the released ImageNet checkpoints): ``model.*`` + ``fc_norm`` (LayerNorm, eps
  1e-6) on the mean of the patch tokens + ``head``; config in ``pretrained_model_args``;
* ``data2vec_text_classification`` around it (``examples/data2vec/models/data2vec_text_classification.py``):
  ``model.*`` + a RoBERTa classification head ``classification_heads.<name>.{dense,out_proj}`` on the first
  token; config in ``pretrained_model_args``;
* ``audio_classification`` around it (``examples/data2vec/models/audio_classification.py``, multi-label
  audio tagging such as AudioSet): ``d2v_model.*`` + a per-frame ``proj`` (and ``proj2``) pooled over time
  by its ``prediction_mode``; config in ``d2v_args``.

The fine-tuning wrappers also carry the fine-tuning masks (``apply_mask``, ``mask_prob``, ``mask_length``,
``mask_channel_prob``, ``mask_channel_length``), which fairseq hands to the data2vec_multi encoder; they
become the config's SpecAugment fields, so that fine-tuning the converted model continues as fairseq did.

One :class:`~.mapping.KeyMapping` per modality maps the ``data2vec_multi`` names onto the *pretraining*
model's names; every export (encoder, pretraining, task heads) is an :class:`~.mapping.ExportView` of it
(plus the head rules), so the decoder and EMA copies are dropped by name when exporting an encoder.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from data2vec_hf import (
    Data2Vec2AudioConfig,
    Data2Vec2AudioForPreTraining,
    Data2Vec2AudioModel,
    Data2Vec2TextConfig,
    Data2Vec2TextForPreTraining,
    Data2Vec2TextModel,
    Data2Vec2VisionConfig,
    Data2Vec2VisionForPreTraining,
    Data2Vec2VisionModel,
)
from data2vec_hf.data2vec2_vision import sincos_positions_2d

from .checkpoint import plain
from .core import Conversion, Options, Source, build_model
from .fairseq_v1 import fairseq_state_dict
from .fairseq_v2_heads import Head, audio_head, ctc_head, image_head, refuse_wrapper, text_head
from .mapping import ConversionError, ExportView, KeyMapping, safe_literal
from .processors import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    audio_feature_extractor,
    ctc_processor,
    mae_image_processor,
    roberta_tokenizer,
)

logger = logging.getLogger(__name__)

MODEL_NAME = "data2vec_multi"
CTC_WRAPPERS = ("wav2vec_ctc", "wav2vec2_ctc")
IMAGE_CLASSIFIER = "mae_image_classification"
TEXT_CLASSIFIER = "data2vec_text_classification"
AUDIO_CLASSIFIER = "audio_classification"
#: fine-tuning wrappers recognised around a data2vec_multi model but refused (see ``refuse_wrapper``)
REFUSED_WRAPPERS = ("data2vec_image_classification",)
#: wrapper name → (config field holding the pretraining config, source-key prefix of the wrapped model)
_WRAPPED = {
    **{name: ("w2v_args", "w2v_encoder.w2v_model.") for name in CTC_WRAPPERS},
    IMAGE_CLASSIFIER: ("pretrained_model_args", "model."),
    TEXT_CLASSIFIER: ("pretrained_model_args", "model."),
    "data2vec_image_classification": ("pretrained_model_args", "model."),
    AUDIO_CLASSIFIER: ("d2v_args", "d2v_model."),
}

BLOCK = r"(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)"
POSITIONS = r"modality_encoders\.IMAGE\.fixed_positional_encoder\.positions"
_TASK_MODALITY = {
    "audio_pretraining": "AUDIO",
    "audio_finetuning": "AUDIO",
    "image_pretraining": "IMAGE",
    "mae_image_pretraining": "IMAGE",
    "image_classification": "IMAGE",
    "mae_image_classification": "IMAGE",
    "masked_lm": "TEXT",
    "sentence_prediction": "TEXT",
}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConversionError(message)


# ------------------------------------------------------------------------------------------ formats


@dataclass
class Format:
    """Where the ``data2vec_multi`` model sits in a file and which fine-tuned head it carries."""

    wrapper: str | None  # the fine-tuning model's _name; None for a pretrained file
    model_cfg: dict  # the data2vec_multi model config
    task_cfg: dict  # the pretraining task config
    prefix: str = ""  # source-key prefix of the data2vec_multi state dict
    wrapper_cfg: dict = field(default_factory=dict)
    wrapper_task: dict = field(default_factory=dict)


def _pretraining_sections(args) -> tuple[dict, dict] | None:
    """``(model, task)`` of a pretraining config stored inside a fine-tuning config (``w2v_args`` or
    ``pretrained_model_args``): a full fairseq config or a legacy flat namespace."""
    args = plain(args)
    if not isinstance(args, Mapping):
        return None
    if isinstance(args.get("model"), Mapping):
        return dict(args["model"]), dict(args.get("task") or {})
    model = dict(args)  # legacy flat namespace
    model.setdefault("_name", args.get("arch"))
    return model, dict(args)


def find_format(sections: tuple[dict, dict] | None) -> Format | None:
    """The :class:`Format` of a fairseq file whose (inner) model is ``data2vec_multi``, else None."""
    if not sections:
        return None
    model_cfg, task_cfg = sections
    name = model_cfg.get("_name")
    if name == MODEL_NAME:
        return Format(None, dict(model_cfg), dict(task_cfg))
    if name not in _WRAPPED:
        return None
    key, prefix = _WRAPPED[name]
    inner = _pretraining_sections(model_cfg.get(key))
    if inner is None or inner[0].get("_name") != MODEL_NAME:
        return None
    return Format(name, inner[0], inner[1], prefix, dict(model_cfg), dict(task_cfg))


def modality_key(fmt: Format) -> str | None:
    """``AUDIO`` / ``IMAGE`` / ``TEXT`` from ``supported_modality`` (or, without it, the task)."""
    supported = fmt.model_cfg.get("supported_modality")
    if isinstance(supported, str) and supported.upper() in MODALITIES:
        return supported.upper()
    if supported is None:
        return _TASK_MODALITY.get(fmt.task_cfg.get("_name"))
    return None


def modality_of(source: Source) -> str | None:
    """The modality (``audio``/``vision``/``text``) of a data2vec 2.0 file, for messages and detection."""
    fmt = find_format(source.sections)
    key = modality_key(fmt) if fmt else None
    return {"AUDIO": "audio", "IMAGE": "vision", "TEXT": "text"}.get(key)


def is_data2vec2(source: Source) -> bool:
    return find_format(source.sections) is not None


# ------------------------------------------------------------------------------------------ configs


def _shared_config(model_cfg: Mapping, modality_cfg: Mapping) -> dict:
    _require(
        not model_cfg.get("layer_norm_first", False),
        "layer_norm_first=True (pre-LN) 2.0 models are not supported",
    )
    _require(
        model_cfg.get("norm_affine", True), "norm_affine=False (LayerNorms without weights) is not supported"
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


def v2_config(model_cfg: Mapping, state: Mapping[str, torch.Tensor], prefix: str = "", **extra):
    """The ``Data2Vec2*Config`` of a (plain-dict) ``data2vec_multi`` model config; ``extra`` adds head
    fields (``vocab_size``, ``num_labels``, dropouts). ``prefix``: where the model's tensors sit in
    ``state`` (the text vocabulary is read from the embedding's shape)."""
    modality = model_cfg.get("supported_modality")
    modality = modality.upper() if isinstance(modality, str) else modality
    _require(
        modality in MODALITIES,
        f"unsupported or missing supported_modality {modality!r} (a multi-modality checkpoint?)",
    )
    modalities = model_cfg.get("modalities") or {}
    _require(
        isinstance(modalities.get(modality.lower()), Mapping),
        f"the model config has no modalities.{modality.lower()} section",
    )
    modality_cfg = modalities[modality.lower()]
    fields = {**_shared_config(model_cfg, modality_cfg), **extra}
    alibi_heads = modality_cfg.get("num_alibi_heads", model_cfg["num_heads"])
    _require(
        not modality_cfg.get("use_alibi_encoder") or alibi_heads == model_cfg["num_heads"],
        f"num_alibi_heads={alibi_heads} differs from num_heads={model_cfg['num_heads']}",
    )
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
    _require(not modality_cfg.get("use_alibi_encoder"), "ALiBi for text is not supported")
    embed = f"{prefix}modality_encoders.TEXT.local_encoder."
    _require(f"{embed}embed_tokens.weight" in state, f"no token embedding {embed}embed_tokens.weight")
    vocab_size, _ = state[f"{embed}embed_tokens.weight"].shape
    positions, _ = state[f"{embed}embed_positions.weight"].shape
    return Data2Vec2TextConfig(
        vocab_size=vocab_size,
        max_position_embeddings=positions,
        embedding_dropout=modality_cfg.get("dropout", 0.1),
        **fields,
    )


def config_from_fairseq_v2(checkpoint: Mapping, state: Mapping[str, torch.Tensor]):
    """The config of a pretrained ``data2vec_multi`` checkpoint (see :func:`v2_config`)."""
    return v2_config(plain(checkpoint["cfg"])["model"], state)


# ----------------------------------------------------------------------------------------- layouts


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


#: modality key → (pretraining class, encoder class, backbone attribute, layout rules)
MODALITIES = {
    "AUDIO": (Data2Vec2AudioForPreTraining, Data2Vec2AudioModel, "data2vec2_audio", _audio_rules),
    "IMAGE": (Data2Vec2VisionForPreTraining, Data2Vec2VisionModel, "data2vec2_vision", _vision_rules),
    "TEXT": (Data2Vec2TextForPreTraining, Data2Vec2TextModel, "data2vec2_text", _text_rules),
}
_MODALITY_NAMES = {"AUDIO": "audio", "IMAGE": "vision", "TEXT": "text"}
_FEATURE_PIPELINE = {
    "AUDIO": "feature-extraction",
    "IMAGE": "image-feature-extraction",
    "TEXT": "feature-extraction",
}


def pretraining_mapping(modality: str, source_prefix: str = "") -> KeyMapping:
    """``data2vec_multi`` names (under ``source_prefix``) → ``Data2Vec2*ForPreTraining`` names."""
    _, _, backbone, specific = MODALITIES[modality]
    mapping = KeyMapping(
        rules=specific(backbone, "teacher.model") + _common_rules(modality, backbone, "teacher.model"),
        drop=[
            # a constant table, checked against ours by _prepare_state instead of being loaded
            rf"(_ema/)?{POSITIONS}",
            # the teacher of a 2.0 audio/text model reads the student's local features
            r"_ema/modality_encoders\.(AUDIO|TEXT)\.(local_encoder|project_features)\..*",
        ],
    )
    return mapping.with_source_prefix(re.escape(source_prefix)) if source_prefix else mapping


def _prepare_state(state: dict, config, source_prefix: str = "") -> dict:
    """Check the fixed sin-cos position tables against ours and bring fairseq's ALiBi scales,
    (1, 1, heads or 1, 1, 1), into our per-head shape."""
    positions = re.compile(rf"^{re.escape(source_prefix)}(_ema/)?{POSITIONS}$")
    table = None
    for key in [k for k in state if positions.match(k)]:
        if table is None:
            table = sincos_positions_2d(config.hidden_size, config.grid_size).unsqueeze(0)
        theirs = state[key].float()
        _require(
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


def _has_ema(state: Mapping, source_prefix: str = "") -> bool:
    return any(k.startswith(f"{source_prefix}_ema/") for k in state)


def _teacher_from_student(state: dict, config) -> dict:
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


def _pretraining_model(modality: str, config, state: dict, dtype):
    if not _has_ema(state):
        logger.info("no _ema teacher in the file: the teacher starts as a copy of the student")
        state = _teacher_from_student(state, config)
    model_cls = MODALITIES[modality][0]
    return build_model(model_cls, config, state, pretraining_mapping(modality), dtype=dtype)


def model_from_fairseq_v2(checkpoint: Mapping):
    """A ``Data2Vec2*ForPreTraining`` holding the fairseq student, decoder and EMA teacher weights."""
    state = fairseq_state_dict(checkpoint)
    model_cfg = plain(checkpoint["cfg"])["model"]
    config = v2_config(model_cfg, state)
    modality = model_cfg["supported_modality"].upper()
    _prepare_state(state, config)
    model = _pretraining_model(modality, config, state, dtype=torch.float32)
    model.train(False)
    return model


# ----------------------------------------------------------------------------------------- converter


def _export_view(mapping: KeyMapping, backbone: str, fmt: Format, head: Head | None, keep_head: bool):
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


def _processors(modality: str, fmt: Format, config, options: Options, head: Head | None):
    """Feature extractor / CTC processor, image processor or tokenizer; ``head``: the exported task head."""
    if modality == "AUDIO":
        task = fmt.wrapper_task if fmt.wrapper else fmt.task_cfg
        normalize = bool(task.get("normalize", fmt.task_cfg.get("normalize", False)))
        rate = task.get("sample_rate") or fmt.task_cfg.get("sample_rate") or 16000
        extractor = audio_feature_extractor(rate, normalize)
        details = [("input normalisation", normalize), ("sampling rate", rate)]
        if head is not None and head.export == "ctc":
            processors, notes = ctc_processor(extractor, options.dict_path, config.vocab_size)
            return processors, notes, details
        return [extractor], [], details
    if modality == "IMAGE":
        processor = mae_image_processor(config.image_size, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
        return [processor], [], []
    processors, notes = roberta_tokenizer(
        options.dict_path,
        options.encoder_json,
        options.vocab_bpe,
        config.vocab_size,
        config.max_position_embeddings,
    )
    return processors, notes, []


def _details(modality: str, config, state: Mapping, fmt: Format) -> list[tuple[str, object]]:
    rows = [
        (
            "hidden size / layers / heads",
            f"{config.hidden_size} / {config.num_hidden_layers} / {config.num_attention_heads}",
        ),
        ("prenet blocks / extra tokens", f"{config.prenet_depth} / {config.num_extra_tokens}"),
        ("LayerNorm eps", config.layer_norm_eps),
    ]
    if modality == "AUDIO":
        rows += [
            ("conv feature encoder", f"{len(config.conv_dim)} layers"),
            (
                "positional conv",
                f"{config.num_conv_pos_embeddings} layers, kernel {config.conv_pos_kernel_size}",
            ),
            ("ALiBi", "learned per-head scale" if config.use_alibi else "no"),
        ]
    elif modality == "IMAGE":
        rows.append(("image / patch size", f"{config.image_size} / {config.patch_size}"))
    else:
        rows += [("vocabulary", config.vocab_size), ("position embeddings", config.max_position_embeddings)]
    if fmt.wrapper is None:
        rows.append(("teacher in file", "yes (_ema)" if _has_ema(state) else "no"))
    return rows


def _notes(modality: str, export: str) -> list[str]:
    notes = []
    if modality == "IMAGE" and export in ("encoder", "pretraining"):
        notes.append(
            "`last_hidden_state` starts with the CLS (extra) token; fairseq's `features.x` leaves it out "
            "(use `last_hidden_state[:, 1:]` for the patch tokens)"
        )
    if modality == "AUDIO":
        notes.append(
            "for padded batches the positional convolution ignores padding (each utterance gets the same "
            "features whatever it is padded with); fairseq lets the padding leak into the last frames"
        )
    return notes


def convert_v2(source: Source, options: Options) -> Conversion:
    """data2vec 2.0 (``data2vec_multi``): pretrained (audio, image, text), CTC fine-tuned audio,
    ``audio_classification``, ``mae_image_classification`` and ``data2vec_text_classification`` fine-tuned
    models."""
    _require(
        source.sections is not None,
        "the file has no fairseq config; pass the model config with --model_config",
    )
    fmt = find_format(source.sections)
    if fmt is None:  # forced with --version 2
        name = source.sections[0].get("_name")
        _require(
            name in (None, MODEL_NAME),
            f"fairseq model {name!r} is not a data2vec 2.0 model (data2vec_multi, or wav2vec_ctc / "
            f"{IMAGE_CLASSIFIER} / {TEXT_CLASSIFIER} / {AUDIO_CLASSIFIER} around one)",
        )
        fmt = Format(None, dict(source.sections[0]), dict(source.sections[1]))
    model_cfg = {**fmt.model_cfg, **options.model_config}
    modality = modality_key(Format(fmt.wrapper, model_cfg, fmt.task_cfg))
    _require(
        modality is not None,
        f"unsupported or missing supported_modality {model_cfg.get('supported_modality')!r} "
        "(a multi-modality checkpoint?)",
    )
    state = fairseq_state_dict(source.checkpoint)
    if model_cfg.get("supported_modality") is None:  # detected from the task: one modality encoder only
        found = sorted(
            {
                m[1]
                for k in state
                if (m := re.match(rf"^{re.escape(fmt.prefix)}modality_encoders\.(\w+)\.", k))
            }
        )
        _require(
            found in ([], [modality]),
            f"a multi-modality data2vec_multi model (modality encoders {', '.join(found)}) is not supported",
        )
    model_cfg["supported_modality"] = modality

    head = None
    if fmt.wrapper in REFUSED_WRAPPERS:
        refuse_wrapper(fmt)
    elif fmt.wrapper in CTC_WRAPPERS:
        _require(modality == "AUDIO", f"a CTC model around a {modality} data2vec_multi model")
        head = ctc_head(fmt, state)
    elif fmt.wrapper == IMAGE_CLASSIFIER:
        _require(modality == "IMAGE", f"an image classifier around a {modality} data2vec_multi model")
        head = image_head(fmt, state, model_cfg)
    elif fmt.wrapper == TEXT_CLASSIFIER:
        _require(modality == "TEXT", f"a text classifier around a {modality} data2vec_multi model")
        head = text_head(fmt, state, model_cfg["embed_dim"])
    elif fmt.wrapper == AUDIO_CLASSIFIER:
        _require(modality == "AUDIO", f"an audio classifier around a {modality} data2vec_multi model")
        head = audio_head(fmt, state, (model_cfg.get("modalities") or {}).get("audio") or {})

    export = (head.export if head is not None else "encoder") if options.export == "auto" else options.export
    _require(
        export != "pretraining" or fmt.wrapper is None,
        "a fine-tuned checkpoint has no decoder or EMA teacher (fairseq removes them for fine-tuning); "
        "use --export encoder",
    )
    task_head = head if head is not None and export == head.export else None
    if task_head is not None and modality != "IMAGE":
        # fairseq's CTC and text heads read the features with the extra tokens removed; ours read
        # the full sequence
        extra = model_cfg["modalities"][modality.lower()].get("num_extra_tokens", 0)
        _require(
            extra == 0, f"extra tokens (num_extra_tokens={extra}) in a {head.kind} model are not supported"
        )

    config = v2_config(model_cfg, state, fmt.prefix, **(task_head.config if task_head else {}))
    _prepare_state(state, config, fmt.prefix)
    _, encoder_cls, backbone, _ = MODALITIES[modality]
    mapping = pretraining_mapping(modality, fmt.prefix)
    if head is not None:
        mapping = KeyMapping(rules=[*mapping.rules, *head.rules], drop=mapping.drop)

    notes = _notes(modality, export)
    if export == "pretraining":
        model = _pretraining_model(modality, config, state, options.dtype)
    elif task_head is not None:
        view = _export_view(mapping, backbone, fmt, head, keep_head=True)
        model = build_model(head.model_cls, config, state, view, dtype=options.dtype)
        notes += head.notes
    else:
        _require(export == "encoder", f"--export {export} is not available for this data2vec 2.0 file")
        view = _export_view(mapping, backbone, fmt, head, keep_head=False)
        model = build_model(encoder_cls, config, state, view, dtype=options.dtype)

    processors, processor_notes, processor_details = _processors(modality, fmt, config, options, task_head)
    details = _details(modality, config, state, fmt) + processor_details + (head.details if head else [])
    return Conversion(
        model=model,
        version="2.0",
        modality=_MODALITY_NAMES[modality],
        kind=head.kind if head is not None else "pretrained",
        export=export,
        pipeline_tag=task_head.pipeline_tag if task_head else _FEATURE_PIPELINE[modality],
        processors=processors,
        notes=notes + processor_notes,
        details=details,
        needs_data2vec_hf=True,
    )
