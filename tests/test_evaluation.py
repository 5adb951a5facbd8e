"""Probes, feature pooling and the online evaluator (issue #10): the probes find signal and only signal,
k-NN is what a brute-force loop computes, padding never reaches the pooled features, the evaluator leaves
the model and the random state as it found them, and two processes report what one does."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import data2vec_hf
import numpy as np
import pytest
import soundfile as sf
import torch
from data2vec_hf.evaluation import (
    EncoderInputs,
    LabelledData,
    LabelledSplit,
    OnlineEvaluator,
    add_arguments,
    extract_features,
    knn_predict,
    linear_probe,
    load_labelled_data,
    weighted_layer_probe,
)
from data2vec_hf.evaluation.features import default_processor, student_encoder
from data2vec_hf.pretraining.data import DataError
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, average_top_k_layers=2
)
AUDIO = dict(conv_dim=(32, 32, 32), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2), num_conv_pos_embedding_groups=4,
             conv_pos_kernel_size=7, num_conv_pos_embeddings=2)  # fmt: skip
V2 = dict(decoder_dim=16, decoder_layers=1, clone_batch=2)


def tiny_model(modality: str, version: int, vocab_size: int = 300):
    """A tiny, seeded ``*ForPreTraining`` model (hidden 32, 2 blocks)."""
    torch.manual_seed(0)
    if modality == "audio":
        cls = (
            data2vec_hf.Data2VecAudioForPreTraining
            if version == 1
            else data2vec_hf.Data2Vec2AudioForPreTraining
        )
        extra = {"mask_length": 2} if version == 1 else {**V2, "decoder_groups": 4}
        return cls(cls.config_class(**TINY, **AUDIO, **extra))
    if modality == "vision":
        cls = (
            data2vec_hf.Data2VecVisionForPreTraining
            if version == 1
            else data2vec_hf.Data2Vec2VisionForPreTraining
        )
        extra = (
            {"min_mask_patches_per_block": 2, "ema_anneal_end_step": 10}
            if version == 1
            else {**V2, "prenet_depth": 0}
        )
        return cls(cls.config_class(**TINY, image_size=32, patch_size=8, **extra))
    cls = data2vec_hf.Data2VecTextForPreTraining if version == 1 else data2vec_hf.Data2Vec2TextForPreTraining
    extra = {"mask_token_id": vocab_size - 1} if version == 1 else {**V2, "decoder_groups": 1}
    return cls(cls.config_class(**TINY, vocab_size=vocab_size, max_position_embeddings=66, **extra))


@pytest.fixture(scope="module")
def tokenizer():
    from data2vec_hf.pretraining.data import train_bpe_tokenizer

    words = "alpha beta gamma delta kappa sigma omega theta lambda zeta".split()
    return train_bpe_tokenizer([" ".join(words)] * 4, vocab_size=300)


def easy_data(modality: str, per_class: int = 12, seed: int = 0) -> LabelledData:
    """Three classes any encoder separates: tones of 3 pitches (lengths vary: padding), solid colours,
    disjoint vocabularies (lengths vary)."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split in ("train", "test"):
        values, labels = [], []
        for i in range(per_class * 3):
            label = i % 3
            if modality == "audio":
                t = np.arange(int(rng.integers(2400, 5600))) / 16000
                values.append(
                    (
                        np.sin(2 * np.pi * (200, 800, 2400)[label] * t) + 0.1 * rng.standard_normal(len(t))
                    ).astype(np.float32)
                )
            elif modality == "vision":
                colour = np.array([(200, 30, 30), (30, 200, 30), (30, 30, 200)][label]) + rng.integers(
                    -20, 20, 3
                )
                values.append(
                    Image.fromarray(np.broadcast_to(colour, (40, 40, 3)).clip(0, 255).astype(np.uint8))
                )
            else:
                vocab = ["alpha beta gamma", "delta kappa sigma", "omega theta lambda"][label].split()
                values.append(" ".join(rng.choice(vocab, size=int(rng.integers(2, 9)))))
            labels.append(label)
        splits[split] = LabelledSplit(values, labels)
    return LabelledData(modality, ["a", "b", "c"], splits["train"], splits["test"], "synthetic")


