"""The converter CLI on the fairseq reference checkpoints, and its refusals.

Every v1 checkpoint of ``tests/fixtures/fairseq`` goes through ``data2vec-convert``; the written
folder is loaded with ``AutoModel.from_pretrained`` and compared with fairseq's recorded outputs (the
data2vec 2.0 files: ``test_conversion_v2.py``). Unsafe, broken, foreign and incomplete files must fail
with one clear error and leave nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REFERENCE_DIR
from data2vec_hf.conversion.cli import main
from safetensors.torch import load_file, save_file
from test_hub import HubStandIn
from transformers import AutoModel, AutoModelForPreTraining

TOLERANCE = 1e-4
V1 = ("d2v1_audio", "d2v1_text")


def ref_path(name: str, suffix: str = ".pt") -> Path:
    path = Path(REFERENCE_DIR) / f"{name}{suffix}"
    if not path.exists():
        pytest.fail(f"reference data missing: {path} (tests/fixtures/fairseq is part of the repository)")
    return path


def max_diff(a, b, where=None):
    assert a.shape == b.shape, (a.shape, b.shape)
    if where is not None:
        a, b = a[where], b[where]
    return (a.float() - b.float()).abs().max().item()


def convert(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def only_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Both v1 reference checkpoints converted once through the CLI (with --verify)."""
    root = tmp_path_factory.mktemp("converted")
    for name in V1:
        code = main(
            [
                "--checkpoint",
                str(ref_path(name)),
                "--output_dir",
                str(root / name),
                "--verify",
                str(ref_path(name, ".outputs.safetensors")),
                "--quiet",
            ]
        )
        assert code == 0
    return root


# ------------------------------------------------------------------------------------- reference files


@torch.no_grad()
def test_audio_reference_converts_and_matches_fairseq(converted):
    ref = load_file(ref_path("d2v1_audio", ".outputs.safetensors"))
    model = AutoModel.from_pretrained(converted / "d2v1_audio").eval()
    assert type(model).__name__ == "Data2VecAudioModel"
    out = model(ref["source"], output_hidden_states=True)
    assert max_diff(out.last_hidden_state, ref["features.x"]) < TOLERANCE
    for i in range(3):
        assert max_diff(out.hidden_states[i + 1], ref[f"features.layer_results.{i}.x"]) < TOLERANCE
    padded = model(ref["padded.source"], attention_mask=(~ref["padded.padding_mask_input"]).long())
    real = ~ref["padded.features.padding_mask_frames"]
    assert not real.all()
    assert max_diff(padded.last_hidden_state, ref["padded.features.x"], real) < TOLERANCE


@torch.no_grad()
def test_text_reference_converts_and_matches_fairseq(converted):
    ref = load_file(ref_path("d2v1_text", ".outputs.safetensors"))
    model = AutoModel.from_pretrained(converted / "d2v1_text").eval()
    assert type(model).__name__ == "Data2VecTextModel"
    out = model(ref["src_tokens"], output_hidden_states=True)
    assert max_diff(out.last_hidden_state, ref["features.x"]) < TOLERANCE
    for i in range(4):
        assert max_diff(out.hidden_states[i], ref[f"features.inner_states.{i}"]) < TOLERANCE
    tokens = ref["padded.src_tokens"]
    real = tokens != 1
    padded = model(tokens, attention_mask=real.long()).last_hidden_state
    assert max_diff(padded, ref["padded.features.x"], real) < TOLERANCE


