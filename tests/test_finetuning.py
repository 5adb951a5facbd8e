"""The fine-tuning scripts end to end, on checkpoints written by the pretraining scripts (data2vec 1.0
and, with ``--version 2``, data2vec 2.0).

One session fixture runs the three pretraining scripts for both versions (six runs, concurrently, tiny
configs, two updates) on local data made here; each fine-tuning script then runs in-process on those
checkpoints with tiny local data, evaluates, predicts, writes its metrics and card, and pushes to a local
stand-in for the Hub. The fine-tuned 1.0 models are then loaded by plain transformers ``pipeline``s in a
fresh interpreter that never imports data2vec_hf; the fine-tuned 2.0 models by the usage their cards
give (``import data2vec_hf`` first) and by the task Auto classes, in a fresh interpreter too.
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

import data2vec_hf
import numpy as np
import pytest
import torch
from data2vec_hf.finetuning import common, finetune_asr, finetune_glue, finetune_image
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
# data2vec 2.0 (``--version 2``): the same shapes plus a tiny decoder and two clones, as TINY_V2 in
# tests/test_pretraining_scripts.py; the vision encoder gets one prenet block (layer 0 of layer decay).
V2 = ",decoder_dim=16,decoder_groups=4,decoder_layers=2,clone_batch=2"
TINY_V2 = {
    "audio": TINY_AUDIO.replace(",mask_length=4", "") + V2,
    "vision": TINY_VISION.replace(",min_mask_patches_per_block=2", "") + V2 + ",prenet_depth=1",
    "text": TINY_TEXT.replace(",mlm_probability=0.3,mask_span_length=1", "")
    + V2.replace("decoder_groups=4", "decoder_groups=1"),
}
# the pretrained checkpoint of each modality and version in the ``pretrained`` fixture
CHECKPOINT = {1: "{}", 2: "{}_v2"}
# what each script fine-tunes, per version
ARCHITECTURE = {
    1: {
        "text": "Data2VecTextForSequenceClassification",
        "audio": "Data2VecAudioForCTC",
        "vision": "Data2VecVisionForImageClassification",
    },
    2: {
        "text": "Data2Vec2TextForSequenceClassification",
        "audio": "Data2Vec2AudioForCTC",
        "vision": "Data2Vec2VisionForImageClassification",
    },
}
# no dropout on the tiny learnable tasks (the two versions name the fields differently)
NO_DROPOUT = {
    1: "hidden_dropout_prob=0.0,attention_probs_dropout_prob=0.0",
    2: "hidden_dropout=0.0,attention_dropout=0.0,post_mlp_dropout=0.0,embedding_dropout=0.0",
}
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


# Runs pretraining scripts one after the other in one interpreter, through the same ``main(argv)`` as
# their command line: the imports (most of a tiny run's time) are paid once per version, not per run.
PRETRAIN = textwrap.dedent(
    """
    import importlib
    import json
    import sys

    from accelerate.state import AcceleratorState, PartialState

    for script, argv in json.loads(sys.argv[1]):
        code = importlib.import_module(f"data2vec_hf.pretraining.{script}").main(argv)
        AcceleratorState._reset_state(True)  # a fresh Accelerator for the next run
        PartialState._reset_state()
        if code != 0:
            sys.exit(f"{script} {' '.join(argv)}: exit status {code}")
    """
)


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory):
    """{"text"|"audio"|"vision": 1.0 checkpoint dir, "text_v2"|"audio_v2"|"vision_v2": 2.0 checkpoint dir,
    "speech"|"images": data dir}, by the pretraining scripts: the three 1.0 runs in one process, the
    three 2.0 runs (``--version 2``) in another, both at once."""
    from data2vec_hf.pretraining.data.corpora import build_speech_corpus

    root = tmp_path_factory.mktemp("pretrained")
    text = root / "text.txt"
    rng = random.Random(0)
    text.write_text("\n".join(" ".join(rng.choices(WORDS, k=12)) for _ in range(80)) + "\n")
    speech = build_speech_corpus(root / "speech", num_clips=12)
    images = color_images(root / "images")
    data = {
        "text": ["--train_file", text, "--max_seq_length", "64", "--bpe_vocab_size", "300"],
        "audio": ["--train_dir", speech, "--max_length_seconds", "2"],
        "vision": ["--train_dir", images],
    }
    tiny = {1: {"text": TINY_TEXT, "audio": TINY_AUDIO, "vision": TINY_VISION}, 2: TINY_V2}
    processes = {}
    for version in (1, 2):
        cache = root / f"cache_v{version}"  # one per process: both preprocess the same data at once
        runs = []
        for modality, args in data.items():
            argv = ["--output_dir", root / CHECKPOINT[version].format(modality), "--max_train_steps", "2"]
            argv += ["--per_device_train_batch_size", "4", "--cache_dir", cache, *args]
            argv += ["--config_overrides", tiny[version][modality], "--version", version]
            runs.append((f"pretrain_{modality}", [str(a) for a in argv]))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        env["DATA2VEC_HF_CACHE"] = str(cache)
        env["HF_DATASETS_CACHE"] = str(cache / "datasets")
        # output to a file, not a pipe: a process must never wait for the test to read the other's pipe
        with open(root / f"v{version}.log", "w") as log:
            processes[version] = subprocess.Popen(
                [sys.executable, "-c", PRETRAIN, json.dumps(runs)],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
    for version, process in processes.items():
        process.wait(timeout=600)
        output = (root / f"v{version}.log").read_text()
        assert process.returncode == 0, f"data2vec {version}.0 pretraining failed:\n{output[-5000:]}"
    names = [CHECKPOINT[version].format(modality) for version in (1, 2) for modality in data]
    return {name: root / name for name in names} | {"speech": speech, "images": images}


VERSIONS = pytest.mark.parametrize("version", [1, 2], ids=["v1", "v2"])


def checkpoint(pretrained: dict, modality: str, version: int) -> Path:
    """The pretraining output of ``modality`` (text, audio, vision) for data2vec ``version``."""
    return pretrained[CHECKPOINT[version].format(modality)]


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


def fine_tune_glue(pretrained_dir: Path, root: Path, version: int) -> tuple[Path, Path]:
    """MRPC-style pair classification on local csv: trains, evaluates and predicts."""
    train = write_csv(root / "train.csv", fox_rows(96, seed=1))
    validation = write_csv(root / "validation.csv", fox_rows(40, seed=2))
    out = root / "out"
    finetune_glue.main(
        [
            "--model_name_or_path", str(pretrained_dir), "--task_name", "mrpc",
            "--train_file", str(train), "--validation_file", str(validation), "--test_file", str(validation),
            "--do_train", "--do_eval", "--do_predict", "--output_dir", str(out),
            "--max_steps", "48", "--per_device_train_batch_size", "16", "--learning_rate", "5e-3",
            "--warmup_steps", "3", "--logging_steps", "4", "--save_steps", "100", "--eval_strategy", "no",
            "--config_overrides", NO_DROPOUT[version],
            "--base_model_id", "someone/data2vec-text-tiny", *TRAINING,
        ]
    )  # fmt: skip
    return out, validation


@pytest.fixture(scope="module")
def glue_run(pretrained, tmp_path_factory):
    return fine_tune_glue(pretrained["text"], tmp_path_factory.mktemp("glue"), 1)


@pytest.fixture(scope="module")
def glue_run_v2(pretrained, tmp_path_factory):
    return fine_tune_glue(pretrained["text_v2"], tmp_path_factory.mktemp("glue_v2"), 2)


def glue_run_of(request, version: int) -> tuple[Path, Path]:
    return request.getfixturevalue("glue_run" if version == 1 else "glue_run_v2")


@VERSIONS
def test_glue_training_loss_falls_and_metrics_are_written(version, request):
    out, _ = glue_run_of(request, version)
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
    assert config["architectures"] == [ARCHITECTURE[version]["text"]]
    assert config["id2label"] == {"0": "0", "1": "1"}
    assert config["problem_type"] == "single_label_classification"


@VERSIONS
def test_glue_metrics_equal_sklearn_on_the_written_predictions(version, request):
    out, validation = glue_run_of(request, version)
    with open(validation) as f:
        labels = np.array([int(r["label"]) for r in csv.DictReader(f)])
    predictions = np.array([int(p) for p in read_predictions(out / "predict_results_mrpc.txt")])
    result = read_json(out / "predict_results.json")
    assert result["predict_accuracy"] == pytest.approx(skm.accuracy_score(labels, predictions), abs=1e-12)
    assert result["predict_f1"] == pytest.approx(skm.f1_score(labels, predictions), abs=1e-12)
    assert read_json(out / "eval_results.json")["eval_accuracy"] == result["predict_accuracy"]


@VERSIONS
def test_glue_cola_evaluates_matthews_correlation(version, request, tmp_path):
    """Evaluation only (no training) of the fine-tuned model under CoLA's metric."""
    trained, _ = glue_run_of(request, version)
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


