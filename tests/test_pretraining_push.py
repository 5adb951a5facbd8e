"""``--push_to_hub`` of the pretraining scripts, run for real (in this process) against the local Hub
stand-in of ``hub_stand_in.py``: the upload of a finished run, a refused token, a Hub failing for a moment."""

from __future__ import annotations

import hashlib
import json

import pytest
from data2vec_hf import hub as hub_module
from data2vec_hf.hub import files_to_push
from data2vec_hf.pretraining import pretrain_text
from test_faults import train
from test_hub import DUMMY_TOKEN, hub  # noqa: F401  (the stand-in fixture)
from test_pretraining_scripts import TINY_TEXT

TEXT = ("--config_overrides", TINY_TEXT, "--max_seq_length", "64", "--bpe_vocab_size", "300")
PUSH = ("--push_to_hub", "--hub_model_id", "user/tiny", "--hub_token", DUMMY_TOKEN)
# below the tiny model's safetensors files (about 120 and 210 KB), above its tokenizer and configs
LFS_THRESHOLD = 50_000


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("\n".join(f"the quick brown fox number {i} jumps over the lazy dog" for i in range(40)))
    return path


def pretrain_and_push(tmp_path, corpus) -> int:
    return train(pretrain_text.SPEC, tmp_path / "out", "--train_file", str(corpus), *TEXT, *PUSH, steps=1)


def assert_run_complete(out) -> None:
    """The exported model, the checkpoint of the last update and the summary are all on disk."""
    assert (out / "model.safetensors").stat().st_size > LFS_THRESHOLD
    assert (out / "config.json").is_file() and (out / "README.md").is_file()
    assert (out / "checkpoints" / "step-1" / "model.safetensors").is_file()
    assert json.loads((out / "train_summary.json").read_text())["updates"] == 1


def test_push_uploads_the_inference_artefacts_in_one_commit_with_weights_through_lfs(hub, tmp_path, corpus):  # noqa: F811
    hub.lfs_threshold = LFS_THRESHOLD
    assert pretrain_and_push(tmp_path, corpus) == 0
    out = tmp_path / "out"
    assert_run_complete(out)

    (commit,) = hub.commits
    assert commit["repo_id"] == "user/tiny" and commit["revision"] == "main"
    contents = hub.commit_contents(commit)
    assert set(contents) == set(files_to_push(out))
    # the inference artefacts, the summary included (the push comes after it); no training state
    expected = {"model.safetensors", "config.json", "README.md", "tokenizer.json", "train_summary.json"}
    assert expected <= set(contents)
    assert "pretraining_model/model.safetensors" in contents
    assert not any(name.startswith("checkpoints/") or name.endswith((".bin", ".pkl")) for name in contents)
    for name, data in contents.items():
        assert data == (out / name).read_bytes(), name
    large = {name for name in contents if (out / name).stat().st_size > LFS_THRESHOLD}
    assert large == {"model.safetensors", "pretraining_model/model.safetensors"}
    assert {item["path"]: item["oid"] for item in commit["lfs_files"]} == {
        name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in large
    }
    assert set(commit["files"]) == set(contents) - large
    assert hub.failed == [] and hub.unknown == []


def test_a_refused_token_ends_the_run_with_a_clear_error_and_keeps_the_folder(hub, tmp_path, corpus, capsys):  # noqa: F811
    hub.refuse_tokens = True
    assert pretrain_and_push(tmp_path, corpus) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert line.startswith("error: --push_to_hub: the Hub refused the token for user/tiny (401 Unauthorized")
    assert "hf auth login" in line and "--hub_token" in line and str(tmp_path / "out") in line
    assert "Traceback" not in err
    assert_run_complete(tmp_path / "out")
    assert hub.commits == [] and hub.lfs_objects == {}


def test_a_commit_failing_twice_with_a_5xx_is_retried_into_one_commit(hub, tmp_path, corpus, monkeypatch):  # noqa: F811
    monkeypatch.setattr(hub_module, "RETRY_WAIT_SECONDS", 0.01)
    hub.fail_first = {"commit": 2}
    assert pretrain_and_push(tmp_path, corpus) == 0
    commit_posts = [r for r in hub.requests if r == ("POST", "/api/models/user/tiny/commit/main")]
    assert len(commit_posts) == 3 and [status for _, _, status in hub.failed] == [503, 503]
    (commit,) = hub.commits
    assert set(hub.commit_contents(commit)) == set(files_to_push(tmp_path / "out"))
