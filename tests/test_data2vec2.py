"""data2vec 2.0 models: masking invariants, multi-mask, decoder order, learning, save/load, padding."""

from __future__ import annotations

import data2vec_hf
import pytest
import torch
from data2vec_hf.data2vec2 import MaskInfo, gather_positions
from data2vec_hf.masking import block_mask, random_token_mask
from transformers import (
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForCTC,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
)

SHARED = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=64,
    average_top_k_layers=2,
    decoder_dim=16,
    decoder_groups=4,
    decoder_layers=2,
    clone_batch=3,
)


def audio_config(**overrides):
    values = dict(
        SHARED,
        conv_dim=(32, 32, 32),
        conv_kernel=(10, 3, 3),
        conv_stride=(5, 2, 2),
        conv_pos_kernel_size=7,
        num_conv_pos_embeddings=2,
        num_conv_pos_embedding_groups=4,
    )
    return data2vec_hf.Data2Vec2AudioConfig(**{**values, **overrides})


def vision_config(**overrides):
    values = dict(SHARED, image_size=32, patch_size=8, prenet_depth=1)
    return data2vec_hf.Data2Vec2VisionConfig(**{**values, **overrides})


def text_config(**overrides):
    values = dict(SHARED, vocab_size=40, max_position_embeddings=66, decoder_groups=1)
    return data2vec_hf.Data2Vec2TextConfig(**{**values, **overrides})


def inputs(modality, generator):
    if modality == "audio":
        return {"input_values": torch.randn(2, 1600, generator=generator)}
    if modality == "vision":
        return {"pixel_values": torch.randn(2, 3, 32, 32, generator=generator)}
    ids = torch.randint(4, 40, (2, 12), generator=generator)
    ids[:, 0], ids[:, -1] = 0, 2
    return {"input_ids": ids}


MODELS = {
    "audio": (data2vec_hf.Data2Vec2AudioForPreTraining, audio_config, "mask_time_indices"),
    "vision": (data2vec_hf.Data2Vec2VisionForPreTraining, vision_config, "bool_masked_pos"),
    "text": (data2vec_hf.Data2Vec2TextForPreTraining, text_config, "masked_positions"),
}


def build(modality, **overrides):
    model_cls, make_config, _ = MODELS[modality]
    torch.manual_seed(0)
    return model_cls(make_config(**overrides)), inputs(modality, torch.Generator().manual_seed(1))


@pytest.mark.parametrize("modality", sorted(MODELS))
def test_student_sees_only_kept_tokens_and_teacher_runs_once_per_sample(modality):
    model, batch = build(modality)
    backbone = getattr(model, model.base_model_prefix)
    calls = []
    handles = [
        blocks[0].register_forward_pre_hook(lambda module, args: calls.append(tuple(args[0].shape[:2])))
        for blocks in (backbone.blocks, model.teacher.model.blocks)  # the student's, the teacher's own
    ]
    out = model.eval()(**batch)
    for handle in handles:
        handle.remove()
    cfg = model.config
    rows, length = out.mask.shape
    batch_size = next(iter(batch.values())).shape[0]
    kept = length - int(out.mask[0].sum())
    assert rows == batch_size * cfg.clone_batch
    assert (out.mask.sum(-1) == out.mask[0].sum()).all()  # same count in every clone
    # two calls of the first block: the student on B*M clones of the kept tokens, the teacher once on B
    assert calls == [
        (batch_size * cfg.clone_batch, kept + cfg.num_extra_tokens),
        (batch_size, length + cfg.num_extra_tokens),
    ]
    assert out.num_masked.item() == out.mask.sum().item() == out.prediction.shape[0]
    # the clones of one sample get different masks
    assert not torch.equal(out.mask[0], out.mask[1])


@pytest.mark.parametrize("modality", sorted(MODELS))
def test_targets_are_repeated_per_clone(modality):
    model, batch = build(modality)
    with torch.no_grad():
        out = model.eval()(**batch)
    clones = model.config.clone_batch
    length = out.mask.shape[1]
    # scatter the regressed targets back to (clone, position) and compare clones of one sample where
    # both regress the same position: the teacher ran once, so they must be identical
    full = torch.zeros(out.mask.shape[0], length, out.target.shape[-1])
    full[out.mask] = out.target
    both = out.mask[0] & out.mask[1]
    assert both.any()
    torch.testing.assert_close(full[0][both], full[1][both], rtol=0, atol=0)
    assert clones == 3


