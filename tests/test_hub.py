"""The one Hub upload path, against a local stand-in for the Hub HTTP API that records every commit
(``hub_stand_in.py``): regular and LFS files, a refused token, transient 5xx answers."""

from __future__ import annotations

import hashlib
import time

import pytest
import torch
from data2vec_hf import hub as hub_module
from data2vec_hf.hub import HubPushError, files_to_push, push_folder_to_hub
from hub_stand_in import HubStandIn
from safetensors.torch import load, save_file

DUMMY_TOKEN = "hf_dummy_token_for_the_local_stand_in"


@pytest.fixture
def hub(monkeypatch):
    """A running stand-in; huggingface_hub is pointed at it (``HF_ENDPOINT``) with offline mode lifted."""
    from huggingface_hub import constants

    with HubStandIn() as stand_in:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
        # with hf_xet installed huggingface_hub sends LFS files to Xet storage, which the stand-in does
        # not implement; without it, the legacy LFS batch protocol
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "ENDPOINT", stand_in.url)
        monkeypatch.setenv("HF_ENDPOINT", stand_in.url)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        # transformers keeps one HfApi, whose endpoint is fixed when an earlier test first asks for it
        from transformers.utils import hub as transformers_hub

        if hasattr(transformers_hub, "_hf_api"):
            monkeypatch.setattr(transformers_hub, "_hf_api", None)
        yield stand_in


CARD = "---\nlibrary_name: transformers\ntags:\n- data2vec\n---\n\n# tiny\n"


def make_output_folder(root):
    """What a fine-tuning run leaves behind: inference files plus training state that must stay local."""
    weights = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    save_file(weights, root / "model.safetensors")
    (root / "config.json").write_text('{"model_type": "data2vec-text"}')
    (root / "tokenizer.json").write_text("{}")
    (root / "README.md").write_text(CARD)
    (root / "all_results.json").write_text('{"eval_accuracy": 1.0}')
    (root / "training_args.bin").write_bytes(b"pickle")
    (root / "pytorch_model.bin").write_bytes(b"pickle")
    (root / "checkpoint-2").mkdir()
    (root / "checkpoint-2" / "model.safetensors").write_bytes(b"x")
    (root / "checkpoint-2" / "optimizer.pt").write_bytes(b"x")
    (root / "checkpoints" / "step-3").mkdir(parents=True)
    (root / "checkpoints" / "step-3" / "model.safetensors").write_bytes(b"x")
    (root / "runs").mkdir()
    (root / "runs" / "events.out").write_bytes(b"x")
    (root / ".hidden").write_text("x")
    (root / "sub").mkdir()
    (root / "sub" / ".cache").write_text("x")
    (root / "sub" / "preprocessor_config.json").write_text("{}")
    return weights


EXPECTED = {
    "README.md",
    "all_results.json",
    "config.json",
    "model.safetensors",
    "sub/preprocessor_config.json",
    "tokenizer.json",
}


def test_files_to_push_keeps_only_inference_artefacts(tmp_path):
    make_output_folder(tmp_path)
    assert set(files_to_push(tmp_path)) == EXPECTED


def test_push_sends_exactly_the_expected_files_in_one_commit(hub, tmp_path):
    weights = make_output_folder(tmp_path)
    info = push_folder_to_hub(tmp_path, "someone/tiny-model", token=DUMMY_TOKEN, private=True)

    assert list(hub.repos) == ["someone/tiny-model"]
    assert hub.repos["someone/tiny-model"] == {"type": "model", "visibility": "private"}
    assert len(hub.commits) == 1
    commit = hub.commits[0]
    assert commit["repo_id"] == "someone/tiny-model" and commit["revision"] == "main"
    assert commit["summary"] == "Upload with data2vec-hf"
    assert set(commit["files"]) == EXPECTED and commit["lfs_files"] == []
    for name in EXPECTED:
        assert commit["files"][name] == (tmp_path / name).read_bytes(), name
    uploaded = load(commit["files"]["model.safetensors"])
    assert torch.equal(uploaded["w"], weights["w"])
    assert info.oid in info.commit_url and info.commit_url.startswith(hub.url)
    assert hub.unknown == [] and hub.authorization == {f"Bearer {DUMMY_TOKEN}"}


