"""The fine-tuning scripts end to end, on checkpoints written by the pretraining scripts (data2vec 1.0).

One session fixture runs the three pretraining scripts (concurrently, tiny configs, two updates) on
local data made here; each fine-tuning script then runs in-process on that checkpoint with tiny local
data, evaluates, predicts, writes its metrics and card, and pushes to a local stand-in for the Hub.
The fine-tuned models are then loaded by plain transformers ``pipeline``s in a fresh interpreter that
never imports data2vec_hf.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from data2vec_hf.finetuning import finetune_asr, finetune_glue, finetune_image
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file
from scipy import stats
from sklearn import metrics as skm
from test_hub import DUMMY_TOKEN, hub  # noqa: F401  (the stand-in fixture)

jiwer = pytest.importorskip("jiwer")

ROOT = Path(__file__).resolve().parents[1]
# Same tiny shapes as tests/test_pretraining_scripts.py; the audio encoder downsamples 80x (not 20x) so
# that seconds-long speech gives a few hundred frames.
TINY_TEXT = (
    "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64,average_top_k_layers=2,"
    "max_position_embeddings=66,mlm_probability=0.3,mask_span_length=1"
)
TINY_AUDIO = (
    "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64,conv_dim=(32,32,32),"
    "conv_kernel=(10,4,4),conv_stride=(5,4,4),num_conv_pos_embedding_groups=4,conv_pos_kernel_size=7,"
    "num_conv_pos_embeddings=2,average_top_k_layers=2,mask_length=4"
)
TINY_VISION = (
    "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64,image_size=32,patch_size=8,"
    "average_top_k_layers=2,min_mask_patches_per_block=2"
)
WORDS = "the quick brown fox jumps over a lazy dog and then runs far away from home".split()
TRAINING = [
    "--report_to",
    "none",
    "--seed",
    "0",
    "--disable_tqdm",
    "true",
    "--dataloader_pin_memory",
    "false",
]


@pytest.fixture(scope="module", autouse=True)
def _private_caches(tmp_path_factory):
    """Preprocessing and datasets caches go to a temporary folder, never to ~/.cache."""
    import datasets

    root = tmp_path_factory.mktemp("caches")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DATA2VEC_HF_CACHE", str(root / "data2vec_hf"))
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", root / "datasets")
        yield


# --------------------------------------------------------------------------------------------------
# Local data and pretrained checkpoints


def color_images(root: Path, per_class: int = 12, seed: int = 0) -> Path:
    """Two trivially separable classes: reddish and bluish noise images."""
    rng = np.random.default_rng(seed)
    for name, color in (("blue", (30, 30, 200)), ("red", (200, 30, 30))):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(color) + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{i}.png")
    return root


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory):
    """{"text"|"audio"|"vision": checkpoint dir, "speech"|"images": data dir}, by the pretraining scripts."""
    from data2vec_hf.pretraining.corpora import build_speech_corpus

    root = tmp_path_factory.mktemp("pretrained")
    text = root / "text.txt"
    rng = random.Random(0)
    text.write_text("\n".join(" ".join(rng.choices(WORDS, k=12)) for _ in range(80)) + "\n")
    speech = build_speech_corpus(root / "speech", num_clips=12)
    images = color_images(root / "images")
    runs = {
        "text": ["--train_file", text, "--config_overrides", TINY_TEXT, "--max_seq_length", "64"]
        + ["--bpe_vocab_size", "300"],
        "audio": ["--train_dir", speech, "--config_overrides", TINY_AUDIO, "--max_length_seconds", "2"],
        "vision": ["--train_dir", images, "--config_overrides", TINY_VISION],
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["DATA2VEC_HF_CACHE"] = str(root / "cache")
    env["HF_DATASETS_CACHE"] = str(root / "datasets-cache")
    processes = {}
    for modality, args in runs.items():
        out = root / modality
        command = [sys.executable, str(ROOT / "pretraining" / f"pretrain_{modality}.py"), "--output_dir", out]
        command += [
            "--max_train_steps",
            "2",
            "--per_device_train_batch_size",
            "4",
            "--cache_dir",
            root / "cache",
        ]
        command += args
        processes[modality] = subprocess.Popen(
            [str(c) for c in command],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    for modality, process in processes.items():
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, f"pretrain_{modality}.py failed:\n{output[-5000:]}"
    return {m: root / m for m in runs} | {"speech": speech, "images": images}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def logged_losses(output_dir: Path) -> list[float]:
    history = read_json(output_dir / "trainer_state.json")["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def card_metadata(output_dir: Path) -> dict:
    card = ModelCard.load(output_dir / "README.md")
    return card.data.to_dict()


def eval_results_of(output_dir: Path) -> dict[tuple[str, str], float]:
    card = ModelCard.load(output_dir / "README.md")
    return {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_predictions(path: Path) -> list[str]:
    with open(path) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [int(r["index"]) for r in rows] == list(range(len(rows)))
    return [r.get("prediction", r.get("transcription")) or "" for r in rows]


# --------------------------------------------------------------------------------------------------
# GLUE


def fox_rows(n: int, seed: int) -> list[dict]:
    """Label 1 exactly when "fox" occurs in the first sentence: learnable from one token."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.sample([w for w in WORDS if w != "fox"], 6)
        label = i % 2
        if label:
            words[rng.randrange(6)] = "fox"
        rows.append(
            {"sentence1": " ".join(words), "sentence2": " ".join(rng.sample(WORDS, 4)), "label": label}
        )
    return rows


