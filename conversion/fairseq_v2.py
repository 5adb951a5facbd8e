"""fairseq data2vec 2.0 (``data2vec_multi``) → data2vec_hf ``Data2Vec2*``: the converter.

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

The pieces: ``fairseq_v2_formats.py`` (where the model sits in a file, its modality),
``fairseq_v2_config.py`` (model config → ``Data2Vec2*Config``), ``fairseq_v2_weights.py`` (key mappings,
export views, tensor fixes), ``fairseq_v2_heads.py`` (the fine-tuned heads); this module puts them together.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import torch

from .checkpoint import plain
from .core import Conversion, Options, Source, build_model, require
from .fairseq_v1 import fairseq_state_dict
from .fairseq_v2_config import v2_config
from .fairseq_v2_formats import (
    AUDIO_CLASSIFIER,
    CTC_WRAPPERS,
    IMAGE_CLASSIFIER,
    MODALITY_NAMES,
    MODEL_NAME,
    REFUSED_WRAPPERS,
    TEXT_CLASSIFIER,
    Format,
    find_format,
    modality_key,
)
from .fairseq_v2_heads import Head, audio_head, ctc_head, image_head, refuse_wrapper, text_head
from .fairseq_v2_weights import (
    MODALITIES,
    export_view,
    has_ema,
    prepare_state,
    pretraining_mapping,
    teacher_from_student,
)
from .mapping import KeyMapping
from .processors import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    audio_feature_extractor,
    ctc_processor,
    mae_image_processor,
    roberta_tokenizer,
)

logger = logging.getLogger(__name__)

_FEATURE_PIPELINE = {
    "AUDIO": "feature-extraction",
    "IMAGE": "image-feature-extraction",
    "TEXT": "feature-extraction",
}


def _pretraining_model(modality: str, config, state: dict, dtype):
    if not has_ema(state):
        logger.info("no _ema teacher in the file: the teacher starts as a copy of the student")
        state = teacher_from_student(state, config)
    model_cls = MODALITIES[modality][0]
    return build_model(model_cls, config, state, pretraining_mapping(modality), dtype=dtype)


def model_from_fairseq_v2(checkpoint: Mapping):
    """A ``Data2Vec2*ForPreTraining`` holding the fairseq student, decoder and EMA teacher weights."""
    state = fairseq_state_dict(checkpoint)
    model_cfg = plain(checkpoint["cfg"])["model"]
    config = v2_config(model_cfg, state)
    modality = model_cfg["supported_modality"].upper()
    prepare_state(state, config)
    model = _pretraining_model(modality, config, state, dtype=torch.float32)
    model.train(False)
    return model


# ----------------------------------------------------------------------------------------- converter


def _source_format(source: Source) -> Format:
    """The file's :class:`Format`; a ``data2vec_multi`` config without one when forced with --version 2."""
    require(
        source.sections is not None,
        "the file has no fairseq config; pass the model config with --model_config",
    )
    fmt = find_format(source.sections)
    if fmt is not None:
        return fmt
    name = source.sections[0].get("_name")
    require(
        name in (None, MODEL_NAME),
        f"fairseq model {name!r} is not a data2vec 2.0 model (data2vec_multi, or wav2vec_ctc / "
        f"{IMAGE_CLASSIFIER} / {TEXT_CLASSIFIER} / {AUDIO_CLASSIFIER} around one)",
    )
    return Format(None, dict(source.sections[0]), dict(source.sections[1]))


def _model_config(fmt: Format, options: Options, state: Mapping) -> tuple[dict, str]:
    """The model config (with ``--model_config`` applied and ``supported_modality`` set) and its modality
    key; a model with several modality encoders is refused."""
    model_cfg = {**fmt.model_cfg, **options.model_config}
    modality = modality_key(Format(fmt.wrapper, model_cfg, fmt.task_cfg))
    require(
        modality is not None,
        f"unsupported or missing supported_modality {model_cfg.get('supported_modality')!r} "
        "(a multi-modality checkpoint?)",
    )
    if model_cfg.get("supported_modality") is None:  # detected from the task: one modality encoder only
        encoder = re.compile(rf"^{re.escape(fmt.prefix)}modality_encoders\.(\w+)\.")
        found = sorted({m[1] for k in state if (m := encoder.match(k))})
        require(
            found in ([], [modality]),
            f"a multi-modality data2vec_multi model (modality encoders {', '.join(found)}) is not supported",
        )
    model_cfg["supported_modality"] = modality
    return model_cfg, modality


