"""Our v1 models reproduce what Meta's fairseq computed on the reference checkpoints."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import REFERENCE_DIR
from data2vec_hf.conversion.fairseq_v1 import (
    audio_model_from_fairseq,
    load_fairseq_checkpoint,
    text_model_from_fairseq,
)
from safetensors.torch import load_file

TOLERANCE = 1e-4


def reference(name):
    checkpoint = os.path.join(REFERENCE_DIR, f"{name}.pt")
    if not os.path.exists(checkpoint):
        pytest.fail(
            f"reference data missing: {checkpoint} (tests/fixtures/fairseq is part of the repository)"
        )
    return load_fairseq_checkpoint(checkpoint), load_file(
        os.path.join(REFERENCE_DIR, f"{name}.outputs.safetensors")
    )


def max_diff(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope="module")
def audio():
    checkpoint, outputs = reference("d2v1_audio")
    return audio_model_from_fairseq(checkpoint).eval(), outputs


@pytest.fixture(scope="module")
def text():
    checkpoint, outputs = reference("d2v1_text")
    return text_model_from_fairseq(checkpoint).eval(), outputs


@torch.no_grad()
def test_audio_encoder_outputs(audio):
    model, ref = audio
    assert max_diff(model.data2vec_audio(ref["source"]).last_hidden_state, ref["features.x"]) < TOLERANCE
    padded = model.data2vec_audio(
        ref["padded.source"], attention_mask=(~ref["padded.padding_mask_input"]).long()
    )
    real = ~ref["padded.features.padding_mask_frames"]
    assert real.sum() < real.numel()  # the fixture really is padded
    assert max_diff(padded.last_hidden_state[real], ref["padded.features.x"][real]) < TOLERANCE


@torch.no_grad()
def test_audio_targets_and_loss(audio):
    model, ref = audio
    out = model(ref["source"], mask_time_indices=ref["pretrain.mask"])
    assert out.num_masked.item() == ref["pretrain.sample_size"].item() == 52
    assert max_diff(out.target, ref["pretrain.targets_y_masked"]) < TOLERANCE
    assert max_diff(out.prediction, ref["pretrain.pred_masked"]) < TOLERANCE
    # fairseq reports the summed, 1/sqrt(D)-scaled loss; ours is its mean over masked positions
    assert abs(out.loss_sum.item() - ref["pretrain.loss_regression"].item()) < TOLERANCE * 10
    assert abs(out.loss.item() - ref["pretrain.loss_regression"].item() / 52) < TOLERANCE
    assert abs(out.target_var.item() - ref["pretrain.target_var"].item()) < TOLERANCE
    assert abs(out.pred_var.item() - ref["pretrain.pred_var"].item()) < TOLERANCE


@torch.no_grad()
def test_audio_targets_come_from_the_teacher(audio):
    """Breaking one teacher tensor must change the targets (they are not read from the student)."""
    model, ref = audio
    # (a bias or per-channel scale would be removed by the per-layer instance norm, so perturb fc1)
    weight = model.teacher.model.layers[-1].feed_forward.intermediate_dense.weight
    saved = weight.clone()
    try:
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
        out = model(ref["source"], mask_time_indices=ref["pretrain.mask"])
    finally:
        weight.copy_(saved)
    assert max_diff(out.target, ref["pretrain.targets_y_masked"]) > 1e-2


@torch.no_grad()
def test_text_encoder_outputs(text):
    model, ref = text
    assert max_diff(model.data2vec_text(ref["src_tokens"]).last_hidden_state, ref["features.x"]) < TOLERANCE
    tokens = ref["padded.src_tokens"]
    real = tokens != 1
    assert (~real).any()
    padded = model.data2vec_text(tokens, attention_mask=real.long()).last_hidden_state
    assert max_diff(padded[real], ref["padded.features.x"][real]) < TOLERANCE


@torch.no_grad()
def test_text_targets_and_loss(text):
    model, ref = text
    mask = ref["pretrain.mask"]
    labels = torch.where(mask, ref["pretrain.target_tokens"], torch.full_like(mask, -100, dtype=torch.long))
    out = model(ref["pretrain.src_tokens_masked"], labels=labels)
    assert out.num_masked.item() == ref["pretrain.sample_size"].item()
    assert max_diff(out.target, ref["pretrain.targets_y_masked"]) < TOLERANCE
    assert max_diff(out.prediction, ref["pretrain.pred_masked"]) < TOLERANCE
    assert abs(out.loss_sum.item() - ref["pretrain.loss_main"].item()) < TOLERANCE * 10


# ---------------------------------------------------------------------------------------- data2vec 2.0

V2 = {
    "d2v2_audio": ("input_values", "mask_time_indices"),
    "d2v2_image": ("pixel_values", "bool_masked_pos"),
    "d2v2_text": ("input_ids", "masked_positions"),
}


@pytest.fixture(scope="module", params=sorted(V2))
def v2(request):
    from data2vec_hf.conversion.fairseq_v2 import model_from_fairseq_v2

    checkpoint, outputs = reference(request.param)
    return request.param, model_from_fairseq_v2(checkpoint).eval(), outputs


@torch.no_grad()
def test_v2_encoder_outputs(v2):
    name, model, ref = v2
    input_name, _ = V2[name]
    backbone = getattr(model, model.base_model_prefix)
    out = backbone(**{input_name: ref["source"]}, output_hidden_states=True)
    extra = model.config.num_extra_tokens
    assert max_diff(out.last_hidden_state[:, extra:], ref["features.x"]) < TOLERANCE
    if extra:
        assert max_diff(out.last_hidden_state, ref["features_with_cls.x"]) < TOLERANCE
    assert max_diff(out.hidden_states[0], ref["features.blocks_input"]) < TOLERANCE
    for i in range(model.config.num_hidden_layers):
        assert max_diff(out.hidden_states[i + 1], ref[f"features.block_out.{i}"]) < TOLERANCE


@torch.no_grad()
@pytest.mark.parametrize("v2", ["d2v2_audio", "d2v2_text"], indirect=True)  # images are never padded
def test_v2_padded_encoder_outputs(v2):
    name, model, ref = v2
    assert "padded.source" in ref
    input_name, _ = V2[name]
    backbone = getattr(model, model.base_model_prefix)
    attention = (~ref["padded.padding_mask_input"]).long()
    out = backbone(**{input_name: ref["padded.source"]}, attention_mask=attention).last_hidden_state
    real = ~ref["padded.features.padding_mask_out"]
    assert real.sum() < real.numel()
    if name == "d2v2_text":
        assert max_diff(out[real], ref["padded.features.x"][real]) < TOLERANCE
    else:
        # fairseq's positional convolution reads the padding, so its padded row depends on the amount of
        # padding; ours zeroes padding inside the convolution (padding-invariant). The unpadded row agrees.
        assert max_diff(out[0], ref["padded.features.x"][0]) < TOLERANCE


@torch.no_grad()
def test_v2_targets_predictions_and_loss(v2):
    name, model, ref = v2
    input_name, mask_name = V2[name]
    out = model(ref["source"], **{mask_name: ref["pretrain.mask"]})
    assert out.num_masked.item() == ref["pretrain.sample_size"].item() == ref["pretrain.mask"].sum().item()
    assert max_diff(out.target, ref["pretrain.targets_y_masked"]) < TOLERANCE
    assert max_diff(out.prediction, ref["pretrain.pred_masked"]) < TOLERANCE
    total = sum(ref[k].item() for k in ref if k.startswith("pretrain.loss_sum."))
    assert abs(out.loss_sum.item() - total) < TOLERANCE * 10
    if name == "d2v2_image":
        assert abs(out.cls_loss.item() - ref["pretrain.loss_sum.cls"].item()) < TOLERANCE