@pytest.fixture(scope="module")
def glue_run(pretrained, tmp_path_factory):
    """MRPC-style pair classification on local csv: trains, evaluates and predicts."""
    root = tmp_path_factory.mktemp("glue")
    train = write_csv(root / "train.csv", fox_rows(96, seed=1))
    validation = write_csv(root / "validation.csv", fox_rows(40, seed=2))
    out = root / "out"
    finetune_glue.main(
        [
            "--model_name_or_path", str(pretrained["text"]), "--task_name", "mrpc",
            "--train_file", str(train), "--validation_file", str(validation), "--test_file", str(validation),
            "--do_train", "--do_eval", "--do_predict", "--output_dir", str(out),
            "--max_steps", "48", "--per_device_train_batch_size", "16", "--learning_rate", "5e-3",
            "--warmup_steps", "3", "--logging_steps", "4", "--save_steps", "100", "--eval_strategy", "no",
            "--config_overrides", "hidden_dropout_prob=0.0,attention_probs_dropout_prob=0.0",
            "--base_model_id", "someone/data2vec-text-tiny", *TRAINING,
        ]
    )  # fmt: skip
    return out, validation


def test_glue_training_loss_falls_and_metrics_are_written(glue_run):
    out, _ = glue_run
    losses = logged_losses(out)
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1, losses
    all_results = read_json(out / "all_results.json")
    for key in ("train_loss", "eval_accuracy", "eval_f1", "eval_combined_score", "predict_accuracy"):
        assert key in all_results, key
    assert read_json(out / "eval_results.json")["eval_samples"] == 40
    assert all_results["eval_accuracy"] > 0.7  # well above chance on the token-presence task
    assert (out / "model.safetensors").exists() and [p.name for p in out.glob("*.bin")] == [
        "training_args.bin"
    ]
    config = read_json(out / "config.json")
    assert config["architectures"] == ["Data2VecTextForSequenceClassification"]
    assert config["id2label"] == {"0": "0", "1": "1"}


def test_glue_metrics_equal_sklearn_on_the_written_predictions(glue_run):
    out, validation = glue_run
    with open(validation) as f:
        labels = np.array([int(r["label"]) for r in csv.DictReader(f)])
    predictions = np.array([int(p) for p in read_predictions(out / "predict_results_mrpc.txt")])
    result = read_json(out / "predict_results.json")
    assert result["predict_accuracy"] == pytest.approx(skm.accuracy_score(labels, predictions), abs=1e-12)
    assert result["predict_f1"] == pytest.approx(skm.f1_score(labels, predictions), abs=1e-12)
    assert read_json(out / "eval_results.json")["eval_accuracy"] == result["predict_accuracy"]


