"""fairseq ``audio_classification`` around a data2vec 2.0 model → ``Data2Vec2AudioForSequenceClassification``
(multi-label), and ``data2vec-convert --remote_code``.

The checkpoints are built here in fairseq's layout around the d2v2_audio reference model (random heads), as
``test_conversion_v2.py`` does for the other heads; the converted logits are checked against fairseq's head
math written out on fairseq's recorded encoder output.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from test_conversion_v2 import (
    TOLERANCE,
    error_line,
    fine_tuning_student,
    max_diff,
    outputs,
    random_tensor,
    ref_path,
    run,
    save_fairseq_file,
)
from transformers import AutoModelForAudioClassification, AutoModelForCTC


def noisy(cfg: dict) -> dict:
    """The reference model's config with masks filled by noise of std 0.02 (the fixture's is 0)."""
    model = {
        **cfg["model"],
        "modalities": {"audio": {**cfg["model"]["modalities"]["audio"], "mask_noise_std": 0.02}},
    }
    return {"model": model, "task": cfg["task"]}


def audio_classifier(tmp_path, filename="as.pt", num_classes=7, mode="lin_softmax", seed=0, **wrapper):
    """``audio_classification`` around the reference d2v2_audio model, with its AudioSet recipe's settings
    (examples/data2vec/config/audio/classification/base_classification.yaml)."""
    cfg, student = fine_tuning_student("d2v2_audio")
    cfg = noisy(cfg)
    generator = torch.Generator().manual_seed(seed)
    state = {f"d2v_model.{k}": v for k, v in student.items()}
    if mode == "proj_avg_proj":
        state["proj.weight"], state["proj.bias"] = (
            random_tensor(generator, 64, 32) * 0.3,
            random_tensor(generator, 64),
        )
        state["proj2.weight"], state["proj2.bias"] = (
            random_tensor(generator, num_classes, 64),
            random_tensor(generator, num_classes),
        )
    else:
        state["proj.weight"], state["proj.bias"] = (
            random_tensor(generator, num_classes, 32),
            random_tensor(generator, num_classes),
        )
    model_cfg = {
        "_name": "audio_classification",
        "model_path": "/somewhere/base_libri.pt",
        "apply_mask": True,
        "mask_prob": 0.6,
        "mask_length": 5,
        "mask_channel_prob": 0.0,
        "mask_channel_length": 64,
        "layerdrop": 0.1,
        "prediction_mode": mode,
        "source_mixup": 0.5,
        "label_mixup": True,
        "d2v_args": {"model": cfg["model"], "task": cfg["task"]},
        **wrapper,
    }
    task = {"_name": "audio_classification", "data": "/audioset", "normalize": True, "labels": "lbl"}
    return save_fairseq_file(tmp_path / filename, model_cfg, task, state), state


def lin_softmax(x):  # fairseq's lin_softmax prediction mode, as written there
    x = F.logsigmoid(x.float())
    x = torch.logsumexp(x + x, dim=1) - torch.logsumexp(x, dim=1)
    x = x.clamp(max=0)
    return x - torch.log(-(torch.expm1(x)))


@torch.no_grad()
@pytest.mark.parametrize("mode", ["lin_softmax", "average", "proj_avg_proj"])
def test_audio_classification_fine_tuned(mode, tmp_path, capsys):
    path, state = audio_classifier(tmp_path, mode=mode)
    out = tmp_path / "tagger"
    reference = ref_path("d2v2_audio", ".outputs.safetensors")
    code, err = run(capsys, "--checkpoint", path, "--output_dir", out, "--verify", reference)
    assert code == 0, err
    model = AutoModelForAudioClassification.from_pretrained(out).eval()
    config = model.config
    assert type(model).__name__ == "Data2Vec2AudioForSequenceClassification" and config.num_labels == 7
    assert config.problem_type == "multi_label_classification"
    ref = outputs("d2v2_audio")
    features = ref["features.x"]  # fairseq's encoder output
    proj = features @ state["proj.weight"].T + state["proj.bias"]
    if mode == "lin_softmax":
        expected = lin_softmax(proj)
        assert config.classifier_pooling == "linear_softmax" and config.classifier_proj_size == 0
    elif mode == "average":
        expected = proj.mean(1)
        assert config.classifier_pooling == "mean" and config.classifier_proj_size == 0
    else:
        expected = proj.mean(1) @ state["proj2.weight"].T + state["proj2.bias"]
        assert config.classifier_proj_size == 64
    assert max_diff(model(ref["source"]).logits, expected) < TOLERANCE
    # the recipe's fine-tuning masks; audio_classification keeps the encoder's zero fill (noise std 0.02 unused)
    assert (config.apply_spec_augment, config.mask_time_prob, config.mask_time_length) == (True, 0.6, 5)
    assert (config.mask_feature_prob, config.mask_feature_length, config.mask_noise_std) == (0.0, 64, 0.0)
    labels = (torch.rand(2, 7, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    loss = model(ref["source"], labels=labels).loss
    assert torch.allclose(loss, F.binary_cross_entropy_with_logits(expected, labels), atol=1e-4)
    card = (out / "README.md").read_text()
    assert "audio-classification fine-tuned" in card and "AutoModelForAudioClassification" in card
    assert "sigmoid" in card and "mixup" in card
    assert json.loads((out / "preprocessor_config.json").read_text())["do_normalize"] is True

    code, err = run(capsys, "--checkpoint", path, "--output_dir", tmp_path / "enc", "--export", "encoder")
    assert code == 0, err


def test_audio_classification_layouts_without_a_home_are_refused_by_name(tmp_path, capsys):
    cases = [
        (dict(mode="max", filename="max.pt"), "prediction_mode='max'", "max pooling"),
        (dict(mode="cls", filename="cls.pt"), "prediction_mode='cls'", "first frame"),
        (
            dict(mode="average_sigmoid", filename="avs.pt"),
            "prediction_mode='average_sigmoid'",
            "probabilities",
        ),
        (dict(filename="conv.pt", conv_kernel=3), "conv_kernel=3", "linear"),
        (dict(filename="eval.pt", eval_prediction_mode="max"), "eval_prediction_mode='max'", "same way"),
    ]
    for kwargs, what, why in cases:
        path, _ = audio_classifier(tmp_path, **kwargs)
        code, err = run(capsys, "--checkpoint", path, "--output_dir", tmp_path / "out", "--overwrite")
        line = error_line(err)
        assert code == 2 and what in line and why in line, line
        assert not (tmp_path / "out").exists()


def test_ctc_conversion_carries_fine_tuning_masks(tmp_path, capsys):
    """wav2vec_ctc's apply_mask / mask_prob / mask_channel_* become the SpecAugment fields (noise fill
    unless zero_mask), and --remote_code writes the folder's own code."""
    from test_conversion_v2 import LETTERS

    cfg, student = fine_tuning_student("d2v2_audio")
    cfg = noisy(cfg)
    generator = torch.Generator().manual_seed(0)
    state = {f"w2v_encoder.w2v_model.{k}": v for k, v in student.items()}
    state["w2v_encoder.proj.weight"] = random_tensor(generator, 4 + len(LETTERS), 32)
    state["w2v_encoder.proj.bias"] = random_tensor(generator, 4 + len(LETTERS))
    model_cfg = {
        "_name": "wav2vec_ctc",
        "normalize": True,
        "apply_mask": True,
        "mask_prob": 0.65,
        "mask_channel_prob": 0.25,
        "mask_channel_length": 64,
        "w2v_args": {"model": cfg["model"], "task": cfg["task"]},
    }
    path = save_fairseq_file(
        tmp_path / "ctc.pt", model_cfg, {"_name": "audio_finetuning", "normalize": True}, state
    )
    out = tmp_path / "ctc"
    code, err = run(capsys, "--checkpoint", path, "--output_dir", out, "--remote_code")
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert (config["apply_spec_augment"], config["mask_time_prob"], config["mask_time_length"]) == (
        True,
        0.65,
        10,
    )
    assert (config["mask_feature_prob"], config["mask_feature_length"]) == (0.25, 64)
    assert config["mask_noise_std"] == 0.02  # the encoder's own noise: wav2vec_ctc's zero_mask is off
    assert config["auto_map"]["AutoModelForCTC"] == "modeling_data2vec2_audio.Data2Vec2AudioForCTC"
    assert {"modeling_data2vec2_audio.py", "configuration_data2vec2_audio.py"} <= {
        p.name for p in out.iterdir()
    }
    card = (out / "README.md").read_text()
    assert "trust_remote_code=True" in card and "import data2vec_hf" not in card
    model = AutoModelForCTC.from_pretrained(out, trust_remote_code=True).eval()
    ref = outputs("d2v2_audio")
    expected = ref["features.x"] @ state["w2v_encoder.proj.weight"].T + state["w2v_encoder.proj.bias"]
    with torch.no_grad():
        assert max_diff(model(ref["source"]).logits, expected) < TOLERANCE

    v1 = ref_path("d2v1_audio")
    code, err = run(capsys, "--checkpoint", v1, "--output_dir", tmp_path / "v1", "--remote_code")
    assert code == 2 and "data2vec 2.0" in error_line(err)