def test_inverse_block_masks_have_exact_counts():
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        mask = block_mask((14, 14), 0.8, 3, inverse=True, prob_adjust=0.07, generator=generator)
        assert mask.sum() == 196 - int(196 * 0.2)
        mask = block_mask((100,), 0.5, 5, prob_adjust=0.05, generator=generator)
        assert mask.sum() == 50
    assert random_token_mask(12, 0.48, generator=generator).sum() == 12 - int(12 * 0.52)
    # inverse masks keep blocks: a kept patch has far more kept neighbours than under random masking
    # (about 0.2 * 8 = 1.6 of its 8 neighbours at 20% kept)
    counts = []
    for _ in range(20):
        kept = ~block_mask((14, 14), 0.8, 3, inverse=True, prob_adjust=0.07, generator=generator).view(14, 14)
        padded = torch.nn.functional.pad(kept.float()[None, None], (1, 1, 1, 1))
        neighbours = torch.nn.functional.conv2d(padded, torch.ones(1, 1, 3, 3)).squeeze() - kept.float()
        counts.append(neighbours[kept].mean())
    assert torch.stack(counts).mean() > 3.0


def test_decoder_input_restores_original_order():
    mask = torch.tensor([[True, False, False, True, False, True], [False, True, True, False, False, True]])
    info = MaskInfo.from_mask(mask)
    values = torch.arange(12.0).view(2, 6, 1)
    kept = gather_positions(values, info.ids_keep)
    assert kept[0].flatten().tolist() == [1.0, 2.0, 4.0]  # kept positions, in order
    noise = torch.full((2, 3, 1), -1.0)
    restored = gather_positions(torch.cat([kept, noise], 1), info.ids_restore)
    expected = values.masked_fill(mask.unsqueeze(-1), -1.0)
    assert torch.equal(restored, expected)
    with pytest.raises(ValueError, match="same number of masked positions"):
        MaskInfo.from_mask(torch.tensor([[True, False], [True, True]]))


@pytest.mark.parametrize("modality", sorted(MODELS))
def test_loss_falls_on_a_fixed_batch(modality):
    model, batch = build(
        modality,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        post_mlp_dropout=0.0,
        layerdrop=0.0,
        decoder_input_dropout=0.0,
    )
    model.train()
    _, _, mask_arg = MODELS[modality]
    with torch.no_grad():
        mask = model(**batch).mask  # a fixed batch and a fixed mask: the student can fit the targets
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(40):
        out = model(**batch, **{mask_arg: mask})
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        model.ema_step(step + 1)
        losses.append(out.loss.item())
    assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:5]) / 5, losses


@pytest.mark.parametrize("modality", sorted(MODELS))
def test_save_load_round_trip(modality, tmp_path):
    model, batch = build(modality, mask_noise_std=0.0)  # no decoder noise: two forwards must agree
    model.eval()
    _, _, mask_arg = MODELS[modality]
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.02)  # teacher now differs from the student
        expected = model(**batch)
    model.save_pretrained(tmp_path)
    assert "auto_map" not in (tmp_path / "config.json").read_text()
    loaded = AutoModelForPreTraining.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    with torch.no_grad():
        got = loaded(**batch, **{mask_arg: expected.mask})
    torch.testing.assert_close(got.loss, expected.loss, rtol=0, atol=1e-5)
    encoder = AutoModel.from_pretrained(tmp_path).eval()
    backbone = getattr(model, model.base_model_prefix)
    with torch.no_grad():
        torch.testing.assert_close(encoder(**batch).last_hidden_state, backbone(**batch).last_hidden_state)


