"""What loading a ``*ForPreTraining`` model says: continuing pretraining from an exported encoder (the
student only: a converted fairseq checkpoint, a backbone this package or transformers saved) copies the
EMA teacher from the loaded student. transformers' load report must not list the teacher (nor the
pretraining head) as "MISSING ... newly initialized"; one line of ours says what was copied and what was
newly initialised. Tensors a checkpoint really lacks are still reported."""

from __future__ import annotations

import logging
import os
import re

import data2vec_hf
import pytest
import torch
from conftest import MODALITIES
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_data2vec2 import audio_config, text_config, vision_config

V2_CONFIGS = {  # the tiny configs of the 2.0 model tests
    "audio": lambda: audio_config(mask_feature_length=8),
    "vision": vision_config,
    "text": text_config,
}
V2_CLASSES = {
    "audio": data2vec_hf.Data2Vec2AudioForPreTraining,
    "vision": data2vec_hf.Data2Vec2VisionForPreTraining,
    "text": data2vec_hf.Data2Vec2TextForPreTraining,
}
CASES = [f"v2-{m}" for m in sorted(V2_CLASSES)] + [f"v1-{m}" for m in sorted(MODALITIES)]
# the pretraining head, all that an encoder export lacks
HEADS = {
    "v2-audio": "decoder",
    "v2-text": "decoder",
    "v2-vision": "decoder",
    "v1-audio": "final_proj",
    "v1-text": "regression_head",
    "v1-vision": "final_proj",
}
COPIED = "the EMA teacher is a copy of it (the checkpoint has no teacher)"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def build(case):
    """A tiny ``*ForPreTraining`` model and its config."""
    version, modality = case.split("-")
    if version == "v2":
        model_cls, config = V2_CLASSES[modality], V2_CONFIGS[modality]()
    else:
        model_cls, make_config = MODALITIES[modality][:2]
        config = make_config()
    torch.manual_seed(0)
    return model_cls(config), config


@pytest.fixture
def logs(caplog):
    """Records of the ``transformers`` and ``data2vec_hf`` loggers at INFO. transformers' library logger
    does not propagate to the root logger (outside its CI), so caplog's handler is attached to it too."""
    library = logging.getLogger("transformers")
    caplog.set_level(logging.INFO, logger="transformers")
    caplog.set_level(logging.INFO, logger="data2vec_hf")
    attach = not library.propagate
    if attach:
        library.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        if attach:
            library.removeHandler(caplog.handler)


def transformers_text(caplog, folder) -> str:
    """What transformers logged (its load report is a WARNING with a table), the folder's path elided."""
    text = "\n".join(
        ANSI.sub("", r.getMessage()) for r in caplog.records if r.name.startswith("transformers")
    )
    return text.replace(str(folder), "<folder>")


def our_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("data2vec_hf")]


def checkpoint_keys(folder) -> set[str]:
    with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
        return set(f.keys())


def drop_tensors(folder, keys) -> None:
    """Remove ``keys`` from the folder's ``model.safetensors``."""
    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    for key in keys:
        del tensors[key]
    save_file(tensors, path, metadata={"format": "pt"})


def save_encoder(case, folder, drop=()):
    """Save the student backbone only (``model.<base_model_prefix>.save_pretrained``), less ``drop``."""
    model, config = build(case)
    getattr(model, model.base_model_prefix).save_pretrained(folder)
    drop_tensors(folder, drop)
    return model, config


def expected_newly_initialised(model, folder) -> set[str]:
    """Every tensor of the model that the encoder folder does not hold, the teacher's excepted."""
    prefix = model.base_model_prefix + "."
    loaded = {prefix + key for key in checkpoint_keys(folder)}
    return {k for k in model.state_dict() if not k.startswith("teacher.") and k not in loaded}


def reported_newly_initialised(message: str) -> dict[str, int]:
    """``{name: number of tensors}`` from our line's "newly initialised: decoder (6 tensors), x.y" part."""
    listed = message.split("newly initialised: ", 1)[1]
    if listed == "nothing":
        return {}
    names = {}
    for item in listed.split(", "):
        match = re.fullmatch(r"(\S+) \((\d+) tensors?\)", item)
        names[match[1] if match else item] = int(match[2]) if match else 1
    return names


def grouped(model, keys) -> dict[str, int]:
    """Expected report: pretraining-head modules with their tensor counts, student tensors by full name."""
    prefix = model.base_model_prefix + "."
    names = {}
    for key in keys:
        name = key if key.startswith(prefix) else key.split(".", 1)[0]
        names[name] = names.get(name, 0) + 1
    return names


def assert_teacher_is_student(model):
    student = dict(model.teacher_source().named_parameters())
    teacher = dict(model.teacher.model.named_parameters())
    assert teacher
    for name, tensor in teacher.items():
        assert torch.equal(tensor, student[name].to(tensor.dtype)), name


def assert_student_loaded(model, folder, skip=()):
    saved = load_file(os.path.join(folder, "model.safetensors"))
    state = model.state_dict()
    for key, tensor in saved.items():
        if key not in skip:
            assert torch.equal(state[f"{model.base_model_prefix}.{key}"], tensor), key


def load(case, folder, config, logs):
    model_cls = type(build(case)[0])
    logs.clear()
    return model_cls.from_pretrained(folder, config=config, output_loading_info=True)