@VERSIONS
def test_glue_stsb_regression_resume_and_push(version, pretrained, hub, tmp_path):  # noqa: F811
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
        "--model_name_or_path", str(checkpoint(pretrained, "text", version)), "--task_name", "stsb",
        "--train_file", str(data),
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
    assert config["architectures"] == [ARCHITECTURE[version]["text"]]

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


@VERSIONS
def test_glue_mnli_matched_and_mismatched(version, pretrained, tmp_path, monkeypatch):
    calls = []

    def fake_load_dataset(name, config=None, **kwargs):
        calls.append((name, config))
        return glue_mnli_dataset()

    monkeypatch.setattr(finetune_glue, "load_dataset", fake_load_dataset)
    out = tmp_path / "out"
    finetune_glue.main(
        ["--model_name_or_path", str(checkpoint(pretrained, "text", version)), "--task_name", "mnli", "--do_train", "--do_eval",
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


@VERSIONS
def test_gradient_accumulation_averages_the_micro_batch_losses(version, pretrained, tmp_path):
    """Two accumulated half batches make the same first update as one full batch (same loss, same
    gradient norm). The heads return the mean loss of their micro-batch; their ``forward`` takes
    ``**kwargs``, so without ``accepts_loss_kwargs = False`` the Trainer would not divide that loss by the
    accumulation steps (twice the loss and gradient here)."""
    data = write_csv(tmp_path / "train.csv", fox_rows(32, seed=6))
    logged = {}
    for accumulation, batch in ((1, 16), (2, 8)):
        out = tmp_path / f"accumulation{accumulation}"
        finetune_glue.main(
            ["--model_name_or_path", str(checkpoint(pretrained, "text", version)), "--task_name", "mrpc",
             "--train_file", str(data), "--do_train", "--max_steps", "1", "--per_device_train_batch_size", str(batch),
             "--gradient_accumulation_steps", str(accumulation), "--logging_steps", "1", "--save_strategy", "no",
             "--config_overrides", NO_DROPOUT[version], "--output_dir", str(out), *TRAINING]
        )  # fmt: skip
        (entry,) = [e for e in read_json(out / "trainer_state.json")["log_history"] if "loss" in e]
        logged[accumulation] = (entry["loss"], entry["grad_norm"])
    assert logged[2] == pytest.approx(logged[1], rel=1e-4)


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


@VERSIONS
def test_asr_ctc_finetuning(version, pretrained, hub, tmp_path, caplog):  # noqa: F811
    speech = pretrained["speech"]
    with open(speech / "metadata.csv") as f:
        rows = [r for r in csv.DictReader(f) if int(r["num_samples"]) <= 4 * 16000]
    assert len(rows) >= 4
    manifest = write_csv(
        speech / "short.csv",
        [{"file_name": r["file_name"], "transcription": r["transcription"]} for r in rows],
    )
    out = tmp_path / "out"
    pretrained_dir = checkpoint(pretrained, "audio", version)
    finetune_asr.main(
        ["--model_name_or_path", str(pretrained_dir), "--train_file", str(manifest),
         "--validation_file", str(manifest), "--test_file", str(manifest), "--do_train", "--do_eval",
         "--do_predict", "--max_duration_in_seconds", "4", "--max_steps", "4", "--per_device_train_batch_size", "4",
         "--learning_rate", "1e-3", "--logging_steps", "1", "--mask_time_prob", "0.05", "--output_dir", str(out),
         "--push_to_hub", "--hub_model_id", "someone/d2v-asr", "--hub_token", DUMMY_TOKEN, *TRAINING]
    )  # fmt: skip
    losses = logged_losses(out)
    assert len(losses) == 4 and all(np.isfinite(losses)), losses
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
    assert config["architectures"] == [ARCHITECTURE[version]["audio"]]
    assert config["vocab_size"] == len(vocabulary)
    assert config["pad_token_id"] == 0 and config["ctc_loss_reduction"] == "mean"
    # SpecAugment: both versions' CTC models have it (2.0: the masks of fairseq's 2.0 fine-tuning)
    ignored = [
        r.getMessage() for r in caplog.records if r.name == common.__name__ and "ignored" in r.getMessage()
    ]
    assert config["mask_time_prob"] == 0.05 and not ignored

    # --freeze_feature_encoder (default): the convolutional feature encoder is untouched, the rest trained
    before, after = load_file(pretrained_dir / "model.safetensors"), load_file(out / "model.safetensors")
    prefix = {1: "data2vec_audio.", 2: "data2vec2_audio."}[version]
    conv = [k for k in before if k.startswith("feature_extractor.")]
    assert conv and all(torch.equal(before[k], after[prefix + k]) for k in conv)
    attention = [k for k in before if "attention" in k or "attn" in k]
    assert attention and not any(torch.equal(before[k], after[prefix + k]) for k in attention)

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
    assert f"data2vec-{version}.0" in metadata["tags"]
    assert ("import data2vec_hf" in (out / "README.md").read_text()) == (version == 2)


# --------------------------------------------------------------------------------------------------
# Image classification


def test_layer_decay_parameter_groups(tmp_path):
    from data2vec_hf.finetuning.layer_decay import layer_decay_parameter_groups, layer_id
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
    from data2vec_hf.finetuning.layer_decay import LayerDecayTrainer
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


def expected_layer_ids(model) -> dict[str, int]:
    """Layer ids of a Data2Vec2* task model from its module structure: the parameters of block ``i`` of
    the backbone ``i + 1``, the rest of the backbone (the modality encoder) 0, the head
    ``num_hidden_layers + 1``."""
    prefix = model.base_model_prefix
    backbone = getattr(model, prefix)
    expected = {name: model.config.num_hidden_layers + 1 for name, _ in model.named_parameters()}
    expected |= {name: 0 for name, _ in backbone.named_parameters(prefix=prefix)}
    for i, block in enumerate(backbone.blocks):
        expected |= {name: i + 1 for name, _ in block.named_parameters(prefix=f"{prefix}.blocks.{i}")}
    return expected


SHAPES = dict(
    hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, prenet_depth=1
)
TINY_V2_MODELS = {
    "vision": lambda: data2vec_hf.Data2Vec2VisionForImageClassification(
        data2vec_hf.Data2Vec2VisionConfig(image_size=32, patch_size=8, num_extra_tokens=1, num_labels=3, **SHAPES)
    ),
    "audio": lambda: data2vec_hf.Data2Vec2AudioForCTC(
        data2vec_hf.Data2Vec2AudioConfig(
            conv_dim=(32, 32, 32), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2), num_conv_pos_embedding_groups=4,
            conv_pos_kernel_size=7, num_conv_pos_embeddings=2, vocab_size=12, **SHAPES,
        )
    ),
    "text": lambda: data2vec_hf.Data2Vec2TextForSequenceClassification(
        data2vec_hf.Data2Vec2TextConfig(vocab_size=50, max_position_embeddings=20, num_labels=2, **SHAPES)
    ),
}  # fmt: skip


@pytest.mark.parametrize("modality", sorted(TINY_V2_MODELS))
def test_layer_decay_of_data2vec2_parameters(modality):
    """Every parameter of each Data2Vec2* head gets its structural layer: the whole modality encoder
    (local encoder, positions, ALiBi scale, extra tokens, context norm, prenet) 0, ``blocks.i`` i + 1,
    the head last — and the optimizer groups carry the matching learning rates."""
    from data2vec_hf.finetuning.layer_decay import layer_decay_parameter_groups, layer_id

    model = TINY_V2_MODELS[modality]()
    expected = expected_layer_ids(model)
    assert {name: layer_id(name, 3) for name in expected} == expected
    assert set(expected.values()) == {0, 1, 2, 3, 4}
    encoder = {
        "vision": ["patch_embedding.weight", "extra_tokens", "context_norm.weight", "prenet.0.attn.qkv.weight"],
        "audio": ["feature_extractor.conv_layers.0.conv.weight", "feature_projection.1.weight", "alibi_scale",
                  "relative_positions.layers.1.conv.weight", "context_norm.bias", "prenet.0.mlp.fc1.weight"],
        "text": ["word_embeddings.weight", "position_embeddings.weight", "embedding_norm.weight",
                 "context_norm.weight", "prenet.0.norm2.bias"],
    }[modality]  # fmt: skip
    for name in encoder:
        assert expected[f"{model.base_model_prefix}.{name}"] == 0, name
    groups = layer_decay_parameter_groups(model, learning_rate=1.0, weight_decay=0.05, layer_decay=0.5)
    assert sorted(n for g in groups for n in g["param_names"]) == sorted(expected)
    for group in groups:
        assert group["lr"] == 0.5 ** (4 - group["layer_id"])
        assert all(expected[name] == group["layer_id"] for name in group["param_names"])
        if group["weight_decay"]:  # matrices only: no biases, norms, extra tokens, ALiBi scales
            assert all(
                p.ndim > 1 and "extra_tokens" not in n for n, p in zip(group["param_names"], group["params"])
            )


def test_layer_decay_puts_the_positional_convolution_of_data2vec_audio_with_the_embeddings():
    """1.0 audio: ``encoder.pos_conv_embed.layers.0`` runs before the blocks (not block 0)."""
    from data2vec_hf.finetuning.layer_decay import layer_id
    from transformers import Data2VecAudioConfig, Data2VecAudioForCTC

    config = Data2VecAudioConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, conv_dim=(32, 32, 32),
        conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2), num_conv_pos_embedding_groups=4, conv_pos_kernel_size=7,
        num_conv_pos_embeddings=2, vocab_size=12,
    )  # fmt: skip
    ids = {name: layer_id(name, 3) for name, _ in Data2VecAudioForCTC(config).named_parameters()}
    positional = [n for n in ids if ".pos_conv_embed." in n]
    assert positional and all(ids[n] == 0 for n in positional)
    assert all(ids[n] == 0 for n in ids if ".feature_extractor." in n or ".feature_projection." in n)
    for i in range(3):
        layer = [n for n in ids if f".encoder.layers.{i}." in n]
        assert layer and all(ids[n] == i + 1 for n in layer)
    assert ids["lm_head.weight"] == 4


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