def test_second_push_reuses_the_repository_and_commits_what_changed(hub, tmp_path):
    make_output_folder(tmp_path)
    push_folder_to_hub(tmp_path, "tiny-model", token=DUMMY_TOKEN, commit_message="first")
    (tmp_path / "all_results.json").write_text('{"eval_accuracy": 0.5}')
    push_folder_to_hub(tmp_path, "tiny-model", token=DUMMY_TOKEN, commit_message="second")
    assert [c["summary"] for c in hub.commits] == ["first", "second"]
    assert list(hub.repos) == ["user/tiny-model"]
    assert {c["repo_id"] for c in hub.commits} == {"user/tiny-model"}
    # the Hub reports what it holds (preupload oids): unchanged files are left out of the second commit
    assert set(hub.commits[1]["files"]) == {"all_results.json"}


def test_pickled_weights_only_are_refused_before_any_request(hub, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="safetensors"):
        push_folder_to_hub(tmp_path, "someone/tiny-model", token=DUMMY_TOKEN)
    assert hub.requests == []


def test_invalid_card_metadata_is_rejected(hub, tmp_path):
    make_output_folder(tmp_path)
    (tmp_path / "README.md").write_text("---\ntags: [unclosed\n---\n")
    with pytest.raises(ValueError, match="Invalid metadata"):
        push_folder_to_hub(tmp_path, "someone/tiny-model", token=DUMMY_TOKEN)
    assert hub.commits == []


# -- LFS, a refused token, transient faults ----------------------------------------------------------


