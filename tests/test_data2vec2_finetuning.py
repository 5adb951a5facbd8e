"""data2vec 2.0 fine-tuning parity with 1.0 / transformers' heads.

* SpecAugment-style masks in the 2.0 audio encoder (hence ``Data2Vec2AudioForCTC`` and the audio
  classification head): transformers' config names and sampler, sampled in training only, masked share as
  configured, off at probability 0 or with ``apply_spec_augment=False``, applied where fairseq's 2.0
  fine-tuning applies them (on the projected features, before the positional convolution), padding never
  masked;
* ``problem_type`` of the 2.0 classification heads as transformers' heads: multi-label BCE (a training
  step, checked against the loss written out), single-label cross-entropy, regression;
* the audio head's linear-softmax pooling (fairseq ``audio_classification``) and optional projector.
"""

from __future__ import annotations

import json
import math

import data2vec_hf
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_data2vec2 import audio_config, text_config, vision_config
from test_hub import DUMMY_TOKEN, hub  # noqa: F401  (the stand-in fixture)

NO_DROPOUT = dict(
    hidden_dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    post_mlp_dropout=0.0,
    layerdrop=0.0,
    prenet_dropout=0.0,
    prenet_layerdrop=0.0,
    final_dropout=0.0,
    num_hidden_layers=2,
    average_top_k_layers=2,
)


def audio_model(cls=data2vec_hf.Data2Vec2AudioModel, **overrides):
    torch.manual_seed(0)
    return cls(audio_config(**{**NO_DROPOUT, **overrides}))


def waveform(batch=2, samples=1600, seed=0):
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------- SpecAugment


def test_spec_augment_in_training_only():
    model = audio_model(mask_time_prob=0.65, mask_time_length=4, mask_feature_prob=0.5, mask_feature_length=4)
    x = waveform()
    model.eval()
    with torch.no_grad():
        eval_a, eval_b = model(x).last_hidden_state, model(x).last_hidden_state
    assert torch.equal(eval_a, eval_b)  # nothing sampled in eval
    model.train()  # every dropout is 0: any change comes from the masks
    np.random.seed(0)
    with torch.no_grad():
        train = model(x).last_hidden_state
        model.config.apply_spec_augment = False
        unmasked = model(x).last_hidden_state
    assert (train - eval_a).abs().max() > 1e-2
    assert torch.allclose(unmasked, eval_a, atol=1e-6)


@pytest.mark.parametrize(
    "switch", [dict(mask_time_prob=0.0, mask_feature_prob=0.0), dict(apply_spec_augment=False)]
)
def test_spec_augment_off(switch):
    model = audio_model(**switch).train()
    features = torch.randn(3, 50, 32)
    assert torch.equal(model.mask_features(features), features)
    ctc = audio_model(data2vec_hf.Data2Vec2AudioForCTC, **switch)
    x = waveform()
    with torch.no_grad():
        assert torch.allclose(ctc.train()(x).logits, ctc.eval()(x).logits, atol=1e-6)


def masked_shares(model, batch, length, dim, padding=None):
    """Share of masked frames per row and of masked channels per row, with zero fill (noise std 0)."""
    out = model.mask_features(torch.ones(batch, length, dim), padding)
    frames = (out == 0).all(-1)  # a masked frame is all zeros
    channels = (out == 0).all(1) if padding is None else (out[:, :1] == 0).all(1)
    return frames, channels


def test_masked_share_follows_the_configuration():
    """transformers' semantics: about ``prob * length / span`` spans per row. With spans of one step
    nothing overlaps and the masked share is ``prob`` (to one step); longer spans overlap, and the
    share is that of spans placed at random, ``1 - exp(-prob)``."""
    np.random.seed(0)
    model = audio_model(mask_noise_std=0.0, mask_time_prob=0.65, mask_time_length=1).train()
    model.config.update(dict(mask_feature_prob=0.25, mask_feature_length=1, hidden_size=256))
    frames, channels = masked_shares(model, 16, 1000, 256)
    assert (frames.float().mean(1) - 0.65).abs().max() <= 1e-3
    assert (channels.float().mean(1) - 0.25).abs().max() <= 1 / 256
    model.config.update(dict(mask_time_length=10, mask_feature_prob=0.0))
    frames, channels = masked_shares(model, 16, 2000, 256)
    assert abs(frames.float().mean().item() - (1 - math.exp(-0.65))) < 0.02
    assert not channels.any()
    # the sampler is transformers' own: its share, drawn directly, agrees
    from transformers.models.data2vec.modeling_data2vec_audio import _compute_mask_indices

    theirs = _compute_mask_indices((16, 2000), 0.65, 10, min_masks=1)
    assert abs(frames.float().mean().item() - theirs.mean()) < 0.01