HEADS = {
    "audio": [
        (AutoModelForCTC, data2vec_hf.Data2Vec2AudioForCTC),
        (AutoModelForAudioClassification, data2vec_hf.Data2Vec2AudioForSequenceClassification),
    ],
    "vision": [(AutoModelForImageClassification, data2vec_hf.Data2Vec2VisionForImageClassification)],
    "text": [(AutoModelForSequenceClassification, data2vec_hf.Data2Vec2TextForSequenceClassification)],
}


@pytest.mark.parametrize("modality", sorted(MODELS))
def test_heads_load_pretrained_encoder_and_train(modality, tmp_path):
    model, batch = build(modality)
    model.save_pretrained(tmp_path)
    backbone = getattr(model, model.base_model_prefix).eval()
    for auto_cls, head_cls in HEADS[modality]:
        head = auto_cls.from_pretrained(tmp_path, num_labels=3)
        assert type(head) is head_cls
        with torch.no_grad():
            torch.testing.assert_close(
                getattr(head.eval(), head.base_model_prefix)(**batch).last_hidden_state,
                backbone(**batch).last_hidden_state,
            )
        head.train()
        if head_cls is data2vec_hf.Data2Vec2AudioForCTC:
            labels = torch.tensor([[1, 2, 3], [4, 5, -100]])
        else:
            labels = torch.tensor([0, 2])
        out = head(**batch, labels=labels, output_hidden_states=True)
        assert torch.isfinite(out.loss) and len(out.hidden_states) == model.config.num_hidden_layers + 1
        out.loss.backward()


@pytest.mark.parametrize("modality", ["audio", "text"])
def test_padding_does_not_change_real_positions(modality):
    model, batch = build(modality)
    backbone = getattr(model, model.base_model_prefix).eval()
    key = next(iter(batch))
    full = batch[key]
    if modality == "audio":
        short = 1200
        attention = torch.ones(2, 1600, dtype=torch.long)
        attention[1, short:] = 0
        padded = full.clone()
        padded[1, short:] = 0
    else:
        short = 8
        attention = torch.ones_like(full)
        attention[1, short:] = 0
        padded = full.clone()
        padded[1, short:] = 1  # <pad>
    with torch.no_grad():
        together = backbone(padded, attention_mask=attention).last_hidden_state
        alone = backbone(full[1:2, :short]).last_hidden_state
    frames = alone.shape[1]
    torch.testing.assert_close(together[1, :frames], alone[0], rtol=0, atol=1e-4)


def test_gradient_checkpointing_gives_same_gradients():
    model, batch = build(
        "text", hidden_dropout=0.0, attention_dropout=0.0, post_mlp_dropout=0.0, embedding_dropout=0.0
    )
    head = data2vec_hf.Data2Vec2TextForSequenceClassification(model.config)
    head.train()
    labels = torch.tensor([0, 1])
    head(**batch, labels=labels).loss.backward()
    reference = {n: p.grad.clone() for n, p in head.named_parameters() if p.grad is not None}
    head.zero_grad()
    head.gradient_checkpointing_enable()
    head(**batch, labels=labels).loss.backward()
    for name, grad in reference.items():
        torch.testing.assert_close(dict(head.named_parameters())[name].grad, grad, rtol=1e-5, atol=1e-6)


def test_head_trains_with_transformers_trainer(tmp_path):
    from torch.utils.data import Dataset
    from transformers import Trainer, TrainingArguments

    class Tiny(Dataset):
        def __init__(self):
            generator = torch.Generator().manual_seed(0)
            self.ids = torch.randint(4, 40, (16, 10), generator=generator)
            self.labels = (self.ids[:, 1] > 20).long()  # learnable from the second token

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            return {
                "input_ids": self.ids[i],
                "attention_mask": torch.ones(10, dtype=torch.long),
                "labels": self.labels[i],
            }

    torch.manual_seed(0)
    model = data2vec_hf.Data2Vec2TextForSequenceClassification(text_config(num_labels=2))
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=8,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
    )
    result = Trainer(model=model, args=args, train_dataset=Tiny()).train()
    assert result.global_step == 4 and torch.isfinite(torch.tensor(result.training_loss))
    model.save_pretrained(tmp_path / "head")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "head")
    assert type(loaded) is data2vec_hf.Data2Vec2TextForSequenceClassification