def test_glue_cola_evaluates_matthews_correlation(glue_run, tmp_path):
    """Evaluation only (no training) of the fine-tuned model under CoLA's metric."""
    trained, _ = glue_run
    rows = [{"sentence": r["sentence1"], "label": r["label"]} for r in fox_rows(30, seed=5)]
    data = write_csv(tmp_path / "cola.csv", rows)
    out = tmp_path / "out"
    finetune_glue.main(
        ["--model_name_or_path", str(trained), "--task_name", "cola", "--validation_file", str(data),
         "--test_file", str(data), "--do_eval", "--do_predict", "--output_dir", str(out), *TRAINING]
    )  # fmt: skip
    labels = np.array([r["label"] for r in rows])
    predictions = np.array([int(p) for p in read_predictions(out / "predict_results_cola.txt")])
    metrics = read_json(out / "eval_results.json")
    assert set(k for k in metrics if "matthews" in k) == {"eval_matthews_correlation"}
    assert metrics["eval_matthews_correlation"] == pytest.approx(
        skm.matthews_corrcoef(labels, predictions), abs=1e-12
    )


def test_glue_stsb_regression_resume_and_push(pretrained, hub, tmp_path):  # noqa: F811
    rng = random.Random(3)
    rows = []
    for _ in range(48):
        a, b = rng.sample(WORDS, 5), rng.sample(WORDS, 5)
        rows.append(
            {"sentence1": " ".join(a), "sentence2": " ".join(b), "label": round(len(set(a) & set(b)), 1)}
        )
    data = write_csv(tmp_path / "stsb.csv", rows)
    out = tmp_path / "out"
    args = [
        "--model_name_or_path", str(pretrained["text"]), "--task_name", "stsb", "--train_file", str(data),
        "--validation_file", str(data), "--test_file", str(data), "--output_dir", str(out),
        "--per_device_train_batch_size", "8", "--save_steps", "2", "--logging_steps", "1", *TRAINING,
    ]  # fmt: skip
    finetune_glue.main([*args, "--do_train", "--max_steps", "2"])
    assert (out / "checkpoint-2").is_dir()
    finetune_glue.main(
        [*args, "--do_train", "--do_eval", "--do_predict", "--max_steps", "4", "--resume_from_checkpoint", "latest",
         "--push_to_hub", "--hub_model_id", "someone/d2v-stsb", "--hub_token", DUMMY_TOKEN]
    )  # fmt: skip
    state = read_json(out / "trainer_state.json")
    assert state["global_step"] == 4 and [e["step"] for e in state["log_history"] if "loss" in e] == [
        1,
        2,
        3,
        4,
    ]
    config = read_json(out / "config.json")
    assert len(config["id2label"]) == 1
    assert config["problem_type"] == "regression"

    labels = np.array([r["label"] for r in rows], dtype=np.float64)
    predictions = np.array([float(p) for p in read_predictions(out / "predict_results_stsb.txt")])
    result = read_json(out / "predict_results.json")
    assert result["predict_pearson"] == pytest.approx(stats.pearsonr(predictions, labels)[0], abs=1e-9)
    assert result["predict_spearmanr"] == pytest.approx(stats.spearmanr(predictions, labels)[0], abs=1e-9)

    assert len(hub.commits) == 1 and hub.commits[0]["repo_id"] == "someone/d2v-stsb"
    assert set(hub.commits[0]["files"]) == {
        "README.md", "all_results.json", "config.json", "eval_results.json", "model.safetensors",
        "predict_results.json", "predict_results_stsb.txt", "tokenizer.json", "tokenizer_config.json",
        "train_results.json", "trainer_state.json",
    }  # fmt: skip
    assert hub.commits[0]["files"]["model.safetensors"] == (out / "model.safetensors").read_bytes()
    metadata = card_metadata(out)
    assert metadata["metrics"] == ["pearsonr", "spearmanr"]