def fine_tune_image(pretrained_dir: Path, images: Path, root: Path) -> tuple[Path, Path]:
    validation = color_images(root / "validation", per_class=5, seed=1)
    out = root / "out"
    finetune_image.main(
        ["--model_name_or_path", str(pretrained_dir), "--train_dir", str(images),
         "--validation_dir", str(validation), "--test_dir", str(validation), "--do_train", "--do_eval",
         "--do_predict", "--max_steps", "24", "--per_device_train_batch_size", "8", "--learning_rate", "3e-3",
         "--layer_decay", "0.65", "--logging_steps", "3", "--save_steps", "100", "--auto_augment", "none",
         "--reprob", "0", "--output_dir", str(out), *TRAINING]
    )  # fmt: skip
    return out, validation


@pytest.fixture(scope="module")
def image_run(pretrained, tmp_path_factory):
    return fine_tune_image(pretrained["vision"], pretrained["images"], tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="module")
def image_run_v2(pretrained, tmp_path_factory):
    return fine_tune_image(pretrained["vision_v2"], pretrained["images"], tmp_path_factory.mktemp("image_v2"))


def image_run_of(request, version: int) -> tuple[Path, Path]:
    return request.getfixturevalue("image_run" if version == 1 else "image_run_v2")


@VERSIONS
def test_image_training_loss_falls_with_layer_decay(version, request):
    from data2vec_hf.finetuning.layer_decay import layer_decay_parameter_groups
    from transformers import AutoModelForImageClassification

    out, _ = image_run_of(request, version)
    losses = logged_losses(out)
    assert len(losses) == 8 and np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    metrics = read_json(out / "all_results.json")
    assert {"train_loss", "eval_accuracy", "predict_accuracy"} <= set(
        metrics
    ) and "eval_top5_accuracy" not in metrics
    config = read_json(out / "config.json")
    assert config["architectures"] == [ARCHITECTURE[version]["vision"]]
    assert config["id2label"] == {"0": "blue", "1": "red"} and config["drop_path_rate"] == 0.1
    processor = read_json(out / "preprocessor_config.json")
    assert processor["crop_size"] == {"height": 32, "width": 32} and processor["size"]["height"] == 36

    # the run's optimizer had the layer-decayed groups of the model's parameters: lr 3e-3 * 0.65 ** (3 - id)
    model = AutoModelForImageClassification.from_pretrained(out)
    expected = layer_decay_parameter_groups(model, learning_rate=3e-3, weight_decay=0.0, layer_decay=0.65)
    saved = torch.load(out / "checkpoint-24" / "optimizer.pt", weights_only=True)["param_groups"]
    assert [(g["layer_id"], len(g["params"])) for g in saved] == [
        (g["layer_id"], len(g["params"])) for g in expected
    ]
    assert [g["initial_lr"] for g in saved] == pytest.approx(
        [3e-3 * 0.65 ** (3 - g["layer_id"]) for g in saved]
    )
    assert {g["layer_id"] for g in saved} == {0, 1, 2, 3}
    if version == 2:  # patch embedding, CLS token, context norm, prenet 0; blocks.i i + 1; fc_norm, head 3
        ids = {name: g["layer_id"] for g in expected for name in g["param_names"]}
        assert ids == expected_layer_ids(model)
        assert ids["data2vec2_vision.prenet.0.attn.qkv.weight"] == ids["data2vec2_vision.extra_tokens"] == 0


