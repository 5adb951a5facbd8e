"""fairseq data2vec 1.0 (audio, text): configs, weight layouts and converters.

fairseq layouts read from ``examples/data2vec/models/data2vec_{audio,text}.py`` and the modules they
build (wav2vec ``TransformerEncoder``, fairseq ``TransformerEncoder``), and from
``fairseq/models/wav2vec/wav2vec2_asr.py`` for CTC fine-tuned files (``w2v_encoder.w2v_model.*`` +
``w2v_encoder.proj``). The fairseq EMA teacher is stored as a nested ``_ema`` dict; its copies of
shared tensors (positional convolution, embeddings) are dropped because our teacher reads those from
the student.

One :class:`~.mapping.KeyMapping` per source layout maps onto the *pretraining* model's names; what
an export keeps and drops (EMA teacher, regression head, CTC head) is an :class:`~.mapping.ExportView`
of it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from data2vec_hf import (
    Data2VecAudioForPreTraining,
    Data2VecAudioPreTrainingConfig,
    Data2VecTextForPreTraining,
    Data2VecTextPreTrainingConfig,
)
from transformers import Data2VecAudioForCTC, Data2VecAudioModel, Data2VecTextModel

from .checkpoint import fairseq_sections, load_checkpoint, plain
from .core import Conversion, Options, Source, build_model, require
from .mapping import ConversionError, ExportView, KeyMapping, flatten_nested, safe_literal
from .processors import audio_feature_extractor, ctc_processor, roberta_tokenizer

logger = logging.getLogger(__name__)


def load_fairseq_checkpoint(path: str | Path) -> dict:
    """Read a fairseq checkpoint without executing pickled code (see ``checkpoint.load_checkpoint``)."""
    checkpoint = load_checkpoint(path)
    if "model" not in checkpoint:
        raise ConversionError(f"{path} is not a fairseq checkpoint (no 'model' state dict)")
    return checkpoint


def fairseq_state_dict(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """The model state dict with the nested EMA dict flattened to ``<prefix>_ema/<name>`` keys."""
    return flatten_nested(checkpoint["model"])


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
    require(
        not model_cfg.get("batch_norm_target_layer") and not model_cfg.get("group_norm_target_layer"),
        "batch/group-norm target layers are not supported",
    )
    fields = {k: model_cfg[k] for k in _OBJECTIVE_KEYS if model_cfg.get(k) is not None}
    if "min_target_var" in model_cfg:
        fields.update(min_target_var=model_cfg["min_target_var"], min_pred_var=model_cfg["min_pred_var"])
    return fields


def _has_ema(state: Mapping, prefix: str = "") -> bool:
    return any(k.startswith(f"{prefix}_ema/") for k in state)


# ---------------------------------------------------------------------------------------------- audio


def audio_config(model_cfg: Mapping) -> Data2VecAudioPreTrainingConfig:
    """Translate a fairseq ``data2vec_audio`` model config (hydra ``cfg.model`` or legacy flat args)."""
    require(
        model_cfg.get("extractor_mode", "layer_norm") == "layer_norm",
        f"extractor_mode={model_cfg.get('extractor_mode')!r}: only layer_norm exists in transformers' Data2VecAudio",
    )
    require(
        not model_cfg.get("layer_norm_first", False),
        "layer_norm_first=True has no transformers Data2VecAudio equivalent",
    )
    require(
        model_cfg.get("layer_type", "transformer") == "transformer",
        f"layer_type={model_cfg.get('layer_type')!r}: only transformer layers exist in Data2VecAudio",
    )
    conv_layers = safe_literal(model_cfg["conv_feature_layers"])
    depth = model_cfg.get("pos_conv_depth", 1)
    require(
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
        # the released checkpoints wrap the regression head in a Sequential: final_proj.0.*
        (r"final_proj(?:\.0)?\.(weight|bias)", r"final_proj.\1"),
        *_encoder_layer_rules(r"_ema/", "teacher.model."),
    ],
    # the teacher's positional convolution is shared with the student in data2vec_hf
    drop=[r"_ema/pos_conv\..*"],
)

#: CTC fine-tuned files (``wav2vec_ctc``): the pretraining model under ``w2v_encoder.w2v_model.`` and
#: the output projection ``w2v_encoder.proj``.
AUDIO_CTC_MAPPING = KeyMapping(
    rules=[
        *AUDIO_MAPPING.with_source_prefix(r"w2v_encoder\.w2v_model\.").rules,
        (r"w2v_encoder\.proj\.(weight|bias)", r"lm_head.\1"),
    ],
    drop=AUDIO_MAPPING.with_source_prefix(r"w2v_encoder\.w2v_model\.").drop,
)

_AUDIO_PRETRAINING_ONLY = [r"final_proj\..*", r"teacher\..*"]
AUDIO_ENCODER_VIEW = ExportView(
    AUDIO_MAPPING,
    rename=[("data2vec_audio.", "")],
    drop_targets=_AUDIO_PRETRAINING_ONLY,
    drop_sources=[r"_ema/.*"],  # the whole EMA teacher, whatever it averaged
)
AUDIO_CTC_VIEW = ExportView(
    AUDIO_CTC_MAPPING,
    rename=[("data2vec_audio.", "data2vec_audio."), ("lm_head.", "lm_head.")],
    drop_targets=_AUDIO_PRETRAINING_ONLY,
    drop_sources=[r"w2v_encoder\.w2v_model\._ema/.*"],
)
AUDIO_CTC_ENCODER_VIEW = ExportView(
    AUDIO_CTC_MAPPING,
    rename=[("data2vec_audio.", "")],
    drop_targets=[*_AUDIO_PRETRAINING_ONLY, r"lm_head\..*"],
    drop_sources=[r"w2v_encoder\.w2v_model\._ema/.*"],
)


def _teacher_from_student(state: dict, student: str, teacher: str) -> dict:
    """A file without EMA (fine-tuned, or saved before the teacher existed): teacher = student copy."""
    state = dict(state)
    state.update({teacher + k[len(student) :]: v.clone() for k, v in state.items() if k.startswith(student)})
    return state


def audio_model_from_fairseq(checkpoint: Mapping) -> Data2VecAudioForPreTraining:
    """A :class:`Data2VecAudioForPreTraining` holding the fairseq student, head and teacher weights."""
    config = audio_config(fairseq_sections(checkpoint)[0])
    state = fairseq_state_dict(checkpoint)
    return _audio_pretraining(config, state, dtype=torch.float32)


def _audio_pretraining(config, state: dict, dtype) -> Data2VecAudioForPreTraining:
    if _has_ema(state):
        require(
            "_ema/layer_norm.weight" in state,
            "the _ema teacher is not a transformer-only EMA (ema_transformer_only=False?); "
            "use --export encoder",
        )
    else:
        logger.info("no _ema teacher in the file: the teacher starts as a copy of the student")
        state = _teacher_from_student(state, "encoder.", "_ema/")
    return build_model(Data2VecAudioForPreTraining, config, state, AUDIO_MAPPING, dtype=dtype)


def _ctc_config(backbone, finetune_cfg: Mapping, criterion_cfg: Mapping, num_labels: int):
    """A ``Data2VecAudioConfig`` for ``Data2VecAudioForCTC`` from the backbone config and the
    fine-tuning settings (which fairseq passes down as overrides of the pretraining config)."""
    values = backbone.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "dtype"):
        values.pop(key, None)
    overrides = {
        "hidden_dropout": finetune_cfg.get("dropout"),
        "attention_dropout": finetune_cfg.get("attention_dropout"),
        "activation_dropout": finetune_cfg.get("activation_dropout"),
        "feat_proj_dropout": finetune_cfg.get("dropout_input"),
        "final_dropout": finetune_cfg.get("final_dropout"),
        "layerdrop": finetune_cfg.get("layerdrop"),
        "mask_time_prob": finetune_cfg.get("mask_prob") if finetune_cfg.get("apply_mask") else 0.0,
        "mask_time_length": finetune_cfg.get("mask_length"),
        "mask_feature_prob": finetune_cfg.get("mask_channel_prob"),
        "mask_feature_length": finetune_cfg.get("mask_channel_length"),
        "ctc_zero_infinity": criterion_cfg.get("zero_infinity"),
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    # fairseq's CTC blank is index 0 (<s>); transformers uses pad_token_id as blank, so index 0 is
    # named <pad> in the exported vocabulary (as transformers' own wav2vec2 conversion does)
    values.update(vocab_size=num_labels, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    values.update(ctc_loss_reduction="sum")
    return type(backbone)(**values)


def _w2v_args(model_cfg: Mapping) -> tuple[dict, dict]:
    w2v = model_cfg.get("w2v_args")
    require(
        isinstance(w2v, Mapping),
        "this fine-tuned checkpoint does not embed its pretraining config (w2v_args); pass the "
        "pretraining model config with --model_config",
    )
    if isinstance(w2v.get("model"), Mapping):
        return dict(w2v["model"]), dict(w2v.get("task") or {})
    model = dict(w2v)  # legacy flat namespace
    model.setdefault("_name", w2v.get("arch"))
    return model, dict(w2v)


def is_ctc(source: Source) -> bool:
    return source.model_name in ("wav2vec_ctc", "wav2vec2_ctc")


def inner_model_name(source: Source) -> str | None:
    """``_name`` of the pretraining model inside a fine-tuned file."""
    w2v = source.sections[0].get("w2v_args") if source.sections else None
    if not isinstance(w2v, Mapping):
        return None
    inner = w2v.get("model") if isinstance(w2v.get("model"), Mapping) else w2v
    return inner.get("_name") or inner.get("arch")


def _audio_conversion(config, model, export: str, kind: str, processors, notes, normalize, details):
    """The :class:`Conversion` of a data2vec 1.0 audio file, with the rows every audio export shows."""
    details = [
        (
            "hidden size / layers / heads",
            f"{config.hidden_size} / {config.num_hidden_layers} / {config.num_attention_heads}",
        ),
        ("conv feature encoder", f"{len(config.conv_dim)} layers, bias={config.conv_bias}"),
        ("positional conv", f"{config.num_conv_pos_embeddings} layers, kernel {config.conv_pos_kernel_size}"),
        ("input normalisation", normalize),
        *details,
    ]
    return Conversion(
        model=model,
        version="1.0",
        modality="audio",
        kind=kind,
        export=export,
        pipeline_tag="automatic-speech-recognition" if export == "ctc" else "feature-extraction",
        processors=processors,
        notes=notes,
        details=details,
        needs_data2vec_hf=export == "pretraining",
    )


def _convert_ctc_audio(source: Source, options: Options, state: dict) -> Conversion:
    """``wav2vec_ctc`` around ``data2vec_audio``: the CTC model, or its encoder."""
    model_cfg, task_cfg = source.sections
    pre_cfg, pre_task = _w2v_args(model_cfg)
    require(
        pre_cfg.get("_name") in (None, "data2vec_audio"),
        f"fine-tuned model wraps {pre_cfg.get('_name')!r}, not data2vec_audio",
    )
    config = audio_config({**pre_cfg, **options.model_config})
    require(
        "w2v_encoder.proj.weight" in state,
        "CTC checkpoint has no output projection w2v_encoder.proj",
    )
    num_labels = state["w2v_encoder.proj.weight"].shape[0]
    export = "ctc" if options.export == "auto" else options.export
    require(export != "pretraining", "a fine-tuned checkpoint has no regression head or EMA teacher")
    normalize = bool(task_cfg.get("normalize", pre_task.get("normalize", False)))
    sample_rate = task_cfg.get("sample_rate") or pre_task.get("sample_rate") or 16000
    cfg = plain(source.checkpoint.get("cfg"))
    criterion = (cfg.get("criterion") if isinstance(cfg, Mapping) else task_cfg) or {}
    if export == "ctc":
        ctc_config = _ctc_config(config.to_backbone_config(), model_cfg, criterion, num_labels)
        model = build_model(Data2VecAudioForCTC, ctc_config, state, AUDIO_CTC_VIEW, dtype=options.dtype)
        processors, notes = ctc_processor(
            audio_feature_extractor(sample_rate, normalize), options.dict_path, num_labels
        )
    else:
        model = build_model(
            Data2VecAudioModel,
            config.to_backbone_config(),
            state,
            AUDIO_CTC_ENCODER_VIEW,
            dtype=options.dtype,
        )
        processors, notes = [audio_feature_extractor(sample_rate, normalize)], []
    details = [("output labels (CTC)", num_labels)]
    return _audio_conversion(config, model, export, "CTC fine-tuned", processors, notes, normalize, details)


def _convert_pretrained_audio(source: Source, options: Options, state: dict) -> Conversion:
    """A pretrained ``data2vec_audio``: the encoder, or the pretraining model with its teacher."""
    model_cfg, task_cfg = source.sections
    config = audio_config({**model_cfg, **options.model_config})
    export = "encoder" if options.export == "auto" else options.export
    if export == "pretraining":
        model = _audio_pretraining(config, state, options.dtype)
    else:
        model = build_model(
            Data2VecAudioModel,
            config.to_backbone_config(),
            state,
            AUDIO_ENCODER_VIEW,
            dtype=options.dtype,
        )
    normalize = bool(task_cfg.get("normalize", False))
    processors = [audio_feature_extractor(task_cfg.get("sample_rate") or 16000, normalize)]
    details = [("teacher in file", "yes (_ema)" if _has_ema(state) else "no")]
    return _audio_conversion(config, model, export, "pretrained", processors, [], normalize, details)


def convert_audio(source: Source, options: Options) -> Conversion:
    """data2vec 1.0 audio: pretrained (``data2vec_audio``) or CTC fine-tuned (``wav2vec_ctc``)."""
    require(
        source.sections is not None,
        "the file has no fairseq config; pass the model config with --model_config",
    )
    state = fairseq_state_dict(source.checkpoint)
    if is_ctc(source):
        return _convert_ctc_audio(source, options, state)
    return _convert_pretrained_audio(source, options, state)


# ----------------------------------------------------------------------------------------------- text


def text_architecture(model_cfg: Mapping) -> dict:
    """The encoder settings of a ``data2vec_text`` config, from the nested hydra layout
    (``transformer.encoder.*``) or the legacy flat one (``encoder_embed_dim``, …)."""
    transformer = model_cfg.get("transformer")
    if isinstance(transformer, Mapping):
        encoder = transformer.get("encoder") or {}
        get = transformer.get
        return {
            "embed_dim": encoder.get("embed_dim"),
            "ffn_embed_dim": encoder.get("ffn_embed_dim"),
            "layers": encoder.get("layers"),
            "attention_heads": encoder.get("attention_heads"),
            "normalize_before": encoder.get("normalize_before", False),
            "learned_pos": encoder.get("learned_pos", False),
            "layernorm_embedding": get("layernorm_embedding", False),
            "no_scale_embedding": get("no_scale_embedding", False),
            "activation_fn": get("activation_fn", "gelu"),
            "dropout": get("dropout", 0.1),
            "attention_dropout": get("attention_dropout", 0.1),
        }
    get = model_cfg.get
    return {
        "embed_dim": get("encoder_embed_dim"),
        "ffn_embed_dim": get("encoder_ffn_embed_dim"),
        "layers": get("encoder_layers"),
        "attention_heads": get("encoder_attention_heads"),
        "normalize_before": get("encoder_normalize_before", False),
        "learned_pos": get("encoder_learned_pos", False),
        "layernorm_embedding": get("layernorm_embedding", False),
        "no_scale_embedding": get("no_scale_embedding", False),
        "activation_fn": get("activation_fn", "gelu"),
        "dropout": get("dropout", 0.1),
        "attention_dropout": get("attention_dropout", 0.1),
    }


def text_config(
    model_cfg: Mapping,
    task_cfg: Mapping | None,
    state: Mapping[str, torch.Tensor],
    mask_token_id: int | None = None,
) -> Data2VecTextPreTrainingConfig:
    """Translate a fairseq ``data2vec_text`` model (+ ``masked_lm`` task) config."""
    arch = text_architecture(model_cfg)
    missing = [k for k in ("embed_dim", "ffn_embed_dim", "layers", "attention_heads") if arch[k] is None]
    require(not missing, f"data2vec_text config lacks encoder settings: {', '.join(missing)}")
    require(not arch["normalize_before"], "normalize_before=True has no transformers Data2VecText equivalent")
    require(
        arch["layernorm_embedding"], "layernorm_embedding=False has no transformers Data2VecText equivalent"
    )
    require(arch["no_scale_embedding"], "scaled embeddings have no transformers Data2VecText equivalent")
    require(arch["learned_pos"], "sinusoidal positions have no transformers Data2VecText equivalent")
    require(
        "encoder.sentence_encoder.embed_tokens.weight" in state,
        "no token embedding encoder.sentence_encoder.embed_tokens.weight in the state dict",
    )
    vocab_size, _ = state["encoder.sentence_encoder.embed_tokens.weight"].shape
    num_positions, _ = state["encoder.sentence_encoder.embed_positions.weight"].shape
    task_cfg = task_cfg or {}
    leave, random = task_cfg.get("leave_unmasked_prob", 0.1), task_cfg.get("random_token_prob", 0.1)
    loss_scale = model_cfg.get("loss_scale")
    return Data2VecTextPreTrainingConfig(
        vocab_size=vocab_size,
        hidden_size=arch["embed_dim"],
        num_hidden_layers=arch["layers"],
        num_attention_heads=arch["attention_heads"],
        intermediate_size=arch["ffn_embed_dim"],
        hidden_act=arch["activation_fn"],
        hidden_dropout_prob=arch["dropout"],
        attention_probs_dropout_prob=arch["attention_dropout"],
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
        # older files call the embedding LayerNorm emb_layer_norm (fairseq renames it on load)
        (
            r"encoder\.sentence_encoder\.(?:layernorm_embedding|emb_layer_norm)\.(weight|bias)",
            r"data2vec_text.embeddings.LayerNorm.\1",
        ),
        *_text_layer_rules(r"encoder\.sentence_encoder\.", "data2vec_text."),
        # older files call the regression head lm_head (fairseq renames it on load)
        (r"encoder\.(?:regression_head|lm_head)\.(\d+)\.(weight|bias)", r"regression_head.\1.\2"),
        *_text_layer_rules(r"encoder\._ema/", "teacher.model."),
    ],
    drop=[
        r"(encoder\.sentence_encoder\.|encoder\._ema/)version",  # fairseq bookkeeping
        # the teacher's embeddings are shared with the student in data2vec_hf
        r"encoder\._ema/(embed_tokens|embed_positions|layernorm_embedding|emb_layer_norm)\..*",
        # a RoBERTa masked-LM output head (not part of the data2vec objective or encoder)
        r"encoder\.lm_head\.(dense\.(weight|bias)|layer_norm\.(weight|bias)|weight|bias)",
    ],
)
TEXT_ENCODER_VIEW = ExportView(
    TEXT_MAPPING,
    rename=[("data2vec_text.", "")],
    drop_targets=[r"regression_head\..*", r"teacher\..*"],
    drop_sources=[r"encoder\._ema/.*"],
)


def _token_type_rows(hidden_size: int, prefix: str) -> dict[str, torch.Tensor]:
    # fairseq has no token-type embedding; a single zero row makes transformers' sum a no-op
    return {f"{prefix}embeddings.token_type_embeddings.weight": torch.zeros(1, hidden_size)}


def _text_pretraining(config, state: dict, dtype) -> Data2VecTextForPreTraining:
    if not _has_ema(state, "encoder."):
        logger.info("no _ema teacher in the file: the teacher starts as a copy of the student")
        state = _teacher_from_student(state, "encoder.sentence_encoder.", "encoder._ema/")
    extra = _token_type_rows(config.hidden_size, "data2vec_text.")
    return build_model(Data2VecTextForPreTraining, config, state, TEXT_MAPPING, extra, dtype=dtype)


def text_model_from_fairseq(
    checkpoint: Mapping, mask_token_id: int | None = None
) -> Data2VecTextForPreTraining:
    """A :class:`Data2VecTextForPreTraining` holding the fairseq student, head and teacher weights."""
    state = fairseq_state_dict(checkpoint)
    model_cfg, task_cfg = fairseq_sections(checkpoint)
    config = text_config(model_cfg, task_cfg, state, mask_token_id)
    return _text_pretraining(config, state, dtype=torch.float32)


def convert_text(source: Source, options: Options) -> Conversion:
    """data2vec 1.0 text (``data2vec_text``), with a RoBERTa-style tokenizer when the dictionary and
    GPT-2 BPE files are given."""
    require(
        source.sections is not None,
        "the file has no fairseq config; pass the model config with --model_config",
    )
    model_cfg, task_cfg = source.sections
    state = fairseq_state_dict(source.checkpoint)
    config = text_config({**model_cfg, **options.model_config}, task_cfg, state)
    export = "encoder" if options.export == "auto" else options.export
    if export == "pretraining":
        model = _text_pretraining(config, state, options.dtype)
    else:
        model = build_model(
            Data2VecTextModel,
            config.to_backbone_config(),
            state,
            TEXT_ENCODER_VIEW,
            _token_type_rows(config.hidden_size, ""),
            dtype=options.dtype,
            add_pooling_layer=False,
        )
    processors, notes = roberta_tokenizer(
        options.dict_path,
        options.encoder_json,
        options.vocab_bpe,
        config.vocab_size,
        config.max_position_embeddings,
    )
    notes.append(
        "transformers' Data2VecTextModel has a pooler that data2vec does not train; "
        "`AutoModel` initialises it randomly; use `last_hidden_state`."
    )
    return Conversion(
        model=model,
        version="1.0",
        modality="text",
        kind="pretrained",
        export=export,
        pipeline_tag="feature-extraction",
        processors=processors,
        notes=notes,
        details=[
            (
                "hidden size / layers / heads",
                f"{config.hidden_size} / {config.num_hidden_layers} / {config.num_attention_heads}",
            ),
            ("vocabulary (incl. <mask>)", config.vocab_size),
            ("position embeddings", config.max_position_embeddings),
            ("teacher in file", "yes (encoder._ema)" if _has_ema(state, "encoder.") else "no"),
        ],
        needs_data2vec_hf=export == "pretraining",
    )