@pytest.mark.parametrize("case", CASES)
def test_encoder_checkpoint_copies_teacher_and_says_so(case, tmp_path, logs):
    reference, config = save_encoder(case, tmp_path)
    model, info = load(case, tmp_path, config, logs)

    assert_student_loaded(model, tmp_path)
    assert_teacher_is_student(model)

    # transformers' report: nothing to report (the teacher was copied, the head is ours to name)
    report = transformers_text(logs, tmp_path)
    assert "teacher" not in report
    assert "MISSING" not in report and "newly initialized" not in report
    assert not any(k.startswith("teacher.") for k in info["missing_keys"])
    newly = expected_newly_initialised(reference, tmp_path)
    assert newly and info["missing_keys"] == newly

    # our own line: one INFO record naming exactly the newly initialised modules
    lines = [r for r in our_records(logs) if COPIED in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    message = lines[0].getMessage()
    assert str(tmp_path) in message and "teacher (" not in message.split("newly initialised: ")[1]
    assert reported_newly_initialised(message) == grouped(reference, newly)
    assert set(grouped(reference, newly)) == {HEADS[case]}


@pytest.mark.parametrize("case", CASES)
def test_student_tensor_missing_from_encoder_is_still_reported(case, tmp_path, logs):
    folder = tmp_path / "encoder"
    build_model, config = build(case)
    getattr(build_model, build_model.base_model_prefix).save_pretrained(folder)
    dropped = min(k for k in checkpoint_keys(folder) if not re.search(r"\d", k))
    drop_tensors(folder, [dropped])
    full_name = f"{build_model.base_model_prefix}.{dropped}"

    model, info = load(case, folder, config, logs)

    report = transformers_text(logs, folder)
    row = [line for line in report.splitlines() if line.startswith(full_name + " ")]
    assert len(row) == 1 and "MISSING" in row[0], report
    assert "teacher" not in report
    assert full_name in info["missing_keys"]
    assert not any(k.startswith("teacher.") for k in info["missing_keys"])
    assert_student_loaded(model, folder, skip={dropped})
    assert_teacher_is_student(model)

    (line,) = [r.getMessage() for r in our_records(logs) if COPIED in r.getMessage()]
    newly = expected_newly_initialised(build_model, folder)
    assert full_name in newly
    assert reported_newly_initialised(line) == grouped(build_model, newly)


@pytest.mark.parametrize(
    ("case", "mask_key"),
    [("v1-audio", "masked_spec_embed"), ("v1-vision", "embeddings.mask_token")],
)
def test_encoder_without_mask_embedding_names_it_as_newly_initialised(case, mask_key, tmp_path, logs):
    """transformers' own encoders may lack the mask embedding (no SpecAugment / use_mask_token=False):
    expected when continuing pretraining, so it is named in our line, not in the MISSING table."""
    reference, config = save_encoder(case, tmp_path, drop=[mask_key])
    model, info = load(case, tmp_path, config, logs)

    report = transformers_text(logs, tmp_path)
    assert "MISSING" not in report and "teacher" not in report
    full_name = f"{reference.base_model_prefix}.{mask_key}"
    (line,) = [r.getMessage() for r in our_records(logs) if COPIED in r.getMessage()]
    names = reported_newly_initialised(line)
    assert full_name in names
    assert names == grouped(reference, expected_newly_initialised(reference, tmp_path))
    assert info["missing_keys"] == expected_newly_initialised(reference, tmp_path)
    assert_teacher_is_student(model)


@pytest.mark.parametrize("case", ["v2-audio", "v1-text"])
def test_full_checkpoint_reports_its_missing_tensors(case, tmp_path, logs):
    """A full pretraining checkpoint keeps its teacher; any tensor it lacks, student or teacher, is
    reported as MISSING. A partly missing teacher is reset to a copy of the student, with a warning."""
    model, config = build(case)
    with torch.no_grad():
        for tensor in model.teacher.parameters():
            tensor.add_(0.5)  # a teacher that has drifted from the student
    model.save_pretrained(tmp_path)
    saved = load_file(os.path.join(tmp_path, "model.safetensors"))
    prefix = model.base_model_prefix + "."
    student_key = min(k for k in saved if k.startswith(prefix) and not re.search(r"\d", k[len(prefix) :]))
    teacher_key = min(k for k in saved if k.startswith("teacher."))

    # a student tensor absent: reported; the teacher is the checkpoint's, not a copy
    drop_tensors(tmp_path, [student_key])
    loaded, info = load(case, tmp_path, config, logs)
    report = transformers_text(logs, tmp_path)
    assert any(line.startswith(student_key + " ") and "MISSING" in line for line in report.splitlines())
    assert info["missing_keys"] == {student_key}
    assert not our_records(logs)
    for name, tensor in loaded.teacher.state_dict().items():
        assert torch.equal(tensor, saved[f"teacher.{name}"]), name

    # a teacher tensor absent as well: both reported, and our warning says the teacher was reset
    drop_tensors(tmp_path, [teacher_key])
    loaded, info = load(case, tmp_path, config, logs)
    report = transformers_text(logs, tmp_path)
    for key in (student_key, teacher_key):
        assert any(line.startswith(key + " ") and "MISSING" in line for line in report.splitlines()), key
    assert info["missing_keys"] == {student_key, teacher_key}
    (warning,) = [r for r in our_records(logs) if r.levelno == logging.WARNING]
    assert "lacks 1 of the teacher's" in warning.getMessage() and "reset to a copy" in warning.getMessage()
    assert not any(COPIED in r.getMessage() for r in our_records(logs))
    assert_teacher_is_student(loaded)
