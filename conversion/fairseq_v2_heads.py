"""The fine-tuned heads that wrap a fairseq data2vec 2.0 (``data2vec_multi``) model, and their homes in
the ``Data2Vec2*`` task classes: ``wav2vec_ctc`` → CTC, ``mae_image_classification`` → image
classification, ``data2vec_text_classification`` → sequence classification, ``audio_classification`` →
(multi-label) audio classification. Each :class:`Head` gives the task class, the source → target key rules
of the head's tensors and the config fields; a layout without a faithful home is refused with a message
naming what is missing. See ``fairseq_v2.py`` for the formats and the converter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from data2vec_hf import (
    Data2Vec2AudioForCTC,
    Data2Vec2AudioForSequenceClassification,
    Data2Vec2TextForSequenceClassification,
    Data2Vec2VisionForImageClassification,
)

from .core import require
from .mapping import ConversionError


@dataclass
class Head:
    """A fine-tuned task head: its model class, source → target rules and config fields."""

    model_cls: type
    export: str
    kind: str
    pipeline_tag: str
    rules: list[tuple[str, str]]
    targets: list[str]  # target prefixes of the head (kept by the task export, dropped by the encoder's)
    config: dict
    details: list[tuple[str, object]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def refuse_wrapper(fmt) -> None:
    if fmt.wrapper == "data2vec_image_classification":
        raise ConversionError(
            "data2vec_image_classification around data2vec_multi is not supported: its forward calls the "
            "model without features_only, which fairseq cannot run for a data2vec_multi model (the decoder "
            "is removed), and its fc_norm uses eps 1e-5 where Data2Vec2VisionForImageClassification uses "
            "the encoder's; data2vec 2.0 image fine-tuning (the released *_imagenet_ft.pt) is "
            "mae_image_classification"
        )


def fine_tuning_masks(cfg: Mapping, zero_fill: bool) -> dict:
    """SpecAugment fields from a fairseq fine-tuning config (``wav2vec_ctc`` and ``audio_classification``
    share the field names and defaults): fairseq passes them to the data2vec_multi audio encoder, which
    masks time steps with N(0, ``mask_noise_std``) noise, or zeros when ``zero_fill``."""
    fields = {
        "apply_spec_augment": bool(cfg.get("apply_mask", False)),
        "mask_time_prob": cfg.get("mask_prob", 0.5),
        "mask_time_length": cfg.get("mask_length", 10),
        "mask_feature_prob": cfg.get("mask_channel_prob", 0.0),
        "mask_feature_length": cfg.get("mask_channel_length", 10),
    }
    return {**fields, "mask_noise_std": 0.0} if zero_fill else fields


def ctc_head(fmt, state: Mapping) -> Head:
    proj = f"{fmt.prefix[: -len('w2v_model.')]}proj"  # w2v_encoder.proj
    require(f"{proj}.weight" in state, f"CTC checkpoint has no output projection {proj}")
    num_labels = state[f"{proj}.weight"].shape[0]
    cfg = fmt.wrapper_cfg
    config = {
        # fairseq's CTC blank is index 0; transformers' CTC uses pad_token_id as blank (see processors.py)
        "vocab_size": num_labels,
        "pad_token_id": 0,
        "ctc_loss_reduction": "sum",
    }
    if cfg.get("final_dropout") is not None:
        config["final_dropout"] = cfg["final_dropout"]
    # wav2vec_ctc sets the encoder's encoder_zero_mask from its own zero_mask (default: noise)
    config.update(fine_tuning_masks(cfg, zero_fill=bool(cfg.get("zero_mask", False))))
    return Head(
        Data2Vec2AudioForCTC,
        "ctc",
        "CTC fine-tuned",
        "automatic-speech-recognition",
        rules=[(rf"{re.escape(proj)}\.(weight|bias)", r"lm_head.\1")],
        targets=["lm_head."],
        config=config,
        details=[("output labels (CTC)", num_labels)],
    )


def image_head(fmt, state: Mapping, model_cfg: Mapping) -> Head:
    cfg = fmt.wrapper_cfg
    mode = cfg.get("prediction_mode") or "MEAN_POOLING"
    require(
        str(mode).upper().rsplit(".", 1)[-1] == "MEAN_POOLING",
        f"mae_image_classification with prediction_mode={mode!r} is not supported: "
        "Data2Vec2VisionForImageClassification mean-pools the patch tokens (MEAN_POOLING)",
    )
    require(
        cfg.get("use_fc_norm", True) and "fc_norm.weight" in state,
        "mae_image_classification without fc_norm (use_fc_norm=False) is not supported: "
        "Data2Vec2VisionForImageClassification always normalises the pooled features",
    )
    eps = model_cfg.get("norm_eps", 1e-6)
    require(
        abs(eps - 1e-6) < 1e-12,
        f"mae_image_classification's fc_norm uses eps 1e-6, the encoder norm_eps={eps}; "
        "Data2Vec2VisionForImageClassification's fc_norm uses the encoder's eps",
    )
    require("head.weight" in state, "the image classifier has no head.weight")
    input_size = fmt.wrapper_task.get("input_size")
    pretrained_size = (model_cfg.get("modalities") or {}).get("image", {}).get("input_size", 224)
    require(
        input_size in (None, pretrained_size),
        f"fine-tuned at {input_size}px on a {pretrained_size}px model (interpolated positions) is not supported",
    )
    num_labels = state["head.weight"].shape[0]
    return Head(
        Data2Vec2VisionForImageClassification,
        "image-classification",
        "image-classification fine-tuned",
        "image-classification",
        rules=[(r"fc_norm\.(weight|bias)", r"fc_norm.\1"), (r"head\.(weight|bias)", r"classifier.\1")],
        targets=["fc_norm.", "classifier."],
        config={"num_labels": num_labels, "classifier_dropout": 0.0},
        details=[("classes", num_labels), ("head", "mean of patch tokens → fc_norm → linear")],
        notes=[
            "class names are not stored in the file: labels are LABEL_0 … LABEL_N, in the order of the "
            "training set's classes (for ImageNet-1k models the standard class order)"
        ],
    )


def text_head(fmt, state: Mapping, hidden_size: int) -> Head:
    cfg = fmt.wrapper_cfg
    heads = sorted({m[1] for k in state if (m := re.match(r"^classification_heads\.([^.]+)\.", k))})
    require(heads, "the text classifier has no classification_heads.* tensors")
    require(
        len(heads) == 1,
        f"several classification heads ({', '.join(heads)}); Data2Vec2TextForSequenceClassification has one",
    )
    name = heads[0]
    head = f"classification_heads.{name}."
    activation = cfg.get("pooler_activation_fn", "tanh")
    require(
        activation == "tanh",
        f"pooler_activation_fn={activation!r} is not supported: "
        "Data2Vec2TextForSequenceClassification's head uses tanh",
    )
    require(
        not cfg.get("spectral_norm_classification_head"),
        "a spectral-normalised classification head is not supported",
    )
    require(
        f"{head}dense.weight" in state and f"{head}out_proj.weight" in state, f"{head}dense/out_proj missing"
    )
    inner = state[f"{head}dense.weight"].shape[0]
    require(
        inner == hidden_size,
        f"classification head inner dim {inner} != hidden size {hidden_size}: "
        "Data2Vec2TextForSequenceClassification's dense layer is hidden → hidden",
    )
    num_labels = state[f"{head}out_proj.weight"].shape[0]
    return Head(
        Data2Vec2TextForSequenceClassification,
        "sequence-classification",
        "sentence-classification fine-tuned",
        "text-classification",
        rules=[(rf"{re.escape(head)}(dense|out_proj)\.(weight|bias)", r"\1.\2")],
        targets=["dense.", "out_proj."],
        config={"num_labels": num_labels, "classifier_dropout": cfg.get("pooler_dropout", 0.0)},
        details=[("labels", num_labels), ("fairseq head", name)],
        notes=[
            "label names are not stored in the file: labels are LABEL_0 … LABEL_N in the fine-tuning "
            "data's label-dictionary order" + (" (one output: a regression head)" if num_labels == 1 else "")
        ],
    )


#: audio_classification prediction modes → (our pooling, whether fairseq's proj is our projector)
_AUDIO_POOLING = {
    "lin_softmax": "linear_softmax",
    "average": "mean",
    "average_before": "mean",  # mean then a linear layer = the linear layer then the mean
    "proj_avg_proj": "mean",
}
_AUDIO_POOLING_MISSING = {
    "max": "max pooling of the frame logits",
    "average_sigmoid": "the mean of frame probabilities (and a loss on probabilities, not logits)",
    "max_sigmoid": "the max of frame probabilities (and a loss on probabilities, not logits)",
    "extremized_odds": "a scaled sum of frame logits",
    "summary_mha": "data2vec_audio's summary attention (data2vec_multi has none)",
    "summary_proj": "data2vec_audio's summary projection (data2vec_multi has none)",
    "cls": "a prediction from the first frame",
}


def _check_audio_head(cfg: Mapping, state: Mapping, mode: str) -> None:
    """Refuse the ``audio_classification`` heads Data2Vec2AudioForSequenceClassification cannot hold."""
    eval_mode = cfg.get("eval_prediction_mode")
    require(
        eval_mode in (None, "", mode),
        f"audio_classification with eval_prediction_mode={eval_mode!r} != prediction_mode={mode!r} is not "
        "supported: Data2Vec2AudioForSequenceClassification pools the same way in training and evaluation",
    )
    require(
        mode in _AUDIO_POOLING,
        f"audio_classification with prediction_mode={mode!r} is not supported: "
        f"Data2Vec2AudioForSequenceClassification has no {_AUDIO_POOLING_MISSING.get(mode, 'such pooling')} "
        "(it reproduces lin_softmax, average, average_before and proj_avg_proj)",
    )
    two_layers = mode == "proj_avg_proj"
    kernel = cfg.get("conv_kernel", -1)
    require(
        two_layers or not (kernel > 1 or (kernel > 0 and cfg.get("two_convs"))),
        f"audio_classification with a convolutional head (conv_kernel={kernel}, "
        f"two_convs={bool(cfg.get('two_convs'))}) is not supported: "
        "Data2Vec2AudioForSequenceClassification's per-frame layers are linear",
    )
    require(
        "proj.weight" in state and state["proj.weight"].dim() == 2,
        "the audio classifier has no linear proj.weight",
    )
    require(not two_layers or "proj2.weight" in state, "prediction_mode=proj_avg_proj without proj2.weight")


def audio_head(fmt, state: Mapping, modality_cfg: Mapping) -> Head:
    """fairseq ``audio_classification`` (multi-label: BCE on the logits) → Data2Vec2AudioForSequenceClassification.

    ``lin_softmax`` (fairseq's default and its AudioSet recipe): ``proj`` per frame, linear-softmax pooling
    → ``classifier``, no projector; ``average``/``average_before``: the same with mean pooling;
    ``proj_avg_proj``: ``proj`` → ``projector``, mean, ``proj2`` → ``classifier``."""
    cfg = fmt.wrapper_cfg
    mode = cfg.get("prediction_mode") or "lin_softmax"
    _check_audio_head(cfg, state, mode)
    two_layers = mode == "proj_avg_proj"
    classifier = "proj2" if two_layers else "proj"
    num_labels = state[f"{classifier}.weight"].shape[0]
    rules = [(rf"{classifier}\.(weight|bias)", r"classifier.\1")]
    if two_layers:
        rules.append((r"proj\.(weight|bias)", r"projector.\1"))
    config = {
        "num_labels": num_labels,
        "problem_type": "multi_label_classification",
        "classifier_pooling": _AUDIO_POOLING[mode],
        "classifier_proj_size": state["proj.weight"].shape[0] if two_layers else 0,
        # audio_classification leaves the encoder's encoder_zero_mask as pretrained (default: zeros)
        **fine_tuning_masks(cfg, zero_fill=bool(modality_cfg.get("encoder_zero_mask", True))),
    }
    pooling = {"linear_softmax": "linear-softmax pooling of per-frame logits", "mean": "mean over frames"}
    notes = [
        "label names are not stored in the file: labels are LABEL_0 … LABEL_N in the order of the "
        "fine-tuning task's label file",
        "multi-label: apply a sigmoid to the logits (the audio-classification pipeline does)",
        "padded frames are left out of the pooling (fairseq pools them as zero features)",
    ]
    if (cfg.get("source_mixup") or -1) >= 0:
        notes.append(
            f"mixup (source_mixup={cfg.get('source_mixup')}) is a training augmentation and is not part of the model"
        )
    return Head(
        Data2Vec2AudioForSequenceClassification,
        "audio-classification",
        "audio-classification fine-tuned",
        "audio-classification",
        rules=rules,
        targets=["classifier.", "projector."] if two_layers else ["classifier."],
        config=config,
        details=[
            ("labels (multi-label)", num_labels),
            ("fairseq prediction_mode", mode),
            ("head", pooling[config["classifier_pooling"]]),
        ],
        notes=notes,
    )
