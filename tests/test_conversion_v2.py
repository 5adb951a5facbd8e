"""data2vec 2.0 (``data2vec_multi``) through ``data2vec-convert``.

* every 2.0 checkpoint of ``tests/fixtures/fairseq`` is converted (encoder and ``--export pretraining``,
  both with ``--verify``), loaded with the Auto classes and compared with fairseq's recorded outputs;
* ``--verify`` refuses a wrong reference and writes nothing;
* fine-tuned files in fairseq's layouts (``wav2vec_ctc``, ``mae_image_classification``,
  ``data2vec_text_classification`` around the reference models, with random heads) convert to the
  ``Data2Vec2*`` head classes, whose logits are checked against the head math written out here on
  fairseq's recorded encoder outputs;
* head layouts our classes cannot reproduce are refused by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REFERENCE_DIR
from data2vec_hf.conversion.cli import main
from safetensors.torch import load_file, save_file
from test_conversion_formats import GPT2_TOKENS, bpe_files  # noqa: F401  (fixture)
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCTC,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
    AutoProcessor,
    AutoTokenizer,
)

TOLERANCE = 1e-4
V2 = ("d2v2_audio", "d2v2_image", "d2v2_text")
#: reference name → (encoder class, pretraining class, model_type, forward input, forward mask argument)
CLASSES = {
    "d2v2_audio": (
        "Data2Vec2AudioModel",
        "Data2Vec2AudioForPreTraining",
        "data2vec2-audio",
        "mask_time_indices",
    ),
    "d2v2_image": (
        "Data2Vec2VisionModel",
        "Data2Vec2VisionForPreTraining",
        "data2vec2-vision",
        "bool_masked_pos",
    ),
    "d2v2_text": ("Data2Vec2TextModel", "Data2Vec2TextForPreTraining", "data2vec2-text", "masked_positions"),
}


def ref_path(name: str, suffix: str = ".pt") -> Path:
    path = Path(REFERENCE_DIR) / f"{name}{suffix}"
    if not path.exists():
        pytest.fail(f"reference data missing: {path} (tests/fixtures/fairseq is part of the repository)")
    return path


def outputs(name: str) -> dict:
    return load_file(ref_path(name, ".outputs.safetensors"))


def max_diff(a, b, where=None):
    assert a.shape == b.shape, (a.shape, b.shape)
    if where is not None:
        a, b = a[where], b[where]
    return (a.float() - b.float()).abs().max().item()


def run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The three 2.0 reference checkpoints, converted once as encoder and as pretraining model, with --verify."""
    root = tmp_path_factory.mktemp("converted_v2")
    for name in V2:
        reference = ref_path(name, ".outputs.safetensors")
        for export in ("auto", "pretraining"):
            out = root / f"{name}-{export}"
            argv = ["--checkpoint", ref_path(name), "--output_dir", out, "--export", export]
            assert main([str(a) for a in [*argv, "--verify", reference, "--quiet"]]) == 0
    return root


# ------------------------------------------------------------------------------------- reference files


@pytest.mark.parametrize("name", V2)
@torch.no_grad()
def test_encoder_folder_matches_fairseq(name, converted):
    ref = outputs(name)
    model = AutoModel.from_pretrained(converted / f"{name}-auto").eval()
    assert type(model).__name__ == CLASSES[name][0]
    out = model(ref["source"], output_hidden_states=True)
    extra = model.config.num_extra_tokens
    assert max_diff(out.last_hidden_state[:, extra:], ref["features.x"]) < TOLERANCE
    if extra:
        assert max_diff(out.last_hidden_state, ref["features_with_cls.x"]) < TOLERANCE
    for i in range(model.config.num_hidden_layers):
        assert max_diff(out.hidden_states[i + 1], ref[f"features.block_out.{i}"]) < TOLERANCE
    if "padded.source" in ref:
        padding = ref["padded.padding_mask_input"]
        padded = model(ref["padded.source"], attention_mask=(~padding).long()).last_hidden_state
        real = ~ref["padded.features.padding_mask_out"]
        assert not real.all()
        if name == "d2v2_text":
            assert max_diff(padded, ref["padded.features.x"], real) < TOLERANCE
        else:  # padding-invariant positional convolution: only the unpadded row is fairseq's
            assert not padding[0].any()
            assert max_diff(padded[0], ref["padded.features.x"][0]) < TOLERANCE