def _fine_tuned_head(fmt: Format, state: Mapping, model_cfg: dict, modality: str) -> Head | None:
    """The head of the fine-tuning wrapper around the model; None for a pretrained file."""
    if fmt.wrapper in REFUSED_WRAPPERS:
        refuse_wrapper(fmt)
    elif fmt.wrapper in CTC_WRAPPERS:
        require(modality == "AUDIO", f"a CTC model around a {modality} data2vec_multi model")
        return ctc_head(fmt, state)
    elif fmt.wrapper == IMAGE_CLASSIFIER:
        require(modality == "IMAGE", f"an image classifier around a {modality} data2vec_multi model")
        return image_head(fmt, state, model_cfg)
    elif fmt.wrapper == TEXT_CLASSIFIER:
        require(modality == "TEXT", f"a text classifier around a {modality} data2vec_multi model")
        return text_head(fmt, state, model_cfg["embed_dim"])
    elif fmt.wrapper == AUDIO_CLASSIFIER:
        require(modality == "AUDIO", f"an audio classifier around a {modality} data2vec_multi model")
        return audio_head(fmt, state, (model_cfg.get("modalities") or {}).get("audio") or {})
    return None


def _chosen_export(
    options: Options, fmt: Format, head: Head | None, model_cfg: dict, modality: str
) -> tuple[str, Head | None]:
    """The export (``--export``, or the head's own for ``auto``) and the task head it keeps, if any."""
    export = (head.export if head is not None else "encoder") if options.export == "auto" else options.export
    require(
        export != "pretraining" or fmt.wrapper is None,
        "a fine-tuned checkpoint has no decoder or EMA teacher (fairseq removes them for fine-tuning); "
        "use --export encoder",
    )
    task_head = head if head is not None and export == head.export else None
    if task_head is not None and modality != "IMAGE":
        # fairseq's CTC and text heads read the features with the extra tokens removed; ours read
        # the full sequence
        extra = model_cfg["modalities"][modality.lower()].get("num_extra_tokens", 0)
        require(
            extra == 0, f"extra tokens (num_extra_tokens={extra}) in a {head.kind} model are not supported"
        )
    return export, task_head


def _exported_model(
    modality: str, export: str, fmt: Format, head: Head | None, task_head: Head | None, config, state, dtype
):
    """The pretraining model, the task model of ``task_head`` or the bare encoder, filled from ``state``."""
    if export == "pretraining":
        return _pretraining_model(modality, config, state, dtype)
    _, encoder_cls, backbone, _ = MODALITIES[modality]
    mapping = pretraining_mapping(modality, fmt.prefix)
    if head is not None:
        mapping = KeyMapping(rules=[*mapping.rules, *head.rules], drop=mapping.drop)
    if task_head is not None:
        view = export_view(mapping, backbone, fmt, head, keep_head=True)
        return build_model(head.model_cls, config, state, view, dtype=dtype)
    require(export == "encoder", f"--export {export} is not available for this data2vec 2.0 file")
    view = export_view(mapping, backbone, fmt, head, keep_head=False)
    return build_model(encoder_cls, config, state, view, dtype=dtype)


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
        rows.append(("teacher in file", "yes (_ema)" if has_ema(state) else "no"))
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
    fmt = _source_format(source)
    state = fairseq_state_dict(source.checkpoint)
    model_cfg, modality = _model_config(fmt, options, state)
    head = _fine_tuned_head(fmt, state, model_cfg, modality)
    export, task_head = _chosen_export(options, fmt, head, model_cfg, modality)

    config = v2_config(model_cfg, state, fmt.prefix, **(task_head.config if task_head else {}))
    prepare_state(state, config, fmt.prefix)
    model = _exported_model(modality, export, fmt, head, task_head, config, state, options.dtype)

    notes = _notes(modality, export) + (task_head.notes if task_head else [])
    processors, processor_notes, processor_details = _processors(modality, fmt, config, options, task_head)
    details = _details(modality, config, state, fmt) + processor_details + (head.details if head else [])
    return Conversion(
        model=model,
        version="2.0",
        modality=MODALITY_NAMES[modality],
        kind=head.kind if head is not None else "pretrained",
        export=export,
        pipeline_tag=task_head.pipeline_tag if task_head else _FEATURE_PIPELINE[modality],
        processors=processors,
        notes=notes + processor_notes,
        details=details,
        needs_data2vec_hf=True,
    )