def processor_for(modality, model, tokenizer):
    return tokenizer if modality == "text" else default_processor(modality, student_encoder(model).config)


# --------------------------------------------------------------------------------------------------
# Probes


def informative(labels: torch.Tensor, num_classes: int, dim: int, generator, signal: float = 5.0):
    """One-hot label code scaled by `signal` plus unit noise; the Bayes accuracy for 8 classes is 99.9 % at
    signal 5 (91.8 % at 3), so a working probe must reach 95 %."""
    x = torch.randn(len(labels), dim, generator=generator)
    x[:, :num_classes] += signal * torch.nn.functional.one_hot(labels, num_classes)
    return x


def test_probes_find_the_label_and_nothing_else():
    g = torch.Generator().manual_seed(0)
    classes, dim = 8, 32
    y_train, y_test = (
        torch.randint(0, classes, (400,), generator=g),
        torch.randint(0, classes, (400,), generator=g),
    )
    train = torch.stack([informative(y_train, classes, dim, g), torch.randn(400, dim, generator=g)])
    test = torch.stack([informative(y_test, classes, dim, g), torch.randn(400, dim, generator=g)])
    linear = linear_probe(train, y_train, test, y_test, classes).accuracy
    knn = (knn_predict(train, y_train, test, classes, k=20) == y_test).float().mean(-1)
    chance = 1 / classes
    assert linear[0] >= 0.95 and knn[0] >= 0.95
    assert abs(linear[1] - chance) <= 0.05 and abs(knn[1] - chance) <= 0.05, (linear, knn)
    again = linear_probe(train, y_train, test, y_test, classes)
    assert torch.equal(again.accuracy, linear)  # deterministic