@pytest.fixture
def waits(monkeypatch):
    """The waits of every retry (ours and huggingface_hub's), recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(time, "sleep", recorded.append)
    return recorded


def test_large_files_go_through_lfs_with_their_bytes_intact(hub, tmp_path):
    make_output_folder(tmp_path)
    weights = (tmp_path / "model.safetensors").read_bytes()
    hub.lfs_threshold = len(weights) - 1  # only the weights are large enough
    push_folder_to_hub(tmp_path, "someone/tiny-model", token=DUMMY_TOKEN)

    (commit,) = hub.commits
    oid = hashlib.sha256(weights).hexdigest()
    assert commit["lfs_files"] == [
        {"path": "model.safetensors", "algo": "sha256", "oid": oid, "size": len(weights)}
    ]
    assert hub.lfs_objects == {oid: weights}
    assert set(commit["files"]) == EXPECTED - {"model.safetensors"}
    assert hub.commit_contents(commit) == {name: (tmp_path / name).read_bytes() for name in EXPECTED}
    lfs_calls = [r for r in hub.requests if "lfs" in r[1]]
    assert lfs_calls == [
        ("POST", "/someone/tiny-model.git/info/lfs/objects/batch"),
        ("PUT", f"/lfs-storage/{oid}"),
        ("POST", "/someone/tiny-model.git/info/lfs/objects/verify"),
    ]
    assert hub.unknown == [] and hub.authorization == {f"Bearer {DUMMY_TOKEN}"}


def test_a_refused_token_is_a_one_line_error_naming_the_repository(hub, tmp_path, waits):
    make_output_folder(tmp_path)
    hub.refuse_tokens = True
    with pytest.raises(HubPushError) as caught:
        push_folder_to_hub(tmp_path, "someone/tiny-model", token="hf_revoked")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("the Hub refused the token for someone/tiny-model (401 Unauthorized: ")
    assert "hf auth login" in message and "--hub_token" in message
    assert hub.commits == [] and waits == []  # a 401 is not retried
    assert {status for _, _, status in hub.failed} == {401}


@pytest.mark.parametrize("kind", ["create_repo", "validate_yaml", "commit"])
def test_the_calls_huggingface_hub_sends_once_are_retried_with_backoff(hub, tmp_path, waits, kind):
    make_output_folder(tmp_path)
    hub.fail_first = {kind: 2}
    info = push_folder_to_hub(tmp_path, "someone/tiny-model", token=DUMMY_TOKEN)
    assert len(hub.commits) == 1 and set(hub.commits[0]["files"]) == EXPECTED
    assert info.oid == hub.heads["someone/tiny-model"]
    assert [status for _, _, status in hub.failed] == [503, 503]
    assert waits == [hub_module.RETRY_WAIT_SECONDS, 2 * hub_module.RETRY_WAIT_SECONDS]


def test_huggingface_hub_retries_preupload_and_the_lfs_transfer_itself(hub, tmp_path, waits, monkeypatch):
    """Our retries off: huggingface_hub's http_backoff alone gets these through (one 1 s wait each), so
    push_folder_to_hub adds none of its own there."""
    monkeypatch.setattr(hub_module, "ATTEMPTS", 1)
    make_output_folder(tmp_path)
    weights = (tmp_path / "model.safetensors").read_bytes()
    hub.lfs_threshold = len(weights) - 1
    hub.fail_first = {"preupload": 1, "lfs_batch": 1, "lfs_upload": 1, "lfs_verify": 1}
    push_folder_to_hub(tmp_path, "someone/tiny-model", token=DUMMY_TOKEN)
    (commit,) = hub.commits
    assert hub.commit_contents(commit) == {name: (tmp_path / name).read_bytes() for name in EXPECTED}
    assert len(hub.failed) == 4 and waits == [1, 1, 1, 1]


def test_a_hub_that_stays_unavailable_is_a_clear_error(hub, tmp_path, waits):
    make_output_folder(tmp_path)
    hub.fail_first = {"commit": 100}
    with pytest.raises(HubPushError) as caught:
        push_folder_to_hub(tmp_path, "someone/tiny-model", token=DUMMY_TOKEN)
    assert str(caught.value) == (
        f"committing to someone/tiny-model failed {hub_module.ATTEMPTS} times in a row (last answer: 503 "
        "Service Unavailable: the stand-in is unavailable for a moment); try again later"
    )
    assert hub.commits == [] and len(hub.failed) == hub_module.ATTEMPTS
    assert len(waits) == hub_module.ATTEMPTS - 1  # bounded: no wait after the last try


def test_a_commit_applied_despite_a_5xx_answer_is_not_repeated(hub, tmp_path, waits):
    """A proxy times out while the Hub finishes the commit: the retry asks the Hub what it holds, finds
    every file there and makes no second commit."""
    make_output_folder(tmp_path)
    weights = (tmp_path / "model.safetensors").read_bytes()
    hub.lfs_threshold = len(weights) - 1
    hub.lose_commit_responses = 1
    info = push_folder_to_hub(tmp_path, "someone/tiny-model", token=DUMMY_TOKEN)
    assert len(hub.commits) == 1 and info.oid == hub.heads["someone/tiny-model"]
    oid = hashlib.sha256(weights).hexdigest()
    assert [r for r in hub.requests if r[0] == "PUT"] == [("PUT", f"/lfs-storage/{oid}")]  # not sent again


def test_a_hub_that_cannot_be_reached_is_a_clear_error(hub, tmp_path, waits):
    import socket

    make_output_folder(tmp_path)
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        address = f"http://127.0.0.1:{closed.getsockname()[1]}"
    with pytest.raises(HubPushError) as caught:
        push_folder_to_hub(tmp_path, "someone/tiny-model", token=DUMMY_TOKEN, endpoint=address)
    message = str(caught.value)
    assert message.startswith("cannot reach the Hub to push someone/tiny-model (") and "\n" not in message


def test_a_forbidden_namespace_is_a_clear_error(hub, tmp_path, waits, monkeypatch):
    make_output_folder(tmp_path)
    hub.forbid = True
    with pytest.raises(HubPushError, match=r"^the token may not write to someone/tiny-model \(403"):
        push_folder_to_hub(tmp_path, "someone/tiny-model", token=DUMMY_TOKEN)
    assert hub.commits == [] and waits == []