@pytest.mark.parametrize("name", V2)
@torch.no_grad()
def test_pretraining_folder_reproduces_fairseq_targets(name, converted):
    ref = outputs(name)
    model = AutoModelForPreTraining.from_pretrained(converted / f"{name}-pretraining").eval()
    assert type(model).__name__ == CLASSES[name][1]
    result = model(ref["source"], **{CLASSES[name][3]: ref["pretrain.mask"]})
    assert result.num_masked.item() == ref["pretrain.mask"].sum().item()
    assert max_diff(result.target, ref["pretrain.targets_y_masked"]) < TOLERANCE
    assert max_diff(result.prediction, ref["pretrain.pred_masked"]) < TOLERANCE
    # the decoder and the EMA teacher are written by the pretraining export only
    pretraining = load_file(converted / f"{name}-pretraining" / "model.safetensors")
    encoder = load_file(converted / f"{name}-auto" / "model.safetensors")
    assert any(k.startswith("decoder.") for k in pretraining) and any(
        k.startswith("teacher.") for k in pretraining
    )
    assert not any(k.startswith(("decoder.", "teacher.")) for k in encoder)
    prefix = model.base_model_prefix + "."
    assert {prefix + k for k in encoder} == {k for k in pretraining if k.startswith(prefix)}


@pytest.mark.parametrize("name", V2)
def test_folder_contents_and_model_card(name, converted):
    manifest = json.loads((Path(REFERENCE_DIR) / "manifest.json").read_text())
    folder = converted / f"{name}-auto"
    files = {p.name for p in folder.iterdir()}
    expected = {"config.json", "model.safetensors", "README.md"}
    assert files == expected | ({"preprocessor_config.json"} if name != "d2v2_text" else set())
    assert json.loads((folder / "config.json").read_text())["model_type"] == CLASSES[name][2]
    card = (folder / "README.md").read_text()
    sha = manifest["models"][name]["sha256"][f"{name}.pt"]
    assert sha == hashlib.sha256(ref_path(name).read_bytes()).hexdigest() and sha in card
    assert "data2vec 2.0" in card and "`import data2vec_hf`" in card
    assert "```python\nimport data2vec_hf" in card  # the usage snippet starts with it
    assert "features.block_out.2" in card  # the verification table
    pre_card = (converted / f"{name}-pretraining" / "README.md").read_text()
    assert "AutoModelForPreTraining" in pre_card and "pretrain.targets_y_masked" in pre_card
    if name == "d2v2_audio":
        extractor = json.loads((folder / "preprocessor_config.json").read_text())
        assert extractor["do_normalize"] is True and extractor["sampling_rate"] == 16000  # task.normalize
    if name == "d2v2_image":
        processor = AutoImageProcessor.from_pretrained(folder)
        assert list(processor.image_mean) == [0.485, 0.456, 0.406]
        assert list(processor.image_std) == [0.229, 0.224, 0.225]
        assert processor.crop_size["height"] == 32 and processor.size["shortest_edge"] == 36  # 32 / (224/256)
        pixels = processor(torch.rand(3, 50, 40), return_tensors="pt", do_rescale=False).pixel_values
        assert pixels.shape == (1, 3, 32, 32)