def test_knn_equals_brute_force():
    g = torch.Generator().manual_seed(1)
    train, test = torch.randn(2, 60, 12, generator=g), torch.randn(2, 25, 12, generator=g)
    labels = torch.randint(0, 4, (60,), generator=g)
    predicted = knn_predict(train, labels, test, num_classes=4, k=7, temperature=0.1, chunk_size=10)
    for s in range(2):
        tr, te = train[s].double().numpy(), test[s].double().numpy()
        mean = tr.mean(0)
        for m in range(te.shape[0]):
            sims = []
            for n in range(tr.shape[0]):
                a, b = te[m] - mean, tr[n] - mean
                sims.append(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
            votes = [0.0] * 4
            for n in sorted(range(len(sims)), key=lambda n: -sims[n])[:7]:
                votes[int(labels[n])] += np.exp(sims[n] / 0.1)
            assert int(predicted[s, m]) == int(np.argmax(votes))


def test_weighted_layer_probe_weights_the_informative_layer():
    g = torch.Generator().manual_seed(2)
    y_train, y_test = torch.randint(0, 4, (200,), generator=g), torch.randint(0, 4, (200,), generator=g)
    noise = lambda n: torch.randn(n, 16, generator=g)  # noqa: E731
    train = torch.stack([noise(200), informative(y_train, 4, 16, g), noise(200)])
    test = torch.stack([noise(200), informative(y_test, 4, 16, g), noise(200)])
    result = weighted_layer_probe(train, y_train, test, y_test, 4)
    assert result.accuracy >= 0.9
    assert int(np.argmax(result.layer_weights)) == 1 and abs(sum(result.layer_weights) - 1) < 1e-5


# --------------------------------------------------------------------------------------------------
# Features


@pytest.mark.parametrize("modality,version", [("audio", 1), ("audio", 2), ("text", 1), ("text", 2)])
def test_padding_does_not_reach_pooled_features(modality, version, tokenizer):
    model = tiny_model(modality, version).eval()
    data = easy_data(modality, per_class=2)
    inputs = EncoderInputs(
        modality, data.train.values, processor_for(modality, model, tokenizer), model.config
    )
    assert len(set(inputs.lengths)) > 1  # the batches below are padded
    batched = extract_features(model, inputs, batch_size=6)["mean"]
    alone = extract_features(model, inputs, batch_size=1)["mean"]
    assert batched.shape == (3, 6, 32)  # block input + 2 blocks, 6 examples
    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("version", [1, 2])
def test_image_features_mean_over_patches_and_cls_for_v2(version):
    model = tiny_model("vision", version).eval()
    data = easy_data("vision", per_class=1)
    processor = processor_for("vision", model, None)
    inputs = EncoderInputs("vision", data.train.values, processor, model.config)
    features = extract_features(model, inputs)
    encoder = student_encoder(model)
    with torch.no_grad():
        hidden = encoder(**inputs.batch(range(3)), output_hidden_states=True).hidden_states
    assert hidden[0].shape[1] == 17  # CLS + 16 patches, in both versions
    torch.testing.assert_close(features["mean"], torch.stack([h[:, 1:].mean(1) for h in hidden]))
    if version == 2:
        torch.testing.assert_close(features["cls"], torch.stack([h[:, 0] for h in hidden]))
    else:
        assert "cls" not in features


def test_evaluator_restores_mode_and_leaves_the_random_state_alone():
    model = tiny_model("audio", 1)
    evaluator = OnlineEvaluator(easy_data("audio", per_class=3), processor_for("audio", model, None))
    model.train()
    model.teacher.eval()  # a submodule with its own mode stays as it was
    state = torch.get_rng_state()
    evaluator.evaluate(model, step=1)
    assert model.training and model.data2vec_audio.training and not model.teacher.training
    assert torch.equal(state, torch.get_rng_state())
    model.eval()
    evaluator.evaluate(model, step=2)
    assert not model.training and not model.data2vec_audio.training
    assert [step for step, _ in evaluator.history] == [1, 2]


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("modality", ["audio", "vision", "text"])
def test_online_evaluator_metrics(modality, version, tokenizer):
    model = tiny_model(modality, version)
    data = easy_data(modality)
    metrics = OnlineEvaluator(data, processor_for(modality, model, tokenizer), knn_k=5).evaluate(model, 10)
    layers = 3
    suffixes = [""] + (["_cls"] if (modality, version) == ("vision", 2) else [])
    linear = [metrics[f"eval/linear_layer_{i}{s}"] for s in suffixes for i in range(layers)]
    knn = [metrics[f"eval/knn_layer_{i}{s}"] for s in suffixes for i in range(layers)]
    assert len(metrics) == 2 * len(linear) + 5 + (len(suffixes) - 1) + 1
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in linear + knn)
    assert metrics["eval/linear_best"] == max(linear) and metrics["eval/knn_best"] == max(knn)
    assert linear[int(metrics["eval/best_layer"]) + layers * int(metrics.get("eval/best_is_cls", 0))] == max(
        linear
    )
    assert metrics["eval/chance"] == pytest.approx(1 / 3) and metrics["eval/seconds"] > 0
    # the classes are trivially separable: a wrong label/feature alignment would sit near 1/3
    assert metrics["eval/linear_best"] >= 0.9, metrics


# --------------------------------------------------------------------------------------------------
# Flags and data


