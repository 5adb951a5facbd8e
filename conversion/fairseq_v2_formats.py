"""Where a ``data2vec_multi`` (data2vec 2.0) model sits in a fairseq file: pretrained on its own, or
wrapped by a fine-tuning model (``wav2vec_ctc``, ``mae_image_classification``,
``data2vec_text_classification``, ``audio_classification``), and which modality it encodes.
See ``fairseq_v2.py`` for the formats themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .checkpoint import plain
from .core import Source

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
#: fairseq's modality key (``supported_modality``) → ours
MODALITY_NAMES = {"AUDIO": "audio", "IMAGE": "vision", "TEXT": "text"}
#: the modality of a file without ``supported_modality``, from its task
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
    if isinstance(supported, str) and supported.upper() in MODALITY_NAMES:
        return supported.upper()
    if supported is None:
        return _TASK_MODALITY.get(fmt.task_cfg.get("_name"))
    return None


def modality_of(source: Source) -> str | None:
    """The modality (``audio``/``vision``/``text``) of a data2vec 2.0 file, for messages and detection."""
    fmt = find_format(source.sections)
    key = modality_key(fmt) if fmt else None
    return MODALITY_NAMES.get(key)


def is_data2vec2(source: Source) -> bool:
    """Whether the file holds a ``data2vec_multi`` model, pretrained or inside a fine-tuning wrapper."""
    return find_format(source.sections) is not None
