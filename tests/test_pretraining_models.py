"""data2vec 1.0 pretraining models: loss, gradients, EMA step, save/load round trip."""

from __future__ import annotations

import math

import data2vec_hf
import pytest
import torch
from conftest import MODALITIES
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining


def build(modality, **overrides):
    model_cls, make_config, make_inputs, mask_arg = MODALITIES[modality]
    torch.manual_seed(0)
    model = model_cls(make_config(**overrides))
    return model, make_inputs(torch.Generator().manual_seed(1)), mask_arg


def fixed_mask(model, inputs, modality):
    """A mask sampled once, so two forwards can be compared on the same mask."""
    with torch.no_grad():
        return model.eval()(**inputs).mask


def test_forward_without_mask_samples_one_and_gives_finite_loss(modality):
    model, inputs, _ = build(modality)
    out = model(**inputs)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert out.mask.dtype == torch.bool and out.mask.any()
    assert out.num_masked.item() == out.mask.sum().item() == out.prediction.shape[0]
    assert out.target.shape == out.prediction.shape
    # the returned loss is the mean of the per-position loss the output also reports
    torch.testing.assert_close(out.loss.detach(), out.loss_sum / out.num_masked)
    assert not out.target_var.requires_grad and not out.pred_var.requires_grad


def test_backward_reaches_student_not_teacher(modality):
    model, inputs, _ = build(modality)
    model.train()
    model(**inputs).loss.backward()
    student = [(n, p) for n, p in model.named_parameters() if not n.startswith("teacher.")]
    assert all(not p.requires_grad for p in model.teacher.parameters())
    assert all(p.grad is None for p in model.teacher.parameters())
    with_grad = [n for n, p in student if p.grad is not None and p.grad.abs().sum() > 0]
    # every student tensor that takes part in the forward gets a gradient (head and encoder layers)
    assert any(n.startswith(("final_proj", "regression_head")) for n in with_grad)
    num_layers = model.config.num_hidden_layers
    assert sum(".layer" in n and n.endswith("weight") for n in with_grad) >= num_layers


def test_ema_step_is_exact_and_leaves_shared_tensors_alone(modality):
    model, _, _ = build(modality)
    source = model.teacher_source()
    # move the student away from the teacher so the update is visible
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    teacher_before = {n: p.clone() for n, p in model.teacher.model.named_parameters()}
    student = dict(source.named_parameters())
    student_before = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}

    num_updates = model.config.ema_anneal_end_step // 3
    decay = model.ema_step(num_updates)
    cfg = model.config
    expected_decay = (
        cfg.ema_decay + (cfg.ema_end_decay - cfg.ema_decay) * num_updates / cfg.ema_anneal_end_step
    )
    assert math.isclose(decay, expected_decay, rel_tol=1e-12)

    for name, after in model.teacher.model.named_parameters():
        before = teacher_before[name]
        expected = before + (1 - decay) * (student[name] - before)
        torch.testing.assert_close(after, expected, rtol=0, atol=1e-7)
        assert not torch.equal(after, before), name
    # shared parts do not exist in the teacher, and the student is not touched by the EMA step
    for shared in model.teacher_shared:
        assert not any(n == shared or n.startswith(shared + ".") for n in teacher_before)
        assert any(n == shared or n.startswith(shared + ".") for n in student)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, student_before[name]), name


def test_teacher_starts_as_copy_of_student(modality):
    model, _, _ = build(modality)
    student = dict(model.teacher_source().named_parameters())
    for name, p in model.teacher.model.named_parameters():
        assert torch.equal(p, student[name]), name


def test_ema_decay_schedule():
    assert data2vec_hf.annealed_ema_decay(0, 0.999, 0.9999, 100) == pytest.approx(0.999)
    assert data2vec_hf.annealed_ema_decay(50, 0.999, 0.9999, 100) == pytest.approx(0.99945)
    assert data2vec_hf.annealed_ema_decay(100, 0.999, 0.9999, 100) == pytest.approx(0.9999)
    assert data2vec_hf.annealed_ema_decay(10**6, 0.999, 0.9999, 100) == pytest.approx(0.9999)


def test_save_and_auto_load_reproduce_loss_with_teacher(modality, tmp_path):
    model, inputs, mask_arg = build(modality)
    # make the teacher differ from the student, so that loading it is actually checked
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    mask = fixed_mask(model, inputs, modality)
    with torch.no_grad():
        expected = model(**inputs, **{mask_arg: mask})
    model.save_pretrained(tmp_path)

    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is type(model.config)
    loaded = AutoModelForPreTraining.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    with torch.no_grad():
        got = loaded(**inputs, **{mask_arg: mask})
    torch.testing.assert_close(got.loss, expected.loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.target, expected.target, rtol=0, atol=1e-6)
    for (name, a), (_, b) in zip(
        model.teacher.named_parameters(), loaded.teacher.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name

    # AutoModel on a pretraining checkpoint gives the student encoder
    encoder = AutoModel.from_pretrained(tmp_path).eval()
    backbone = getattr(model, model.base_model_prefix)
    first = next(iter(inputs.values()))
    with torch.no_grad():
        torch.testing.assert_close(
            # the plain transformers encoder vs our contiguous-layout conv layers (layout.py): rounding only
            encoder(first).last_hidden_state,
            backbone(first).last_hidden_state,
            rtol=0,
            atol=1e-5,
        )


def test_saved_checkpoint_has_no_auto_map(modality, tmp_path):
    model, _, _ = build(modality)
    model.save_pretrained(tmp_path)
    assert "auto_map" not in (tmp_path / "config.json").read_text()


def test_backbone_config_is_native(modality):
    model, _, _ = build(modality)
    backbone = getattr(model, model.base_model_prefix)
    assert type(backbone.config) is model.config.backbone_config_class
    for name in model.config.pretraining_only_fields + ("average_top_k_layers", "ema_decay"):
        assert not hasattr(backbone.config, name), name


def test_mask_shape_error_is_clear():
    model, inputs, _ = build("audio")
    with pytest.raises(ValueError, match="mask_time_indices has shape"):
        model(**inputs, mask_time_indices=torch.zeros(2, 3, dtype=torch.bool))


def test_text_labels_follow_data_collator_convention():
    """labels != -100 mark the regressed positions; the teacher sees the original tokens."""
    model, inputs, _ = build("text")
    ids = inputs["input_ids"]
    positions = torch.zeros_like(ids, dtype=torch.bool)
    positions[:, [2, 5]] = True
    labels = torch.where(positions, ids, torch.full_like(ids, -100))
    student_ids = ids.masked_fill(positions, model.config.mask_token_id)
    with torch.no_grad():
        via_labels = model.eval()(student_ids, attention_mask=inputs["attention_mask"], labels=labels)
        via_positions = model(ids, attention_mask=inputs["attention_mask"], masked_positions=positions)
    assert via_labels.num_masked.item() == 4
    torch.testing.assert_close(via_labels.loss, via_positions.loss)
    torch.testing.assert_close(via_labels.target, via_positions.target)