def test_flags_are_off_by_default_and_from_args_needs_a_source(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser.add_argument_group("evaluation"))
    args = parser.parse_args([])
    assert not args.eval_embedded and args.eval_dataset_name is None and args.eval_dir is None
    assert args.eval_knn_k == 20 and args.eval_steps == 500
    assert OnlineEvaluator.from_args(args, "audio", default_processor("audio", None)) is None
    folder = tmp_path / "labelled"
    for split in ("train", "test"):
        for label, value in (("dark", 20), ("light", 230)):
            (folder / split / label).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (20, 20), (value + i,) * 3).save(folder / split / label / f"{i}.png")
    args = parser.parse_args(["--eval_dir", str(folder), "--eval_steps", "7", "--eval_at_start"])
    evaluator = OnlineEvaluator.from_args(args, "vision", None)
    assert evaluator.data.classes == ["dark", "light"] and len(evaluator.data.train) == 6
    assert [s for s in range(16) if evaluator.due(s, max_steps=15)] == [0, 7, 14, 15]


def test_labelled_data_errors_are_clear(tmp_path):
    manifest = tmp_path / "data.csv"
    manifest.write_text("text,category\none,a\ntwo,b\n")
    with pytest.raises(DataError, match="no label column 'label'.*category"):
        load_labelled_data("text", data_file=manifest)
    manifest.write_text("text,label\none,a\ntwo,a\nthree,a\n")
    with pytest.raises(DataError, match="single class"):
        load_labelled_data("text", data_file=manifest)
    manifest.write_text("text,label,split\none,a,train\ntwo,b,dev\n")
    with pytest.raises(DataError, match="'train' and 'test'"):
        load_labelled_data("text", data_file=manifest)
    manifest.write_text("text,label\n" + "".join(f"s{i},{'ab'[i % 2]}\n" for i in range(10)))
    data = load_labelled_data("text", data_file=manifest, test_fraction=0.2)
    assert (len(data.train), len(data.test)) == (8, 2) and sorted(data.test.labels) == [0, 1]  # stratified


def test_audio_folder_is_resampled_and_unreadable_files_counted(tmp_path):
    for split in ("train", "test"):
        for label in ("low", "high"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            sf.write(folder / "a.wav", np.zeros(8000, np.float32), 8000)
    (tmp_path / "train" / "low" / "broken.wav").write_bytes(b"RIFF nothing")
    data = load_labelled_data("audio", data_dir=tmp_path, sampling_rate=16000)
    assert len(data.train) == 2 and data.skipped["unreadable"] == 1
    assert len(data.test.values[0]) == 16000  # 1 s at 8 kHz, resampled to 16 kHz


# --------------------------------------------------------------------------------------------------
# Several processes

TWO_PROCESS_SCRIPT = """
import json, sys, torch
sys.path.insert(0, {tests!r})
from accelerate import Accelerator
from test_evaluation import tiny_model, easy_data, processor_for
from data2vec_hf.evaluation import OnlineEvaluator
accelerator = Accelerator(cpu=True)
model = tiny_model("audio", 2).to(accelerator.device)
data = easy_data("audio", per_class=7, seed=3)  # 21 + 21 examples: uneven shares
evaluator = OnlineEvaluator(data, processor_for("audio", model, None), accelerator, batch_size=4, knn_k=5)
metrics = evaluator.evaluate(model, 1)
features = evaluator.features(model)["mean"]
out = {{"metrics": {{k: v for k, v in metrics.items() if k != "eval/seconds"}}, "features": features.tolist()}}
with open(sys.argv[1] + f".{{accelerator.process_index}}", "w") as f:
    json.dump(out, f)
"""


def test_two_processes_report_what_one_does(tmp_path):
    script = tmp_path / "probe_two.py"
    script.write_text(TWO_PROCESS_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one")], env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
         str(29600 + os.getpid() % 1000), str(script), str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    single = json.loads((tmp_path / "one.0").read_text())
    ranks = [json.loads((tmp_path / f"two.{r}").read_text()) for r in range(2)]
    assert ranks[0]["metrics"] == ranks[1]["metrics"] == single["metrics"]
    np.testing.assert_allclose(ranks[0]["features"], single["features"], atol=1e-5)
    assert np.asarray(single["features"]).shape == (3, 42, 32)