def test_folders_need_import_data2vec_hf(converted):
    """Plain transformers does not know data2vec 2.0; after `import data2vec_hf` AutoModel loads it."""
    script = (
        "import sys\nfrom transformers import AutoModel\n"
        "try:\n    AutoModel.from_pretrained(sys.argv[1])\nexcept (ValueError, KeyError):\n    print('refused')\n"
        "import data2vec_hf\n"
        "for folder in sys.argv[1:]:\n    print(type(AutoModel.from_pretrained(folder)).__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *(str(converted / f"{n}-auto") for n in V2)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["refused", *(CLASSES[n][0] for n in V2)]


def test_verify_refuses_a_wrong_reference_and_writes_nothing(tmp_path, capsys):
    # same input shapes, another model (data2vec 1.0 audio)
    out = tmp_path / "a"
    code, err = run(
        capsys,
        "--checkpoint",
        ref_path("d2v2_audio"),
        "--output_dir",
        out,
        "--verify",
        ref_path("d2v1_audio", ".outputs.safetensors"),
    )
    assert code == 2 and "disagrees with reference d2v1_audio.outputs.safetensors" in error_line(err)
    assert not out.exists()
    # inputs of another modality
    code, err = run(
        capsys,
        "--checkpoint",
        ref_path("d2v2_audio"),
        "--output_dir",
        out,
        "--verify",
        ref_path("d2v2_text", ".outputs.safetensors"),
    )
    assert code == 2 and "do not fit this data2vec 2.0 audio model" in error_line(err)
    # one block output off by 1e-3
    ref = outputs("d2v2_image")
    ref["features.block_out.1"] = ref["features.block_out.1"] + 1e-3
    wrong = tmp_path / "wrong.safetensors"
    save_file(ref, wrong)
    code, err = run(capsys, "--checkpoint", ref_path("d2v2_image"), "--output_dir", out, "--verify", wrong)
    line = error_line(err)
    assert code == 2 and "features.block_out.1" in line and "features.x" not in line
    # wrong pretraining targets are caught by the pretraining export only
    ref = outputs("d2v2_text")
    ref["pretrain.targets_y_masked"] = ref["pretrain.targets_y_masked"] * 1.01
    save_file(ref, wrong)
    argv = ("--checkpoint", ref_path("d2v2_text"), "--verify", wrong)
    code, err = run(capsys, *argv, "--output_dir", out, "--export", "pretraining")
    assert code == 2 and "pretrain.targets_y_masked" in error_line(err)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["wrong.safetensors"]
    code, err = run(capsys, *argv, "--output_dir", out)  # the encoder has no targets to compare
    assert code == 0, err


def _edited(tmp_path: Path, name: str, edit) -> Path:
    checkpoint = torch.load(ref_path(name), weights_only=True)
    edit(checkpoint)
    path = tmp_path / f"edited_{name}.pt"
    torch.save(checkpoint, path)
    return path


def test_strict_mapping_names_the_offending_tensors(tmp_path, capsys):
    def edit(checkpoint):
        state = checkpoint["model"]
        del state["blocks.1.mlp.fc2.bias"]
        state["modality_encoders.AUDIO.mystery.weight"] = torch.zeros(2)
        state["modality_encoders.AUDIO.project_features.2.weight"] = torch.zeros(3, 3)

    code, err = run(
        capsys, "--checkpoint", _edited(tmp_path, "d2v2_audio", edit), "--output_dir", tmp_path / "o"
    )
    line = error_line(err)
    assert code == 2 and not (tmp_path / "o").exists()
    assert "source tensors with no mapping: modality_encoders.AUDIO.mystery.weight" in line
    assert "shape mismatches: modality_encoders.AUDIO.project_features.2.weight (3, 3)" in line
    assert "not filled by the checkpoint: blocks.1.mlp.fc2.bias" in line

    def positions(checkpoint):
        key = "modality_encoders.IMAGE.fixed_positional_encoder.positions"
        checkpoint["model"][key] = checkpoint["model"][key] * 1.1

    code, err = run(
        capsys, "--checkpoint", _edited(tmp_path, "d2v2_image", positions), "--output_dir", tmp_path / "o"
    )
    assert code == 2 and "differs from the 2-D sin-cos table" in error_line(err)


@torch.no_grad()
def test_pretraining_export_without_ema_starts_the_teacher_from_the_student(tmp_path, capsys):
    for name in ("d2v2_text", "d2v2_audio"):  # blocks-only teacher; full teacher without local encoder
        path = _edited(tmp_path, name, lambda checkpoint: checkpoint["model"].pop("_ema"))
        out = tmp_path / name
        code, err = run(capsys, "--checkpoint", path, "--output_dir", out, "--export", "pretraining")
        assert code == 0, err
        tensors = load_file(out / "model.safetensors")
        backbone = CLASSES[name][2].replace("-", "_") + "."  # data2vec2_text. / data2vec2_audio.
        teacher = {
            k.removeprefix("teacher.model."): v for k, v in tensors.items() if k.startswith("teacher.model.")
        }
        assert teacher and all(torch.equal(v, tensors[backbone + k]) for k, v in teacher.items())
        # the reference teacher equals the student (never updated): the targets are fairseq's
        ref = outputs(name)
        model = AutoModelForPreTraining.from_pretrained(out).eval()
        result = model(ref["source"], **{CLASSES[name][3]: ref["pretrain.mask"]})
        assert max_diff(result.target, ref["pretrain.targets_y_masked"]) < TOLERANCE


@torch.no_grad()
def test_text_tokenizer_from_dictionary_and_gpt2_bpe(bpe_files, tmp_path, capsys):  # noqa: F811
    dict_txt, encoder_json, vocab_bpe, order = bpe_files
    out = tmp_path / "text"
    args = ("--dict", dict_txt, "--encoder_json", encoder_json, "--vocab_bpe", vocab_bpe)
    code, err = run(capsys, "--checkpoint", ref_path("d2v2_text"), "--output_dir", out, *args)
    assert code == 0, err
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("hello world!")["input_ids"]
    gpt2_ids = [GPT2_TOKENS.index(t) for t in ("hello", "Ġworld", "!")]
    assert ids == [0, *(4 + order.index(i) for i in gpt2_ids), 2]
    assert tokenizer.mask_token_id == 24 and tokenizer.pad_token_id == 1
    model = AutoModel.from_pretrained(out).eval()
    assert model(
        **tokenizer(["hello world!", "hello"], padding=True, return_tensors="pt")
    ).last_hidden_state.shape == (2, 5, 32)
    assert "AutoTokenizer" in (out / "README.md").read_text()


# ------------------------------------------------------------------------------------ fine-tuned files


def fine_tuning_student(name: str) -> tuple[dict, dict]:
    """The reference file's cfg and its student state dict, as fairseq's fine-tuning keeps it
    (``remove_pretraining_modules``: no EMA teacher, no decoder)."""
    checkpoint = torch.load(ref_path(name), weights_only=True)
    state = {k: v for k, v in checkpoint["model"].items() if k != "_ema" and ".decoder." not in k}
    return checkpoint["cfg"], state


def save_fairseq_file(
    path: Path, model_cfg: dict, task_cfg: dict, state: dict, criterion: dict | None = None
) -> Path:
    """Write a fairseq-style checkpoint (``cfg`` with model/task/criterion sections, ``model`` state)."""
    cfg = {"model": model_cfg, "task": task_cfg, "criterion": criterion or {}}
    torch.save({"args": None, "cfg": cfg, "model": state}, path)
    return path


def random_tensor(generator, *shape) -> torch.Tensor:
    """Standard-normal weights of ``shape`` from ``generator``."""
    return torch.randn(*shape, generator=generator)


LETTERS = ["|", "E", "T", "A", "O", "N"]


@pytest.fixture
def ctc_checkpoint(tmp_path):
    """``wav2vec_ctc`` around the reference d2v2_audio model, with a random output projection."""
    cfg, student = fine_tuning_student("d2v2_audio")
    generator = torch.Generator().manual_seed(0)
    state = {f"w2v_encoder.w2v_model.{k}": v for k, v in student.items()}
    state["w2v_encoder.proj.weight"] = random_tensor(generator, 4 + len(LETTERS), 32)
    state["w2v_encoder.proj.bias"] = random_tensor(generator, 4 + len(LETTERS))
    state["w2v_encoder.proj.bias"][1:4] = -100.0  # never <pad>, </s>, <unk>
    model_cfg = {
        "_name": "wav2vec_ctc",
        "w2v_path": "/somewhere/base_libri.pt",
        "normalize": True,
        "final_dropout": 0.0,
        "w2v_args": {"model": cfg["model"], "task": cfg["task"]},
    }
    task = {"_name": "audio_finetuning", "normalize": True, "labels": "ltr", "sample_rate": 16000}
    path = save_fairseq_file(
        tmp_path / "ctc.pt", model_cfg, task, state, {"_name": "ctc", "zero_infinity": True}
    )
    dictionary = tmp_path / "dict.ltr.txt"
    dictionary.write_text("".join(f"{letter} {1000 - i}\n" for i, letter in enumerate(LETTERS)))
    return path, dictionary, state


@torch.no_grad()
def test_ctc_fine_tuned(ctc_checkpoint, tmp_path, capsys):
    path, dictionary, state = ctc_checkpoint
    out = tmp_path / "ctc"
    reference = ref_path("d2v2_audio", ".outputs.safetensors")
    code, err = run(
        capsys, "--checkpoint", path, "--output_dir", out, "--dict", dictionary, "--verify", reference
    )
    assert code == 0, err
    model = AutoModelForCTC.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert type(model).__name__ == "Data2Vec2AudioForCTC"
    assert model.config.vocab_size == 10 and model.config.pad_token_id == 0
    ref = outputs("d2v2_audio")
    # fairseq: logits = w2v_encoder.proj(encoder output), the encoder output as fairseq recorded it
    expected = ref["features.x"] @ state["w2v_encoder.proj.weight"].T + state["w2v_encoder.proj.bias"]
    assert max_diff(model(ref["source"]).logits, expected) < TOLERANCE
    # the processor normalises each utterance (task.normalize: fairseq's layer_norm over the waveform)
    inputs = processor(ref["source"].numpy(), sampling_rate=16000, return_tensors="pt")
    assert max_diff(inputs.input_values, F.layer_norm(ref["source"], ref["source"].shape[-1:])) < 1e-4
    ids = model(**inputs).logits.argmax(-1)
    symbols = ["<s>", "<pad>", "</s>", "<unk>", *LETTERS]
    for text, row in zip(processor.batch_decode(ids), ids.tolist()):
        collapsed = [i for j, i in enumerate(row) if i != 0 and (j == 0 or row[j - 1] != i)]
        assert text == " ".join(w for w in "".join(symbols[i] for i in collapsed).split("|") if w)
    card = (out / "README.md").read_text()
    assert "CTC fine-tuned" in card and "import data2vec_hf" in card and "AutoModelForCTC" in card

    code, err = run(capsys, "--checkpoint", path, "--output_dir", tmp_path / "enc", "--export", "encoder")
    assert code == 0, err
    encoder = AutoModel.from_pretrained(tmp_path / "enc").eval()
    assert type(encoder).__name__ == "Data2Vec2AudioModel"
    assert max_diff(encoder(ref["source"]).last_hidden_state, ref["features.x"]) < TOLERANCE
    code, err = run(capsys, "--checkpoint", path, "--output_dir", tmp_path / "pre", "--export", "pretraining")
    assert code == 2 and "no decoder or EMA teacher" in error_line(err)


def _image_classifier(
    tmp_path, generator, num_classes=5, filename="image_ft.pt", **wrapper
) -> tuple[Path, dict]:
    cfg, student = fine_tuning_student("d2v2_image")
    state = {f"model.{k}": v for k, v in student.items()}
    state["fc_norm.weight"] = 1 + 0.1 * random_tensor(generator, 32)
    state["fc_norm.bias"] = 0.1 * random_tensor(generator, 32)
    state["head.weight"] = random_tensor(generator, num_classes, 32)
    state["head.bias"] = random_tensor(generator, num_classes)
    model_cfg = {
        "_name": "mae_image_classification",
        "model_path": "/somewhere/base_imagenet.pt",
        "num_classes": num_classes,
        "use_fc_norm": True,
        "prediction_mode": "MEAN_POOLING",
        "pretrained_model_args": {"model": cfg["model"], "task": cfg["task"]},
        **wrapper,
    }
    task = {"_name": "mae_image_classification", "data": "/imagenet", "input_size": 32}
    return save_fairseq_file(tmp_path / filename, model_cfg, task, state), state


@torch.no_grad()
def test_image_classification_fine_tuned(tmp_path, capsys):
    path, state = _image_classifier(tmp_path, torch.Generator().manual_seed(1))
    out = tmp_path / "image"
    code, err = run(
        capsys,
        "--checkpoint",
        path,
        "--output_dir",
        out,
        "--verify",
        ref_path("d2v2_image", ".outputs.safetensors"),
    )
    assert code == 0, err
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    assert type(model).__name__ == "Data2Vec2VisionForImageClassification" and model.config.num_labels == 5
    ref = outputs("d2v2_image")
    # mae_image_classification: mean of the patch tokens (CLS removed) → fc_norm (eps 1e-6) → head
    pooled = F.layer_norm(
        ref["features.x"].mean(1), (32,), state["fc_norm.weight"], state["fc_norm.bias"], 1e-6
    )
    expected = pooled @ state["head.weight"].T + state["head.bias"]
    assert max_diff(model(ref["source"]).logits, expected) < TOLERANCE
    assert AutoImageProcessor.from_pretrained(out).crop_size["height"] == 32
    card = (out / "README.md").read_text()
    assert "AutoModelForImageClassification" in card and "LABEL_0" in card

    code, err = run(capsys, "--checkpoint", path, "--output_dir", tmp_path / "enc", "--export", "encoder")
    assert code == 0, err
    encoder = AutoModel.from_pretrained(tmp_path / "enc").eval()
    assert max_diff(encoder(ref["source"]).last_hidden_state[:, 1:], ref["features.x"]) < TOLERANCE


def _text_classifier(
    tmp_path,
    generator,
    heads=("sentence_classification_head",),
    num_classes=3,
    filename="text_ft.pt",
    **wrapper,
):
    cfg, student = fine_tuning_student("d2v2_text")
    state = {f"model.{k}": v for k, v in student.items()}
    for head in heads:
        state[f"classification_heads.{head}.dense.weight"] = random_tensor(generator, 32, 32) * 0.3
        state[f"classification_heads.{head}.dense.bias"] = random_tensor(generator, 32) * 0.1
        state[f"classification_heads.{head}.out_proj.weight"] = random_tensor(generator, num_classes, 32)
        state[f"classification_heads.{head}.out_proj.bias"] = random_tensor(generator, num_classes)
    model_cfg = {
        "_name": "data2vec_text_classification",
        "model_path": "/somewhere/nlp_base.pt",
        "pooler_dropout": 0.0,
        "pooler_activation_fn": "tanh",
        "pretrained_model_args": {"model": cfg["model"], "task": cfg["task"]},
        **wrapper,
    }
    task = {"_name": "sentence_prediction", "num_classes": num_classes, "d2v2_multi": True}
    return save_fairseq_file(tmp_path / filename, model_cfg, task, state), state


@torch.no_grad()
def test_text_classification_fine_tuned(tmp_path, capsys):
    path, state = _text_classifier(tmp_path, torch.Generator().manual_seed(2))
    out = tmp_path / "text"
    code, err = run(
        capsys,
        "--checkpoint",
        path,
        "--output_dir",
        out,
        "--verify",
        ref_path("d2v2_text", ".outputs.safetensors"),
    )
    assert code == 0, err
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(model).__name__ == "Data2Vec2TextForSequenceClassification" and model.config.num_labels == 3
    ref = outputs("d2v2_text")
    head = "classification_heads.sentence_classification_head."

    def roberta_head(features):  # fairseq's RobertaClassificationHead on the first token
        x = torch.tanh(features[:, 0] @ state[head + "dense.weight"].T + state[head + "dense.bias"])
        return x @ state[head + "out_proj.weight"].T + state[head + "out_proj.bias"]

    assert max_diff(model(ref["source"]).logits, roberta_head(ref["features.x"])) < TOLERANCE
    padding = ref["padded.padding_mask_input"]
    padded = model(ref["padded.source"], attention_mask=(~padding).long()).logits
    assert max_diff(padded, roberta_head(ref["padded.features.x"])) < TOLERANCE
    assert "AutoModelForSequenceClassification" in (out / "README.md").read_text()

    code, err = run(capsys, "--checkpoint", path, "--output_dir", tmp_path / "enc", "--export", "encoder")
    assert code == 0, err
    encoder = AutoModel.from_pretrained(tmp_path / "enc").eval()
    assert type(encoder).__name__ == "Data2Vec2TextModel"
    assert max_diff(encoder(ref["source"]).last_hidden_state, ref["features.x"]) < TOLERANCE


def test_unmappable_heads_are_refused_by_name(tmp_path, capsys):
    generator = torch.Generator().manual_seed(3)
    cases = [
        (
            _image_classifier(tmp_path, generator, filename="cls.pt", prediction_mode="CLS_TOKEN")[0],
            "prediction_mode='CLS_TOKEN'",
        ),
        (
            _image_classifier(tmp_path, generator, filename="no_fc_norm.pt", use_fc_norm=False)[0],
            "use_fc_norm=False",
        ),
        (
            _text_classifier(tmp_path, generator, heads=("a", "b"), filename="two.pt")[0],
            "several classification heads (a, b)",
        ),
        (
            _text_classifier(tmp_path, generator, filename="gelu.pt", pooler_activation_fn="gelu")[0],
            "pooler_activation_fn='gelu'",
        ),
    ]
    cfg, student = fine_tuning_student("d2v2_image")
    legacy = {
        "_name": "data2vec_image_classification",
        "pretrained_model_args": {"model": cfg["model"], "task": cfg["task"]},
    }
    state = {f"model.{k}": v for k, v in student.items()}
    cases.append(
        (
            save_fairseq_file(tmp_path / "legacy.pt", legacy, {"_name": "image_classification"}, state),
            "mae_image_classification",
        )
    )
    for path, message in cases:
        code, err = run(capsys, "--checkpoint", path, "--output_dir", tmp_path / "out", "--overwrite")
        assert code == 2 and message in error_line(err), err
        assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------- fairseq comparison


def test_verify_compares_with_fairseq_when_importable(tmp_path, capsys, monkeypatch, ctc_checkpoint):
    """A stand-in ``fairseq`` whose data2vec_multi returns what the real one recorded."""
    ref = outputs("d2v2_audio")
    recorded = {"x": ref["features.x"]}  # what the stand-in returns
    _, _, state = ctc_checkpoint

    class Multi(torch.nn.Module):
        def extract_features(
            self, source, mode=None, padding_mask=None, mask=False, remove_extra_tokens=True
        ):
            assert torch.equal(source, ref["source"]) and not mask
            return {"x": recorded["x"], "padding_mask": None, "layer_results": []}

    class CTC(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w2v_encoder = types.SimpleNamespace(w2v_model=Multi())

        def forward(self, source, padding_mask):
            logits = recorded["x"] @ state["w2v_encoder.proj.weight"].T + state["w2v_encoder.proj.bias"]
            return {"encoder_out": logits.transpose(0, 1)}

    models = []
    utils = types.ModuleType("fairseq.checkpoint_utils")
    utils.load_model_ensemble_and_task = lambda paths: ([models[-1]], None, None)
    package = types.ModuleType("fairseq")
    package.checkpoint_utils = utils
    monkeypatch.setitem(sys.modules, "fairseq", package)
    monkeypatch.setitem(sys.modules, "fairseq.checkpoint_utils", utils)

    reference = ref_path("d2v2_audio", ".outputs.safetensors")
    models.append(Multi())
    code, err = run(
        capsys, "--checkpoint", ref_path("d2v2_audio"), "--output_dir", tmp_path / "a", "--verify", reference
    )
    assert code == 0, err
    assert "fairseq features.x" in (tmp_path / "a" / "README.md").read_text()
    models.append(CTC())
    path, _, _ = ctc_checkpoint
    code, err = run(capsys, "--checkpoint", path, "--output_dir", tmp_path / "b", "--verify", reference)
    assert code == 0, err
    assert "fairseq logits" in (tmp_path / "b" / "README.md").read_text()

    recorded["x"] = ref["features.x"] + 1e-2  # the stand-in now disagrees
    models.append(Multi())
    code, err = run(
        capsys, "--checkpoint", ref_path("d2v2_audio"), "--output_dir", tmp_path / "c", "--verify", reference
    )
    assert code == 2 and "disagrees with fairseq" in error_line(err)
    assert not (tmp_path / "c").exists()
    assert AutoConfig.from_pretrained(tmp_path / "a").model_type == "data2vec2-audio"