def test_padding_is_never_masked_and_short_clips_get_no_span():
    np.random.seed(0)
    model = audio_model(
        mask_noise_std=0.0, mask_time_prob=0.65, mask_time_length=5, mask_feature_prob=0.0
    ).train()
    padding = torch.zeros(4, 100, dtype=torch.bool)
    padding[1, 60:] = padding[3, 30:] = True
    frames, _ = masked_shares(model, 4, 100, 32, padding)
    assert frames.any() and not (frames & padding).any()
    assert frames[3, :30].float().mean() > 0.2  # the short row is masked in proportion to its own length
    # a clip shorter than one span: no time mask (transformers' sampler would raise)
    assert not masked_shares(model, 2, 4, 32)[0].any()


def test_time_masks_come_before_the_positional_convolution():
    """fairseq 2.0 fine-tuning masks the projected CNN features (noise of std ``mask_noise_std``; zeros
    at 0) and the positional convolution reads the masked features."""
    model = audio_model(mask_noise_std=0.0, mask_feature_prob=0.0).eval()
    seen = []
    model.relative_positions.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = waveform(batch=1)
    frames = int(data2vec_hf.data2vec_audio.num_frames(model.config, torch.tensor(1600)))
    mask = torch.zeros(1, frames, dtype=torch.bool)
    mask[0, 10:20] = True
    with torch.no_grad():
        masked = model(x, mask_time_indices=mask).last_hidden_state  # explicit masks apply in eval too
        plain = model(x).last_hidden_state
    assert (seen[0][0, 10:20] == 0).all() and (seen[0][0, :10] != 0).all()
    assert not torch.allclose(masked, plain)
    model.config.mask_noise_std = 0.01
    torch.manual_seed(0)
    features, _ = model.local_features(x)
    noisy = model.mask_features(features, None, mask)
    assert 0.005 < noisy[0, 10:20].std() < 0.02 and torch.equal(noisy[0, :10], features[0, :10])


def test_ctc_head_fine_tunes_with_masks():
    np.random.seed(0)
    model = audio_model(data2vec_hf.Data2Vec2AudioForCTC, mask_time_length=4, vocab_size=8).train()
    labels = torch.tensor([[1, 2, 3, 4], [5, 6, 7, -100]])
    loss = model(waveform(), labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss) and model.lm_head.weight.grad.abs().sum() > 0
    defaults = data2vec_hf.Data2Vec2AudioConfig()  # fairseq's base fine-tuning masks
    assert (defaults.mask_time_prob, defaults.mask_time_length, defaults.mask_feature_length) == (
        0.65,
        10,
        64,
    )


# ------------------------------------------------------------------------------------------- problem_type

HEADS = {
    "audio": (data2vec_hf.Data2Vec2AudioForSequenceClassification, audio_config, "input_values"),
    "vision": (data2vec_hf.Data2Vec2VisionForImageClassification, vision_config, "pixel_values"),
    "text": (data2vec_hf.Data2Vec2TextForSequenceClassification, text_config, "input_ids"),
}


def head(modality, **overrides):
    cls, make, name = HEADS[modality]
    torch.manual_seed(0)
    model = cls(make(**{**NO_DROPOUT, "classifier_dropout": 0.0, **overrides}))
    generator = torch.Generator().manual_seed(1)
    if modality == "audio":
        inputs = torch.randn(4, 1600, generator=generator)
    elif modality == "vision":
        inputs = torch.randn(4, 3, 32, 32, generator=generator)
    else:
        inputs = torch.randint(4, 40, (4, 10), generator=generator)
    return model, {name: inputs}


@pytest.mark.parametrize("modality", sorted(HEADS))
def test_multi_label_head_trains_a_step_with_bce(modality):
    model, inputs = head(modality, num_labels=5, apply_spec_augment=False)
    labels = torch.tensor([[1, 0, 0, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 0, 1], [0, 1, 0, 0, 0]]).float()
    model.train()
    out = model(**inputs, labels=labels)
    assert model.config.problem_type == "multi_label_classification"  # inferred from float labels
    probability = torch.sigmoid(out.logits)
    expected = -(labels * probability.log() + (1 - labels) * (1 - probability).log()).mean()
    assert torch.allclose(out.loss, expected, atol=1e-6)
    with torch.no_grad():
        before = model.eval()(**inputs, labels=labels).loss
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    out.loss.backward()
    optimizer.step()
    with torch.no_grad():
        assert model(**inputs, labels=labels).loss < before


@pytest.mark.parametrize("modality", sorted(HEADS))
def test_single_label_and_regression_as_transformers(modality):
    model, inputs = head(modality, num_labels=3)
    model.eval()
    labels = torch.tensor([0, 2, 1, 2])
    out = model(**inputs, labels=labels)
    assert model.config.problem_type == "single_label_classification"
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, labels))
    model.config.problem_type = "multi_label_classification"  # explicit: integer multi-hot labels work too
    multi_hot = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0]])
    out = model(**inputs, labels=multi_hot)
    assert torch.allclose(out.loss, F.binary_cross_entropy_with_logits(out.logits, multi_hot.float()))
    model.config.problem_type = "regression"
    targets = torch.randn(4, 3)
    assert torch.allclose(model(**inputs, labels=targets).loss, F.mse_loss(out.logits, targets))
    regressor, _ = head(modality, num_labels=1)
    scores = torch.tensor([0.5, 1.0, -2.0, 3.0])
    out = regressor(**inputs, labels=scores)
    assert regressor.config.problem_type == "regression"
    assert torch.allclose(out.loss, F.mse_loss(out.logits.squeeze(-1), scores))