def test_output_folder_contents_and_model_card(converted):
    manifest = json.loads((Path(REFERENCE_DIR) / "manifest.json").read_text())
    for name, files in (
        ("d2v1_audio", {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"}),
        ("d2v1_text", {"config.json", "model.safetensors", "README.md"}),
    ):
        folder = converted / name
        assert {p.name for p in folder.iterdir()} == files
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == name.replace("d2v1_", "data2vec-")
        card = (folder / "README.md").read_text()
        sha = manifest["models"][name]["sha256"][f"{name}.pt"]
        assert sha == hashlib.sha256(ref_path(name).read_bytes()).hexdigest()
        assert sha in card and f"`{name}.pt`" in card
        assert "features.x" in card  # the verification table
    text_card = (converted / "d2v1_text" / "README.md").read_text()
    assert "no tokenizer written" in text_card
    extractor = json.loads((converted / "d2v1_audio" / "preprocessor_config.json").read_text())
    assert extractor["sampling_rate"] == 16000 and extractor["do_normalize"] is False  # task.normalize


def test_plain_transformers_loads_the_folders(converted):
    """data2vec 1.0 exports need nothing but transformers."""
    script = (
        "import sys\nfrom transformers import AutoModel\n"
        "for folder in sys.argv[1:]:\n"
        "    print(type(AutoModel.from_pretrained(folder)).__name__)\n"
        "assert not any(m.startswith('data2vec_hf') for m in sys.modules)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script, *(str(converted / n) for n in V1)],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["Data2VecAudioModel", "Data2VecTextModel"]


@pytest.mark.parametrize("name", V1)
@torch.no_grad()
def test_pretraining_export_reproduces_fairseq_targets(name, tmp_path, capsys):
    out = tmp_path / "pre"
    reference = ref_path(name, ".outputs.safetensors")
    code, err = convert(
        capsys,
        "--checkpoint",
        ref_path(name),
        "--output_dir",
        out,
        "--export",
        "pretraining",
        "--verify",
        reference,
    )
    assert code == 0, err
    assert "pretrain.targets_y_masked" in err and "pretrain.pred_masked" in err  # compared by --verify
    model = AutoModelForPreTraining.from_pretrained(out).eval()
    ref = load_file(reference)
    if name == "d2v1_audio":
        result = model(ref["source"], mask_time_indices=ref["pretrain.mask"])
    else:
        mask = ref["pretrain.mask"]
        labels = torch.where(
            mask, ref["pretrain.target_tokens"], torch.full_like(mask, -100, dtype=torch.long)
        )
        result = model(ref["pretrain.src_tokens_masked"], labels=labels)
    assert max_diff(result.target, ref["pretrain.targets_y_masked"]) < TOLERANCE
    assert max_diff(result.prediction, ref["pretrain.pred_masked"]) < TOLERANCE
    assert "import data2vec_hf" in (out / "README.md").read_text()


# ---------------------------------------------------------------------------------------------- refusals


def _malicious_checkpoint(path: Path, sentinel: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    torch.save(
        {"model": {"w": torch.zeros(2)}, "cfg": {"model": {"_name": "data2vec_audio"}}, "x": Payload()}, path
    )


def test_malicious_pickle_is_refused_without_running_it(tmp_path, capsys):
    checkpoint, sentinel, out = tmp_path / "evil.pt", tmp_path / "SENTINEL", tmp_path / "out"
    _malicious_checkpoint(checkpoint, sentinel)
    code, err = convert(capsys, "--checkpoint", checkpoint, "--output_dir", out)
    assert code == 2
    line = only_error_line(err)
    assert "posix.system" in line or "os.system" in line
    assert "refusing" in line
    assert not sentinel.exists() and not out.exists()


def test_malicious_pickle_through_the_module_entry_point(tmp_path):
    checkpoint, sentinel, out = tmp_path / "evil.pt", tmp_path / "SENTINEL", tmp_path / "out"
    _malicious_checkpoint(checkpoint, sentinel)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "data2vec_hf.conversion",
            "--checkpoint",
            str(checkpoint),
            "--output_dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2
    assert "system" in only_error_line(result.stderr)
    assert not sentinel.exists() and not out.exists()


def test_truncated_checkpoint(tmp_path, capsys):
    data = ref_path("d2v1_audio").read_bytes()
    for cut, name in ((len(data) // 2, "half.pt"), (len(data) - 100, "tail.pt"), (60, "head.pt")):
        broken = tmp_path / name
        broken.write_bytes(data[:cut])
        out = tmp_path / f"out-{name}"
        code, err = convert(capsys, "--checkpoint", broken, "--output_dir", out)
        assert code == 2
        assert "truncated" in only_error_line(err)
        assert not out.exists()


def test_checkpoint_of_an_unrelated_model(tmp_path, capsys):
    wav2vec = tmp_path / "wav2vec2.pt"
    torch.save({"cfg": {"model": {"_name": "wav2vec2"}, "task": {}}, "model": {"w": torch.zeros(1)}}, wav2vec)
    code, err = convert(capsys, "--checkpoint", wav2vec, "--output_dir", tmp_path / "a")
    assert code == 2
    line = only_error_line(err)
    assert "not a data2vec checkpoint" in line and "'wav2vec2'" in line

    resnet = tmp_path / "resnet.pt"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(2, 3, 3, 3)}}, resnet)
    code, err = convert(capsys, "--checkpoint", resnet, "--output_dir", tmp_path / "b")
    assert code == 2
    assert "not a data2vec checkpoint" in only_error_line(err)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _edited_reference(tmp_path: Path, edit) -> Path:
    checkpoint = torch.load(ref_path("d2v1_audio"), weights_only=True)
    edit(checkpoint["model"])
    path = tmp_path / "edited.pt"
    torch.save(checkpoint, path)
    return path


def test_checkpoint_missing_a_tensor(tmp_path, capsys):
    path = _edited_reference(tmp_path, lambda state: state.pop("encoder.layers.1.fc1.weight"))
    out = tmp_path / "out"
    code, err = convert(capsys, "--checkpoint", path, "--output_dir", out)
    assert code == 2
    line = only_error_line(err)
    assert (
        "not filled by the checkpoint" in line
        and "encoder.layers.1.feed_forward.intermediate_dense.weight" in line
    )
    assert not out.exists()


def test_unknown_or_misshapen_tensors_are_listed(tmp_path, capsys):
    def edit(state):
        state["encoder.layers.0.fc3.weight"] = torch.zeros(2)
        state["post_extract_proj.weight"] = torch.zeros(3, 3)

    code, err = convert(
        capsys, "--checkpoint", _edited_reference(tmp_path, edit), "--output_dir", tmp_path / "out"
    )
    assert code == 2
    line = only_error_line(err)
    assert "source tensors with no mapping: encoder.layers.0.fc3.weight" in line
    assert "shape mismatches: post_extract_proj.weight (3, 3)" in line


def test_released_key_aliases_are_accepted(tmp_path, capsys):
    """Released audio files wrap the regression head in a Sequential (final_proj.0.*)."""

    def edit(state):
        state["final_proj.0.weight"] = state.pop("final_proj.weight")
        state["final_proj.0.bias"] = state.pop("final_proj.bias")

    out = tmp_path / "out"
    code, err = convert(
        capsys,
        "--checkpoint",
        _edited_reference(tmp_path, edit),
        "--output_dir",
        out,
        "--export",
        "pretraining",
    )
    assert code == 0, err
    head = load_file(out / "model.safetensors")["final_proj.weight"]
    assert torch.equal(
        head, torch.load(ref_path("d2v1_audio"), weights_only=True)["model"]["final_proj.weight"]
    )


def test_verification_mismatch_writes_nothing(tmp_path, capsys):
    ref = load_file(ref_path("d2v1_audio", ".outputs.safetensors"))
    ref["features.x"] = ref["features.x"] + 1e-3
    wrong = tmp_path / "wrong.safetensors"
    save_file(ref, wrong)
    out = tmp_path / "out"
    code, err = convert(
        capsys, "--checkpoint", ref_path("d2v1_audio"), "--output_dir", out, "--verify", wrong
    )
    assert code == 2
    line = only_error_line(err)
    assert "disagrees with reference" in line and "features.x" in line
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary folder left


def test_reference_without_reproducible_outputs(tmp_path, capsys):
    useless = tmp_path / "useless.safetensors"
    save_file({"something.else": torch.zeros(2)}, useless)
    code, err = convert(
        capsys, "--checkpoint", ref_path("d2v1_text"), "--output_dir", tmp_path / "o", "--verify", useless
    )
    assert code == 2 and "no outputs this text model can reproduce" in only_error_line(err)


def test_output_dir_is_protected_and_replaced_atomically(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, err = convert(capsys, "--checkpoint", ref_path("d2v1_text"), "--output_dir", out)
    assert code == 2 and "--overwrite" in only_error_line(err)
    # a failing conversion with --overwrite leaves the old folder as it was
    wrong = ref_path("d2v1_audio", ".outputs.safetensors")  # no text inputs: verification fails
    code, _ = convert(
        capsys, "--checkpoint", ref_path("d2v1_text"), "--output_dir", out, "--overwrite", "--verify", wrong
    )
    assert code == 2 and (out / "keep.txt").read_text() == "precious"
    code, err = convert(capsys, "--checkpoint", ref_path("d2v1_text"), "--output_dir", out, "--overwrite")
    assert code == 0, err
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_missing_files_are_user_errors(tmp_path, capsys):
    code, err = convert(capsys, "--checkpoint", tmp_path / "nope.pt", "--output_dir", tmp_path / "o")
    assert code == 2 and "does not exist" in only_error_line(err)
    code, err = convert(
        capsys,
        "--checkpoint",
        ref_path("d2v1_text"),
        "--output_dir",
        tmp_path / "o",
        "--dict",
        tmp_path / "dict.txt",
    )
    assert code == 2 and "--dict" in only_error_line(err)


def test_checkpoint_inside_the_output_dir_is_never_replaced(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    inside = out / "d2v1_text.pt"
    inside.write_bytes(ref_path("d2v1_text").read_bytes())
    code, err = convert(capsys, "--checkpoint", inside, "--output_dir", out, "--overwrite")
    assert code == 2 and "lies inside --output_dir" in only_error_line(err)
    assert inside.exists()


@pytest.fixture
def hub(monkeypatch):
    """The local stand-in for the Hub API of ``test_hub.py``, with huggingface_hub pointed at it."""
    from huggingface_hub import constants

    with HubStandIn() as stand_in:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", stand_in.url)
        monkeypatch.setenv("HF_ENDPOINT", stand_in.url)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        yield stand_in


def test_push_to_hub_uploads_the_folder_in_one_commit(hub, tmp_path, capsys):
    out = tmp_path / "d2v-text"
    code, err = convert(
        capsys,
        "--checkpoint",
        ref_path("d2v1_text"),
        "--output_dir",
        out,
        "--push_to_hub",
        "--hub_model_id",
        "me/d2v-text",
    )
    assert code == 0, err
    assert len(hub.commits) == 1
    commit = hub.commits[0]
    assert commit["repo_id"] == "me/d2v-text"
    files = set(commit["files"]) | set(commit.get("lfs_files") or [])
    assert {"config.json", "model.safetensors", "README.md"} <= files
    card = commit["files"]["README.md"].decode()
    assert hashlib.sha256(ref_path("d2v1_text").read_bytes()).hexdigest() in card
    assert 'AutoModel.from_pretrained("me/d2v-text")' in card


def test_config_missing_a_setting(tmp_path, capsys):
    checkpoint = torch.load(ref_path("d2v1_audio"), weights_only=True)
    del checkpoint["cfg"]["model"]["conv_feature_layers"]
    path = tmp_path / "no_conv.pt"
    torch.save(checkpoint, path)
    code, err = convert(capsys, "--checkpoint", path, "--output_dir", tmp_path / "out")
    assert code == 2 and "lacks 'conv_feature_layers'" in only_error_line(err)
    assert not (tmp_path / "out").exists()
