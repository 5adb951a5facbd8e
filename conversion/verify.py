"""``--verify``: the converted model against recorded reference outputs and, when it is importable,
against fairseq itself.

Reference files use the format of ``tests/fixtures/fairseq/*.outputs.safetensors in this repository``: inputs
(``source``, ``padded.source`` + ``padded.padding_mask_input``, ``src_tokens``, ``padded.src_tokens``,
``pretrain.mask``, …) next to what fairseq computed from them (``features.x``,
``features.layer_results.{i}.x``, ``features.inner_states.{i}``, ``pretrain.targets_y_masked``, …).
Every output key this module can reproduce for the exported model is compared (fp32 max abs diff);
the others are listed as skipped. For 1.0 vision (no fairseq model) ``source``/``pixel_values`` →
``features.x`` (last hidden state) and ``logits`` are understood.

data2vec 2.0 (``data2vec_multi`` references): ``features.x`` (extra tokens removed),
``features_with_cls.x``, ``features.blocks_input``, ``features.block_out.{i}``,
``features.layer_results.{i}`` (FFN outputs), ``features.local_features``, the padded case
(``padded.source`` + ``padded.padding_mask_input``) and, for a pretraining export, the targets and
predictions under the fixed mask ``pretrain.mask``. Audio padding: our positional convolution ignores
padding while fairseq's reads it, so only the rows without padding are compared for audio.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from .mapping import ConversionError

try:  # the FFN-output hooks of the pretraining models
    from data2vec_hf.targets import record_outputs
except ImportError:  # pragma: no cover - data2vec_hf is always importable from inside the package
    record_outputs = None

logger = logging.getLogger(__name__)

TOLERANCE = 1e-4


@dataclass
class Check:
    name: str
    max_abs_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def _diff(ours: torch.Tensor, theirs: torch.Tensor, where: torch.Tensor | None = None) -> float:
    if tuple(ours.shape) != tuple(theirs.shape):
        return float("inf")
    if where is not None:
        ours, theirs = ours[where], theirs[where]
    return (ours.float() - theirs.float()).abs().max().item() if ours.numel() else 0.0


def _backbone(model, prefix: str):
    return getattr(model, prefix, model)


def _audio_outputs(model, ref: dict) -> dict:
    backbone = _backbone(model, "data2vec_audio")
    pairs = {}
    if "source" in ref:
        source = ref["source"].float()
        with record_outputs([layer.feed_forward for layer in backbone.encoder.layers]) as ffn:
            out = backbone(source, output_hidden_states=True)
        pairs["features.x"] = out.last_hidden_state
        for i, hidden in enumerate(out.hidden_states[1:]):
            pairs[f"features.layer_results.{i}.x"] = hidden
            pairs[f"features.layer_results.{i}.ffn"] = ffn[i]
        conv = backbone.feature_extractor(source).transpose(1, 2)
        pairs["features.conv_features"] = conv
        pairs["features.post_extract_proj"] = backbone.feature_projection(conv)[0]
        if hasattr(model, "lm_head"):
            pairs["logits"] = model(source).logits
        if "pretrain.mask" in ref and hasattr(model, "teacher"):
            pre = model(source, mask_time_indices=ref["pretrain.mask"])
            pairs["pretrain.targets_y_masked"] = pre.target
            pairs["pretrain.pred_masked"] = pre.prediction
    if "padded.source" in ref and "padded.padding_mask_input" in ref:
        attention_mask = (~ref["padded.padding_mask_input"].bool()).long()
        out = backbone(ref["padded.source"].float(), attention_mask=attention_mask, output_hidden_states=True)
        frames = ref.get("padded.features.padding_mask_frames")
        if frames is None:
            frames = ~backbone._get_feature_vector_attention_mask(
                out.last_hidden_state.shape[1], attention_mask
            ).bool()
        real = ~frames.bool()
        pairs["padded.features.x"] = (out.last_hidden_state, real)
        for i, hidden in enumerate(out.hidden_states[1:]):
            pairs[f"padded.features.layer_results.{i}.x"] = (hidden, real)
    return pairs


def _text_outputs(model, ref: dict) -> dict:
    backbone = _backbone(model, "data2vec_text")
    pad = backbone.config.pad_token_id
    pairs = {}
    if "src_tokens" in ref:
        tokens = ref["src_tokens"].long()
        with record_outputs([layer.output.dense for layer in backbone.encoder.layer]) as fc2:
            out = backbone(tokens, attention_mask=(tokens != pad).long(), output_hidden_states=True)
        pairs["features.x"] = out.last_hidden_state
        pairs["features.encoder_embedding"] = backbone.embeddings.word_embeddings(tokens)
        for i, hidden in enumerate(out.hidden_states):
            pairs[f"features.inner_states.{i}"] = hidden
        for i, output in enumerate(fc2):
            pairs[f"features.fc_results.{i}"] = output
    if "padded.src_tokens" in ref:
        tokens = ref["padded.src_tokens"].long()
        real = tokens != pad
        out = backbone(tokens, attention_mask=real.long(), output_hidden_states=True)
        pairs["padded.features.x"] = (out.last_hidden_state, real)
        for i, hidden in enumerate(out.hidden_states):
            pairs[f"padded.features.inner_states.{i}"] = (hidden, real)
    if hasattr(model, "teacher") and {
        "pretrain.mask",
        "pretrain.target_tokens",
        "pretrain.src_tokens_masked",
    } <= set(ref):
        mask = ref["pretrain.mask"].bool()
        labels = torch.where(
            mask, ref["pretrain.target_tokens"].long(), torch.full_like(mask, -100, dtype=torch.long)
        )
        pre = model(ref["pretrain.src_tokens_masked"].long(), labels=labels)
        pairs["pretrain.targets_y_masked"] = pre.target
        pairs["pretrain.pred_masked"] = pre.prediction
    return pairs


def _vision_outputs(model, ref: dict) -> dict:
    pixels = ref.get("pixel_values", ref.get("source"))
    if pixels is None:
        return {}
    backbone = _backbone(model, "data2vec_vision")
    pairs = {"features.x": backbone(pixels.float()).last_hidden_state}
    if hasattr(model, "classifier"):
        pairs["logits"] = model(pixels.float()).logits
    return pairs


# ------------------------------------------------------------------------------------------- 2.0

#: modality → (input argument of the backbone, mask argument of the pretraining model)
V2_ARGUMENTS = {
    "audio": ("input_values", "mask_time_indices"),
    "vision": ("pixel_values", "bool_masked_pos"),
    "text": ("input_ids", "masked_positions"),
}


def _v2_input(modality: str, tensor: torch.Tensor) -> torch.Tensor:
    return tensor.long() if modality == "text" else tensor.float()


def _v2_outputs(model, ref: dict, modality: str) -> dict:
    backbone = _backbone(model, model.base_model_prefix)
    input_name, mask_name = V2_ARGUMENTS[modality]
    extra = backbone.config.num_extra_tokens
    pairs = {}
    if "source" in ref:
        source = _v2_input(modality, ref["source"])
        with record_outputs([block.mlp for block in backbone.blocks]) as ffn:
            out = backbone(**{input_name: source}, output_hidden_states=True)
        pairs["features.x"] = out.last_hidden_state[:, extra:]
        if extra:
            pairs["features_with_cls.x"] = out.last_hidden_state
        pairs["features.blocks_input"] = out.hidden_states[0]
        for i, hidden in enumerate(out.hidden_states[1:]):
            pairs[f"features.block_out.{i}"] = hidden
            pairs[f"features.layer_results.{i}"] = ffn[i]
        pairs["features.local_features"] = backbone.local_features(**{input_name: source})[0]
        if "logits" in ref and any(hasattr(model, h) for h in ("lm_head", "classifier", "out_proj")):
            pairs["logits"] = model(source).logits
        mask = ref.get("pretrain.mask")
        if hasattr(model, "teacher") and mask is not None:
            if mask.shape[0] == source.shape[0] * model.config.clone_batch:
                pre = model(source, **{mask_name: mask.bool()})
                pairs["pretrain.targets_y_masked"] = pre.target
                pairs["pretrain.pred_masked"] = pre.prediction
            else:
                logger.info(
                    "pretrain.mask has %d rows, the model needs batch x clone_batch = %d: targets not compared",
                    mask.shape[0],
                    source.shape[0] * model.config.clone_batch,
                )
    if "padded.source" in ref and "padded.padding_mask_input" in ref:
        padding = ref["padded.padding_mask_input"].bool()
        with record_outputs([block.mlp for block in backbone.blocks]) as ffn:
            out = backbone(
                **{input_name: _v2_input(modality, ref["padded.source"])},
                attention_mask=(~padding).long(),
                output_hidden_states=True,
            )
        frames = out.last_hidden_state.shape[1] - extra
        padded_out = ref.get("padded.features.padding_mask_out")
        real = ~padded_out.bool() if padded_out is not None and padded_out.shape[1] == frames else None
        if modality == "audio":
            # fairseq's positional convolution reads the padding: only rows without any are comparable
            unpadded = ~padding.any(-1, keepdim=True)
            real = unpadded.expand(-1, frames) if real is None else real & unpadded
        elif real is None:
            real = ~padding if padding.shape[1] == frames else None
        if real is not None and real.any():
            full = torch.nn.functional.pad(real, (extra, 0), value=True) if extra else real
            pairs["padded.features.x"] = (out.last_hidden_state[:, extra:], real)
            pairs["padded.features.blocks_input"] = (out.hidden_states[0], full)
            local, _ = backbone.local_features(
                **{input_name: _v2_input(modality, ref["padded.source"])}, attention_mask=(~padding).long()
            )
            if local.shape[1] == frames:
                pairs["padded.features.local_features"] = (local, real)
            for i, hidden in enumerate(out.hidden_states[1:]):
                pairs[f"padded.features.block_out.{i}"] = (hidden, full)
                pairs[f"padded.features.layer_results.{i}"] = (ffn[i], full)
    return pairs


_INPUTS = {
    "source",
    "pixel_values",
    "src_tokens",
    "padded.source",
    "padded.padding_mask_input",
    "padded.features.padding_mask_frames",
    "padded.src_tokens",
    "pretrain.mask",
    "pretrain.src_tokens_masked",
    "pretrain.target_tokens",
}
_OUTPUTS = {"audio": _audio_outputs, "text": _text_outputs, "vision": _vision_outputs}


@torch.no_grad()
def compare_with_reference(
    model, modality: str, reference: str | Path, tolerance: float = TOLERANCE, version: str = "1.0"
) -> list[Check]:
    """Compare every output of ``reference`` the model can reproduce; raises when none can be."""
    try:
        ref = load_file(str(reference))
    except Exception as error:
        raise ConversionError(f"cannot read reference outputs {reference}: {error}") from None
    model.eval()
    try:
        pairs = _v2_outputs(model, ref, modality) if version == "2.0" else _OUTPUTS[modality](model, ref)
    except (RuntimeError, ValueError, IndexError, TypeError) as error:  # inputs of another model
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConversionError(
            f"the inputs of {reference} do not fit this data2vec {version} {modality} model ({reason}); "
            "is it the reference of another model?"
        ) from None
    checks = []
    for name, ours in pairs.items():
        if name not in ref:
            continue
        ours, where = ours if isinstance(ours, tuple) else (ours, None)
        checks.append(Check(name, _diff(ours, ref[name], where), tolerance))
    if not checks:
        raise ConversionError(
            f"{reference} has no outputs this {modality} model can reproduce (keys: {', '.join(sorted(ref)[:12])})"
        )
    skipped = sorted(
        k
        for k in ref
        if k not in pairs and "." in k and not k.startswith(("padded.padding", "pretrain.mask"))
    )
    if skipped:
        logger.info("reference keys not compared: %s", ", ".join(skipped))
    return checks


# ---------------------------------------------------------------------------------------------- fairseq


def _fairseq_inputs(conversion, reference: str | Path | None) -> dict:
    ref = load_file(str(reference)) if reference else {}
    generator = torch.Generator().manual_seed(0)
    if conversion.modality == "audio":
        return {"source": ref.get("source", torch.randn(2, 16000, generator=generator)).float()}
    if conversion.modality == "vision":
        config = conversion.model.config
        shape = (2, config.num_channels, config.image_size, config.image_size)
        return {"source": ref.get("source", torch.randn(*shape, generator=generator)).float()}
    if conversion.version == "2.0":
        config = conversion.model.config
        tokens = ref.get("source")
    else:
        config = _backbone(conversion.model, "data2vec_text").config
        tokens = ref.get("src_tokens")
    if tokens is None:
        tokens = torch.randint(4, config.vocab_size - 1, (2, 16), generator=generator)
        tokens[:, 0], tokens[:, -1] = config.bos_token_id, config.eos_token_id
    return {"src_tokens": tokens.long()}


def _fairseq_v2_outputs(fairseq_model, conversion, inputs: dict) -> dict:
    """``data2vec_multi`` and its fine-tuning wrappers (see ``fairseq_v2.py``)."""
    source = inputs.get("source", inputs.get("src_tokens"))
    results = {}
    if hasattr(fairseq_model, "w2v_encoder"):  # wav2vec_ctc
        out = fairseq_model(source=source, padding_mask=None)
        results["logits"] = out["encoder_out"].transpose(0, 1)
        inner = fairseq_model.w2v_encoder.w2v_model
    elif hasattr(fairseq_model, "classification_heads"):  # data2vec_text_classification
        name = next(iter(fairseq_model.classification_heads))
        padding = source.eq(conversion.model.config.pad_token_id)
        results["logits"] = fairseq_model(source, None, padding, classification_head_name=name)[0]
        inner = fairseq_model.model
    elif hasattr(fairseq_model, "head"):  # mae_image_classification
        results["logits"] = fairseq_model(source)
        inner = fairseq_model.model
    elif hasattr(fairseq_model, "d2v_model"):  # audio_classification: returns probabilities without labels
        results["probabilities"] = fairseq_model(source, None)
        inner = fairseq_model.d2v_model
    else:
        inner = fairseq_model
    padding = source.eq(conversion.model.config.pad_token_id) if conversion.modality == "text" else None
    results["features.x"] = inner.extract_features(source, padding_mask=padding, mask=False)["x"]
    return results


def _fairseq_outputs(fairseq_model, conversion, inputs: dict) -> dict:
    if conversion.version == "2.0":
        return _fairseq_v2_outputs(fairseq_model, conversion, inputs)
    if conversion.modality == "audio":
        source = inputs["source"]
        if hasattr(fairseq_model, "w2v_encoder"):  # wav2vec_ctc
            out = fairseq_model(source=source, padding_mask=None)
            results = {"logits": out["encoder_out"].transpose(0, 1)}
            inner = fairseq_model.w2v_encoder.w2v_model
        else:
            results, inner = {}, fairseq_model
        results["features.x"] = inner.extract_features(source, padding_mask=None, mask=False)["x"]
        return results
    features, _ = fairseq_model(inputs["src_tokens"], features_only=True)
    return {"features.x": features}


def _our_outputs(conversion, inputs: dict) -> dict:
    model = conversion.model
    if conversion.version == "2.0":
        source = inputs.get("source", inputs.get("src_tokens"))
        backbone = _backbone(model, model.base_model_prefix)
        input_name, _ = V2_ARGUMENTS[conversion.modality]
        hidden = backbone(**{input_name: source}).last_hidden_state
        results = {"features.x": hidden[:, backbone.config.num_extra_tokens :]}
        if any(hasattr(model, head) for head in ("lm_head", "classifier", "out_proj")):
            results["logits"] = model(source).logits
            if model.config.problem_type == "multi_label_classification":
                results["probabilities"] = results["logits"].sigmoid()
        return results
    if conversion.modality == "audio":
        results = {"features.x": _backbone(model, "data2vec_audio")(inputs["source"]).last_hidden_state}
        if hasattr(model, "lm_head"):
            results["logits"] = model(inputs["source"]).logits
        return results
    tokens = inputs["src_tokens"]
    return {"features.x": _backbone(model, "data2vec_text")(tokens).last_hidden_state}


@torch.no_grad()
def compare_with_fairseq(
    checkpoint: str | Path, conversion, reference: str | Path | None = None, tolerance: float = TOLERANCE
) -> list[Check] | None:
    """Run fairseq's own model on the same inputs; None when fairseq is not importable (or the file
    is not a fairseq checkpoint). The file has already passed the weights-only allowlist, and fairseq
    reads it under the same allowlist."""
    if conversion.modality == "vision" and conversion.version == "1.0":
        return None  # BEiT-codebase files: there is no fairseq model to run
    try:
        checkpoint_utils = importlib.import_module("fairseq.checkpoint_utils")
    except ImportError:
        logger.info("fairseq is not importable: comparison with fairseq skipped")
        return None
    from .checkpoint import fairseq_allowlist

    try:
        with torch.serialization.safe_globals(fairseq_allowlist(checkpoint)):
            models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)])
    except Exception as error:  # fairseq fails in many ways on files it cannot rebuild (missing data dirs, …)
        raise ConversionError(f"fairseq is importable but could not load {checkpoint}: {error}") from None
    fairseq_model = models[0].eval()
    inputs = _fairseq_inputs(conversion, reference)
    theirs = _fairseq_outputs(fairseq_model, conversion, inputs)
    conversion.model.eval()
    ours = _our_outputs(conversion, inputs)
    return [
        Check(f"fairseq {name}", _diff(ours[name], theirs[name]), tolerance)
        for name in ours
        if name in theirs
    ]


def require_agreement(checks: list[Check], against: str) -> None:
    for check in checks:
        logger.info(
            "verify %s %-40s max abs diff %.3g (tolerance %.0e) %s",
            against,
            check.name,
            check.max_abs_diff,
            check.tolerance,
            "ok" if check.ok else "MISMATCH",
        )
    failed = [c for c in checks if not c.ok]
    if failed:
        listing = ", ".join(f"{c.name} ({c.max_abs_diff:.3g})" for c in failed)
        raise ConversionError(
            f"converted model disagrees with {against} beyond {failed[0].tolerance:g}: {listing}; nothing written"
        )