def glue_mnli_dataset():
    """What ``load_dataset("nyu-mll/glue", "mnli")`` returns, in miniature (test labels are -1)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features(
        {
            "premise": Value("string"),
            "hypothesis": Value("string"),
            "label": ClassLabel(names=["entailment", "neutral", "contradiction"]),
            "idx": Value("int32"),
        }
    )
    rng = random.Random(4)

    def split(n, with_labels=True):
        rows = {"premise": [], "hypothesis": [], "label": [], "idx": []}
        for i in range(n):
            rows["premise"].append(" ".join(rng.sample(WORDS, 6)))
            rows["hypothesis"].append(" ".join(rng.sample(WORDS, 4)))
            rows["label"].append(i % 3 if with_labels else -1)
            rows["idx"].append(i)
        return Dataset.from_dict(rows, features=features)

    return DatasetDict(
        train=split(24),
        validation_matched=split(9),
        validation_mismatched=split(6),
        test_matched=split(5, False),
        test_mismatched=split(4, False),
    )


def test_glue_mnli_matched_and_mismatched(pretrained, tmp_path, monkeypatch):
    calls = []

    def fake_load_dataset(name, config=None, **kwargs):
        calls.append((name, config))
        return glue_mnli_dataset()

    monkeypatch.setattr(finetune_glue, "load_dataset", fake_load_dataset)
    out = tmp_path / "out"
    finetune_glue.main(
        ["--model_name_or_path", str(pretrained["text"]), "--task_name", "mnli", "--do_train", "--do_eval",
         "--do_predict", "--max_steps", "2", "--per_device_train_batch_size", "8", "--output_dir", str(out),
         *TRAINING]
    )  # fmt: skip
    assert calls == [("nyu-mll/glue", "mnli")]
    metrics = read_json(out / "eval_results.json")
    assert metrics["eval_samples"] == 9 and metrics["eval_samples_mm"] == 6
    assert {"eval_accuracy", "eval_accuracy_mm"} <= set(metrics)
    assert len(read_predictions(out / "predict_results_mnli_matched.txt")) == 5
    mismatched = read_predictions(out / "predict_results_mnli_mismatched.txt")
    assert len(mismatched) == 4 and set(mismatched) <= {"entailment", "neutral", "contradiction"}
    assert not (out / "predict_results.json").exists()  # no labels in GLUE test splits: no metrics
    results = eval_results_of(out)
    assert results[("validation_matched", "accuracy")] == pytest.approx(metrics["eval_accuracy"], abs=1e-6)
    assert results[("validation_mismatched", "accuracy")] == pytest.approx(
        metrics["eval_accuracy_mm"], abs=1e-6
    )
    assert card_metadata(out)["datasets"] == ["nyu-mll/glue"]
    assert read_json(out / "config.json")["id2label"]["2"] == "contradiction"


@pytest.mark.parametrize(
    "module, flags",
    [
        (
            finetune_glue,
            ["--task_name", "--train_file", "--sentence1_key", "--push_to_hub", "--resume_from_checkpoint"],
        ),
        (
            finetune_asr,
            ["--chars_to_ignore", "--freeze_feature_encoder", "--max_duration_in_seconds", "--do_predict"],
        ),
        (
            finetune_image,
            ["--layer_decay", "--mixup", "--cutmix", "--auto_augment", "--label_smoothing_factor"],
        ),
    ],
)
def test_help_lists_the_arguments(module, flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--model_name_or_path" in text and "--output_dir" in text
    for flag in flags:
        assert flag in text, flag


def test_glue_task_table_covers_every_task():
    from data2vec_hf.metrics import GLUE_TASK_METRICS

    assert set(finetune_glue.GLUE_TASKS) == {
        "cola",
        "sst2",
        "mrpc",
        "qqp",
        "stsb",
        "mnli",
        "qnli",
        "rte",
        "wnli",
    }
    assert set(finetune_glue.GLUE_TASKS) <= set(GLUE_TASK_METRICS)
    assert (
        finetune_glue.GLUE_TASKS["stsb"].num_labels == 1 and finetune_glue.GLUE_TASKS["mnli"].num_labels == 3
    )
    assert finetune_glue.GLUE_TASKS["mnli"].validation_splits == (
        "validation_matched",
        "validation_mismatched",
    )
    assert finetune_glue.GLUE_TASKS["qqp"].sentence_keys == ("question1", "question2")


# --------------------------------------------------------------------------------------------------
# ASR


def test_vocabulary_and_ctc_collator():
    texts = [
        finetune_asr.normalize_text(t, finetune_asr.CHARS_TO_IGNORE) for t in ["It's a cat.", "the  DOG!"]
    ]
    assert texts == ["IT'S A CAT", "THE DOG"]
    vocabulary = finetune_asr.build_vocabulary(texts)
    assert list(vocabulary)[:3] == ["<pad>", "<unk>", "|"] and list(vocabulary.values()) == list(
        range(len(vocabulary))
    )
    assert set(vocabulary) - {"<pad>", "<unk>", "|"} == set("ITSACHEDOG'")
    collator = finetune_asr.DataCollatorCTCWithPadding()
    batch = collator(
        [
            {"input_values": np.ones(5, np.float32), "labels": [3, 4]},
            {"input_values": np.ones(3), "labels": [5]},
        ]
    )
    assert batch["input_values"].shape == (2, 5) and batch["attention_mask"].tolist() == [
        [1] * 5,
        [1, 1, 1, 0, 0],
    ]
    assert batch["labels"].tolist() == [[3, 4], [5, -100]]


def test_asr_ctc_finetuning(pretrained, hub, tmp_path):  # noqa: F811
    speech = pretrained["speech"]
    with open(speech / "metadata.csv") as f:
        rows = [r for r in csv.DictReader(f) if int(r["num_samples"]) <= 4 * 16000]
    assert len(rows) >= 4
    manifest = write_csv(
        speech / "short.csv",
        [{"file_name": r["file_name"], "transcription": r["transcription"]} for r in rows],
    )
    out = tmp_path / "out"
    finetune_asr.main(
        ["--model_name_or_path", str(pretrained["audio"]), "--train_file", str(manifest),
         "--validation_file", str(manifest), "--test_file", str(manifest), "--do_train", "--do_eval",
         "--do_predict", "--max_duration_in_seconds", "4", "--max_steps", "4", "--per_device_train_batch_size", "4",
         "--learning_rate", "1e-3", "--logging_steps", "1", "--output_dir", str(out), "--push_to_hub",
         "--hub_model_id", "someone/d2v-asr", "--hub_token", DUMMY_TOKEN, *TRAINING]
    )  # fmt: skip
    assert all(np.isfinite(logged_losses(out)))
    metrics = read_json(out / "all_results.json")
    assert {"eval_wer", "eval_cer", "predict_wer", "predict_cer"} <= set(metrics)

    # the metrics equal jiwer on the written transcriptions (greedy CTC) and the normalised references
    predictions = read_predictions(out / "predict_results.txt")
    references = [r["transcription"] for r in rows]
    assert len(predictions) == len(references)
    assert metrics["predict_wer"] == pytest.approx(jiwer.wer(references, predictions), abs=1e-12)
    assert metrics["predict_cer"] == pytest.approx(jiwer.cer(references, predictions), abs=1e-12)

    vocabulary = read_json(out / "vocab.json")
    assert [vocabulary[t] for t in ("<pad>", "<unk>", "|")] == [0, 1, 2]
    assert set(vocabulary) - {"<pad>", "<unk>", "|"} == set("".join(references)) - {" "}
    config = read_json(out / "config.json")
    assert config["architectures"] == ["Data2VecAudioForCTC"] and config["vocab_size"] == len(vocabulary)
    assert config["pad_token_id"] == 0 and config["ctc_loss_reduction"] == "mean"

    # --freeze_feature_encoder (default): the convolutional feature encoder is untouched
    before, after = load_file(pretrained["audio"] / "model.safetensors"), load_file(out / "model.safetensors")
    conv = [k for k in before if k.startswith("feature_extractor.")]
    assert conv and all(torch.equal(before[k], after[f"data2vec_audio.{k}"]) for k in conv)

    (commit,) = hub.commits
    assert set(commit["files"]) == {
        "README.md", "all_results.json", "config.json", "eval_results.json", "model.safetensors",
        "predict_results.json", "predict_results.txt", "processor_config.json", "tokenizer_config.json",
        "train_results.json", "trainer_state.json", "vocab.json",
    }  # fmt: skip
    metadata = card_metadata(out)
    assert metadata["pipeline_tag"] == "automatic-speech-recognition" and metadata["metrics"] == [
        "cer",
        "wer",
    ]
    assert eval_results_of(out)[("validation", "wer")] == pytest.approx(metrics["eval_wer"], abs=1e-6)


# --------------------------------------------------------------------------------------------------
# Image classification


def test_layer_decay_parameter_groups(tmp_path):
    from data2vec_hf.finetuning.common import layer_decay_parameter_groups, layer_id
    from transformers import Data2VecVisionConfig, Data2VecVisionForImageClassification

    config = Data2VecVisionConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=32,
        patch_size=8, num_labels=3, use_relative_position_bias=True,
    )  # fmt: skip
    model = Data2VecVisionForImageClassification(config)
    groups = layer_decay_parameter_groups(model, learning_rate=1.0, weight_decay=0.05, layer_decay=0.5)
    names = [n for g in groups for n in g["param_names"]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # each exactly once
    for group in groups:
        assert group["lr"] == 0.5 ** (3 + 1 - group["layer_id"])
        for name, param in zip(group["param_names"], group["params"]):
            expected_decay = param.ndim > 1 and "cls_token" not in name
            assert (group["weight_decay"] == 0.05) == expected_decay, name
    assert groups[0]["layer_id"] == 4 and groups[-1]["layer_id"] == 0  # head first (its lr is logged)

    # the Trainer's optimizer gets these groups, and the schedule keeps their ratios
    from data2vec_hf.finetuning.common import LayerDecayTrainer
    from transformers import TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path), report_to="none", learning_rate=1e-3, weight_decay=0.05
    )
    trainer = LayerDecayTrainer(model=model, args=args, layer_decay=0.5)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    lrs = {g["layer_id"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs[4] == pytest.approx(0.9e-3) and lrs[0] == pytest.approx(0.9e-3 * 0.5**4)
    assert layer_id("data2vec_vision.embeddings.patch_embeddings.projection.weight", 3) == 0
    assert layer_id("data2vec_vision.embeddings.cls_token", 3) == 0
    assert layer_id("data2vec_vision.encoder.layer.0.attention.attention.query.weight", 3) == 1
    assert layer_id("data2vec_vision.encoder.layer.2.output.dense.bias", 3) == 3
    assert layer_id("data2vec_vision.pooler.layernorm.weight", 3) == 4 == layer_id("classifier.weight", 3)
    # data2vec 2.0 (fairseq naming): the modality encoder is layer 0, blocks.i is i + 1
    for name in ("patch_embedding.weight", "extra_tokens", "context_norm.bias", "prenet.0.attn.qkv.weight"):
        assert layer_id(f"data2vec2_vision.{name}", 3) == 0, name
    assert layer_id("data2vec2_vision.blocks.1.attn.qkv.weight", 3) == 2
    assert layer_id("fc_norm.weight", 3) == 4


def test_mixup_loss_is_soft_target_cross_entropy(tmp_path):
    from timm.data import Mixup
    from transformers import TrainingArguments

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(12, 3)

        def forward(self, pixel_values, labels=None):
            from transformers.modeling_outputs import ImageClassifierOutput

            return ImageClassifierOutput(logits=self.linear(pixel_values.flatten(1)))

    model = Tiny()
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=3)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = finetune_image.ImageClassificationTrainer(model=model, args=args, mixup=mixup)
    torch.manual_seed(0)
    pixels, labels = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 1])
    model.train()
    np.random.seed(1)  # timm draws the mixing coefficient with numpy
    loss = trainer.compute_loss(model, {"pixel_values": pixels.clone(), "labels": labels})
    np.random.seed(1)
    mixed, targets = mixup(pixels.clone(), labels.clone())
    assert targets.shape == (4, 3) and torch.allclose(targets.sum(-1), torch.ones(4))
    expected = torch.sum(-targets * torch.log_softmax(model(mixed).logits, -1), -1).mean()
    assert torch.allclose(loss, expected)
    odd = trainer.compute_loss(model, {"pixel_values": pixels[:3], "labels": labels[:3]})  # no mixing
    smooth = torch.full((3, 3), 0.1 / 3) + torch.nn.functional.one_hot(labels[:3], 3) * 0.9
    assert torch.allclose(
        odd, torch.sum(-smooth * torch.log_softmax(model(pixels[:3]).logits, -1), -1).mean()
    )


@pytest.fixture(scope="module")
def image_run(pretrained, tmp_path_factory):
    root = tmp_path_factory.mktemp("image")
    validation = color_images(root / "validation", per_class=5, seed=1)
    out = root / "out"
    finetune_image.main(
        ["--model_name_or_path", str(pretrained["vision"]), "--train_dir", str(pretrained["images"]),
         "--validation_dir", str(validation), "--test_dir", str(validation), "--do_train", "--do_eval",
         "--do_predict", "--max_steps", "24", "--per_device_train_batch_size", "8", "--learning_rate", "3e-3",
         "--layer_decay", "0.65", "--logging_steps", "3", "--save_steps", "100", "--auto_augment", "none",
         "--reprob", "0", "--output_dir", str(out), *TRAINING]
    )  # fmt: skip
    return out, validation


def test_image_training_loss_falls_with_layer_decay(image_run):
    out, _ = image_run
    losses = logged_losses(out)
    assert len(losses) == 8 and np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    metrics = read_json(out / "all_results.json")
    assert {"train_loss", "eval_accuracy", "predict_accuracy"} <= set(
        metrics
    ) and "eval_top5_accuracy" not in metrics
    config = read_json(out / "config.json")
    assert config["architectures"] == ["Data2VecVisionForImageClassification"]
    assert config["id2label"] == {"0": "blue", "1": "red"} and config["drop_path_rate"] == 0.1
    processor = read_json(out / "preprocessor_config.json")
    assert processor["crop_size"] == {"height": 32, "width": 32} and processor["size"]["height"] == 36


def test_image_metrics_equal_sklearn_and_card(image_run):
    out, validation = image_run
    # imagefolder order: sorted paths, class sub-folders first
    labels = [p.parent.name for p in sorted(validation.rglob("*.png"))]
    predictions = read_predictions(out / "predict_results.txt")
    assert read_json(out / "predict_results.json")["predict_accuracy"] == pytest.approx(
        skm.accuracy_score(labels, predictions), abs=1e-12
    )
    metadata = card_metadata(out)
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "image-classification"
    assert {"data2vec", "data2vec-1.0", "vision"} <= set(metadata["tags"])
    assert metadata["model-index"][0]["name"] == "out" and metadata["metrics"] == ["accuracy"]
    assert "layer-wise lr decay | 0.65" in (out / "README.md").read_text()


def test_image_mixup_cutmix_few_steps(pretrained, tmp_path):
    out = tmp_path / "out"
    finetune_image.main(
        ["--model_name_or_path", str(pretrained["vision"]), "--train_dir", str(pretrained["images"]),
         "--do_train", "--do_eval", "--max_steps", "2", "--per_device_train_batch_size", "4",
         "--mixup", "0.8", "--cutmix", "1.0", "--label_smoothing_factor", "0.1", "--output_dir", str(out),
         *TRAINING]
    )  # fmt: skip
    metrics = read_json(out / "all_results.json")
    assert np.isfinite(metrics["train_loss"]) and 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert metrics["eval_samples"] == 4  # 15% of the 24 training images held out


# --------------------------------------------------------------------------------------------------
# Plain transformers pipelines, in a process that never imports data2vec_hf

PIPELINES = textwrap.dedent(
    """
    import sys
    import soundfile as sf
    from PIL import Image
    from transformers import pipeline

    text_dir, asr_dir, image_dir, wav, png = sys.argv[1:6]
    text = pipeline("text-classification", model=text_dir)
    out = text({"text": "the quick fox", "text_pair": "a lazy dog"})
    assert out["label"] in {"0", "1"}, out
    asr = pipeline("automatic-speech-recognition", model=asr_dir)
    audio, rate = sf.read(wav, dtype="float32")
    transcript = asr({"raw": audio, "sampling_rate": rate})["text"]
    assert isinstance(transcript, str), transcript
    image = pipeline("image-classification", model=image_dir)
    top = image(Image.open(png))[0]
    assert top["label"] in {"blue", "red"}, top
    assert "data2vec_hf" not in sys.modules
    print("ok", type(text.model).__name__, type(asr.model).__name__, type(image.model).__name__)
    """
)


def test_finetuned_models_run_in_plain_transformers_pipelines(glue_run, image_run, pretrained, tmp_path):
    asr_out = tmp_path / "asr"
    finetune_asr.main(
        ["--model_name_or_path", str(pretrained["audio"]), "--train_dir", str(pretrained["speech"]),
         "--do_train", "--max_steps", "1", "--per_device_train_batch_size", "2", "--max_duration_in_seconds", "3",
         "--output_dir", str(asr_out), *TRAINING]
    )  # fmt: skip
    wav = sorted(pretrained["speech"].glob("*.wav"))[0]
    png = sorted(pretrained["images"].rglob("*.png"))[0]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", PIPELINES, str(glue_run[0]), str(asr_out), str(image_run[0]), str(wav), str(png)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.split() == [
        "ok", "Data2VecTextForSequenceClassification", "Data2VecAudioForCTC", "Data2VecVisionForImageClassification",
    ]  # fmt: skip