@VERSIONS
def test_image_metrics_equal_sklearn_and_card(version, request):
    out, validation = image_run_of(request, version)
    # imagefolder order: sorted paths, class sub-folders first
    labels = [p.parent.name for p in sorted(validation.rglob("*.png"))]
    predictions = read_predictions(out / "predict_results.txt")
    assert read_json(out / "predict_results.json")["predict_accuracy"] == pytest.approx(
        skm.accuracy_score(labels, predictions), abs=1e-12
    )
    metadata = card_metadata(out)
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "image-classification"
    assert {"data2vec", f"data2vec-{version}.0", "vision"} <= set(metadata["tags"])
    assert metadata["model-index"][0]["name"] == "out" and metadata["metrics"] == ["accuracy"]
    text = (out / "README.md").read_text()
    assert "layer-wise lr decay | 0.65" in text and f"data2vec {version}.0" in text
    assert ("import data2vec_hf" in text) == (version == 2)
    assert ("baevski2023efficient" in text) == (version == 2)  # data2vec 2.0 is cited for 2.0 models


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


# --------------------------------------------------------------------------------------------------
# data2vec 2.0: the cards' usage (``import data2vec_hf`` first) and the task Auto classes, in a fresh process

V2_USAGE = textwrap.dedent(
    """
    import os
    import sys
    from pathlib import Path

    from transformers import AutoConfig

    folders = [Path(p) for p in sys.argv[1:4]]  # text, speech, image
    for folder in folders:  # transformers alone does not know the data2vec2-* model types
        try:
            AutoConfig.from_pretrained(folder)
        except (KeyError, ValueError):
            pass
        else:
            raise AssertionError(f"{folder} loaded without data2vec_hf")
    assert "data2vec_hf" not in sys.modules
    # the "How to use" block of each card, as written, run next to the folder it names
    pipelines = []
    for folder, name in zip(folders, ("classifier", "asr", "classifier"), strict=True):
        code = (folder / "README.md").read_text().split("```python\\n", 1)[1].split("```", 1)[0]
        assert "import data2vec_hf" in code, code
        os.chdir(folder.parent)
        namespace = {}
        exec(code, namespace)
        pipelines.append(namespace[name])
    text, asr, image = pipelines
    assert text({"text": "the quick fox", "text_pair": "a lazy dog"})["label"] in {"0", "1"}
    assert image(str(folders[2].parent / "image.jpg"))[0]["label"] in {"blue", "red"}

    from transformers import AutoModelForCTC, AutoModelForImageClassification, AutoModelForSequenceClassification

    autos = (AutoModelForSequenceClassification, AutoModelForCTC, AutoModelForImageClassification)
    models = [auto.from_pretrained(folder) for auto, folder in zip(autos, folders, strict=True)]
    print("ok", *(type(m).__name__ for m in models), *(type(p.model).__name__ for p in pipelines))
    """
)


