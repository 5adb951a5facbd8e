"""The ``data2vec-probe`` command on tiny checkpoints of every modality and version, on a native
transformers data2vec checkpoint, and its errors; the embedded probe sets are disjoint from the corpora."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from data2vec_hf.evaluation import cli, probe_sets
from data2vec_hf.evaluation.features import default_processor, student_encoder
from test_evaluation import easy_data, tiny_model


def write_labelled(folder: Path, modality: str) -> Path:
    """The easy 3-class data of test_evaluation as files + a metadata.csv with a split column."""
    data = easy_data(modality, per_class=4)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for split, part in (("train", data.train), ("test", data.test)):
        for i, (value, label) in enumerate(zip(part.values, part.labels)):
            row = {"label": data.classes[label], "split": split}
            if modality == "audio":
                sf.write(folder / f"{split}{i}.wav", value, 16000)
                row["file_name"] = f"{split}{i}.wav"
            elif modality == "vision":
                value.save(folder / f"{split}{i}.png")
                row["file_name"] = f"{split}{i}.png"
            else:
                row["text"] = value
            rows.append(row)
    with open(folder / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def save_checkpoint(folder: Path, modality: str, version: int) -> Path:
    """An encoder checkpoint as the pretraining scripts export it (encoder + processor)."""
    model = tiny_model(modality, version)
    encoder = student_encoder(model)
    encoder.save_pretrained(folder)
    if modality == "text":
        from data2vec_hf.pretraining.data import train_bpe_tokenizer

        words = "alpha beta gamma delta kappa sigma omega theta lambda zeta".split()
        train_bpe_tokenizer([" ".join(words)] * 4, vocab_size=300).save_pretrained(folder)
    else:
        default_processor(modality, encoder.config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("modality", ["audio", "vision", "text"])
def test_cli_probes_a_tiny_checkpoint(modality, version, tmp_path, capsys):
    model = save_checkpoint(tmp_path / "model", modality, version)
    data = write_labelled(tmp_path / "data", modality)
    out = tmp_path / "probe.json"
    code = cli.main(
        [str(model), "--data_dir", str(data), "--knn_k", "3", "--output_json", str(out), "--random_init"]
    )
    printed = capsys.readouterr().out
    assert code == 0
    report = json.loads(out.read_text())
    assert (report["modality"], report["version"]) == (modality, version)
    assert (
        report["data"]["train"] == 12
        and report["data"]["test"] == 12
        and report["data"]["classes"] == ["a", "b", "c"]
    )
    result = report["results"]["model"]
    poolings = {"mean", "cls"} if (modality, version) == ("vision", 2) else {"mean"}
    assert {row["pooling"] for row in result["layers"]} == poolings and len(result["layers"]) == 3 * len(
        poolings
    )
    assert result["best"]["linear"] == max(row["linear"] for row in result["layers"]) >= 0.9
    weights = result["weighted_sum"]["layer_weights"]
    assert len(weights) == 3 and abs(sum(weights) - 1) < 1e-5 and 0 <= result["weighted_sum"]["linear"] <= 1
    assert "random init" in report["results"]
    assert "weighted sum" in printed and "best" in printed


def test_cli_probes_a_native_transformers_checkpoint(tmp_path, capsys):
    """A facebook/data2vec-audio-style checkpoint written by plain transformers, loaded from local files."""
    from transformers import Data2VecAudioConfig, Data2VecAudioModel, Wav2Vec2FeatureExtractor

    config = Data2VecAudioConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(32, 32, 32),
        conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2), num_conv_pos_embedding_groups=4, conv_pos_kernel_size=7,
        num_conv_pos_embeddings=2,
    )  # fmt: skip
    Data2VecAudioModel(config).save_pretrained(tmp_path / "native")
    Wav2Vec2FeatureExtractor(return_attention_mask=True, do_normalize=True).save_pretrained(
        tmp_path / "native"
    )
    assert json.loads((tmp_path / "native" / "config.json").read_text())["model_type"] == "data2vec-audio"
    data = write_labelled(tmp_path / "data", "audio")
    code = cli.main([str(tmp_path / "native"), "--data_dir", str(data), "--knn_k", "3", "--output_json", ""])
    assert code == 0
    assert "data2vec 1.0 audio encoder" in capsys.readouterr().out


def test_cli_errors_are_clear(tmp_path, capsys):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         vocab_size=50)).save_pretrained(tmp_path / "bert")  # fmt: skip
    data = write_labelled(tmp_path / "data", "audio")
    assert cli.main([str(tmp_path / "bert"), "--data_dir", str(data)]) == 2
    err = capsys.readouterr().err
    assert "'bert' model" in err and "not a data2vec encoder" in err, err

    assert cli.main([str(tmp_path / "nothing-here"), "--data_dir", str(data)]) == 2
    assert "cannot read a model configuration" in capsys.readouterr().err

    model = save_checkpoint(tmp_path / "model", "audio", 1)
    assert cli.main([str(model), "--data_dir", str(data), "--label_column", "speaker"]) == 2
    err = capsys.readouterr().err
    assert "no label column 'speaker'" in err and "'label'" in err

    rows = (data / "metadata.csv").read_text().splitlines()
    header = rows[0].split(",")
    single = [rows[0]] + [
        ",".join("a" if h == "label" else v for h, v in zip(header, r.split(","))) for r in rows[1:]
    ]
    (data / "metadata.csv").write_text("\n".join(single) + "\n")
    assert cli.main([str(model), "--data_dir", str(data)]) == 2
    assert "single class" in capsys.readouterr().err


def test_help_documents_every_flag():
    result = subprocess.run(
        [sys.executable, "-m", "data2vec_hf.evaluation", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    for flag in ("--embedded", "--dataset_name", "--data_dir", "--data_file", "--label_column", "--knn_k",
                 "--random_init", "--baseline", "--output_json", "--probe_iterations"):  # fmt: skip
        assert flag in result.stdout
    assert "weighted sum" in result.stdout or "softmax-weighted" in result.stdout


# --------------------------------------------------------------------------------------------------
# Embedded probe sets


def test_probe_sets_are_disjoint_from_the_pretraining_corpora(tmp_path):
    import re

    from data2vec_hf.pretraining.data.corpora import ESPEAK_VARIANTS, english_paragraphs

    corpus_words = {w.lower() for p in english_paragraphs() for w in re.findall(r"[A-Za-z]+", p)}
    assert not set(probe_sets.SPEECH_WORDS) & corpus_words
    train, test = set(probe_sets.SPEECH_TRAIN_VARIANTS), set(probe_sets.SPEECH_TEST_VARIANTS)
    assert not train & test and not (train | test) & set(ESPEAK_VARIANTS)
    folder = probe_sets.build_speech_probe_set(tmp_path / "speech", speakers_per_variant=1)
    rows = list(csv.DictReader(open(folder / "metadata.csv")))
    speakers = {split: {r["speaker"] for r in rows if r["split"] == split} for split in ("train", "test")}
    assert len(rows) == 24 * 12 and not speakers["train"] & speakers["test"]
    audio, rate = sf.read(folder / rows[0]["file_name"])
    assert rate == 16000 and 0.3 < len(audio) / rate < 1.5 and np.abs(audio).max() > 0.05
    marker = (folder / ".corpus.json").stat().st_mtime_ns
    assert probe_sets.build_speech_probe_set(tmp_path / "speech", speakers_per_variant=1) == folder
    assert (folder / ".corpus.json").stat().st_mtime_ns == marker  # idempotent: not rebuilt


def test_image_and_text_probe_sets(tmp_path):
    from data2vec_hf.pretraining.data.corpora import build_text_corpus

    folder = probe_sets.build_image_probe_set(tmp_path / "images", train_per_class=2, test_per_class=1)
    description = json.loads((folder / "probe_set.json").read_text())
    assert description["classes"] == list(probe_sets.DIGITS)
    assert description["sizes"] == {"train": 20, "test": 10}
    again = probe_sets.build_image_probe_set(tmp_path / "images2", train_per_class=2, test_per_class=1)
    assert (folder / "train/7/7_0001.png").read_bytes() == (again / "train/7/7_0001.png").read_bytes()
    folder = probe_sets.build_text_probe_set(tmp_path / "text", train_size=10, test_size=6,
                                             packages=("jinja2", "networkx"))  # fmt: skip
    rows = list(csv.DictReader(open(folder / "metadata.csv")))
    assert [r["label"] for r in rows if r["split"] == "test"] == ["original", "shuffled"] * 3
    sources = {split: {r["source"] for r in rows if r["split"] == split} for split in ("train", "test")}
    assert not sources["train"] & sources["test"]  # split by source file
    for row in rows:  # only the order of the words differs: no case or punctuation cue
        assert row["text"] == " ".join(probe_sets.plain_words(row["text"]))
    corpus = " | ".join(
        " ".join(probe_sets.plain_words(line)) for line in build_text_corpus().read_text().splitlines()
    )
    assert not any(
        row["text"] in corpus for row in rows if row["label"] == "original"
    )  # not pretraining text