# ------------------------------------------------------------------------------- audio head pooling


def fairseq_lin_softmax(frame_logits):
    """fairseq ``audio_classification``'s ``lin_softmax`` prediction mode, as written there."""
    x = F.logsigmoid(frame_logits.float())
    x = torch.logsumexp(x + x, dim=1) - torch.logsumexp(x, dim=1)
    x = x.clamp(max=0)
    return x - torch.log(-(torch.expm1(x)))


def test_linear_softmax_pooling_over_real_frames():
    model, inputs = head("audio", num_labels=4, classifier_pooling="linear_softmax", classifier_proj_size=0)
    model.eval()
    assert isinstance(model.projector, torch.nn.Identity) and model.classifier.in_features == 32
    assert "projector.weight" not in model.state_dict()
    x = inputs["input_values"]
    with torch.no_grad():
        frames = model.data2vec2_audio(x).last_hidden_state
        logits = model(x).logits
        expected = fairseq_lin_softmax(model.classifier(frames))
        assert torch.allclose(logits, expected, atol=1e-5)
        # probability = sum(p^2) / sum(p) of the frame probabilities
        p = torch.sigmoid(model.classifier(frames))
        assert torch.allclose(torch.sigmoid(logits), (p * p).sum(1) / p.sum(1), atol=1e-5)
        # padding is not pooled: a clip padded in a batch gives its logits alone
        padded = torch.cat([x[:1], torch.cat([x[1:2, :1200], torch.zeros(1, 400)], 1)])
        mask = torch.ones(2, 1600, dtype=torch.long)
        mask[1, 1200:] = 0
        alone = model(x[1:2, :1200]).logits
        assert torch.allclose(model(padded, attention_mask=mask).logits[1], alone[0], atol=1e-5)


def test_mean_pooling_unchanged():
    """The default head: projector → mean over real frames → classifier (as before, as transformers')."""
    model, inputs = head("audio", num_labels=3)
    model.eval()
    with torch.no_grad():
        frames = model.data2vec2_audio(inputs["input_values"]).last_hidden_state
        expected = model.classifier(model.projector(frames).mean(1))
        assert torch.allclose(model(**inputs).logits, expected, atol=1e-6)
    with pytest.raises(ValueError, match="classifier_pooling"):
        head("audio", classifier_pooling="max")


# ------------------------------------------------------------------------- fine-tuning scripts: --remote_code


def test_finetuning_script_writes_and_pushes_remote_code(tmp_path, hub):  # noqa: F811
    """``--remote_code``: the fine-tuned 2.0 folder gets its own code and auto_map, the one-commit push
    carries them, and the card's usage loads the folder with ``trust_remote_code=True``."""
    from data2vec_hf.finetuning import card_and_push, finetune_glue
    from test_finetuning import TRAINING, WORDS, fox_rows, write_csv
    from test_remote_code import save_processors
    from transformers import AutoModelForSequenceClassification

    encoder = tmp_path / "encoder"
    torch.manual_seed(0)
    config = text_config(**NO_DROPOUT, vocab_size=4 + len(WORDS), max_position_embeddings=40)
    data2vec_hf.Data2Vec2TextModel(config).save_pretrained(encoder)
    save_processors(encoder, "text", "encoder", words=WORDS)
    train = write_csv(tmp_path / "train.csv", fox_rows(16, seed=1))
    out = tmp_path / "out"
    finetune_glue.main(
        ["--model_name_or_path", str(encoder), "--task_name", "mrpc", "--train_file", str(train),
         "--do_train", "--max_steps", "2", "--per_device_train_batch_size", "8", "--output_dir", str(out),
         "--remote_code", "--push_to_hub", "--hub_model_id", "someone/d2v2-mrpc", "--hub_token", DUMMY_TOKEN,
         *TRAINING]
    )  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSequenceClassification"] == (
        "modeling_data2vec2_text.Data2Vec2TextForSequenceClassification"
    )
    (commit,) = hub.commits
    assert {"modeling_data2vec2_text.py", "configuration_data2vec2_text.py", "config.json"} <= set(
        commit["files"]
    )
    card = (out / "README.md").read_text()
    assert 'model="someone/d2v2-mrpc", trust_remote_code=True' in card and "import data2vec_hf" not in card
    model = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True)
    assert type(model) is data2vec_hf.Data2Vec2TextForSequenceClassification
    # a 1.0 model needs no code of its own: the option is ignored
    assert card_and_push.write_remote_code(model, out, "1.0") is False