def test_finetuned_v2_models_load_as_their_cards_say(glue_run_v2, image_run_v2, pretrained, tmp_path):
    """The fine-tuned 2.0 folders reload through the task Auto classes and ``pipeline`` once
    ``import data2vec_hf`` ran (and not before), exactly as the usage block of their cards says."""
    asr_out = tmp_path / "asr" / "out"
    finetune_asr.main(
        ["--model_name_or_path", str(pretrained["audio_v2"]), "--train_dir", str(pretrained["speech"]),
         "--do_train", "--max_steps", "1", "--per_device_train_batch_size", "2", "--max_duration_in_seconds", "3",
         "--output_dir", str(asr_out), *TRAINING]
    )  # fmt: skip
    # the files the usage blocks read: speech.wav and image.jpg next to the model folders
    wav = sorted(pretrained["speech"].glob("*.wav"))[0]
    (asr_out.parent / "speech.wav").write_bytes(wav.read_bytes())
    png = sorted(pretrained["images"].rglob("*.png"))[0]
    Image.open(png).convert("RGB").save(image_run_v2[0].parent / "image.jpg")
    folders = [glue_run_v2[0], asr_out, image_run_v2[0]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", V2_USAGE, *map(str, folders)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    names = [ARCHITECTURE[2][m] for m in ("text", "audio", "vision")]
    assert result.stdout.split() == ["ok", *names, *names]
