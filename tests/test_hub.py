"""The one Hub upload path, against a local stand-in for the Hub HTTP API that records every commit."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
import yaml
from data2vec_hf.hub import files_to_push, push_folder_to_hub
from safetensors.torch import load, save_file

DUMMY_TOKEN = "hf_dummy_token_for_the_local_stand_in"


class HubStandIn:
    """Just enough of the Hub HTTP API for ``HfApi.create_repo`` + ``create_commit``, on 127.0.0.1.

    Every file is answered ``uploadMode: regular``, so its bytes travel inline (base64) in the
    commit's ndjson payload and the stand-in holds exactly what the Hub would store. ``commits`` lists
    ``{"repo_id", "revision", "summary", "files": {path: bytes}, "lfs_files": [...]}``;
    ``requests`` lists ``(method, path)`` of every call, ``unknown`` those it could not answer.
    """

    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.commits: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.unknown: list[tuple[str, str]] = []
        self.authorization: set[str] = set()
        self._lock = threading.Lock()

    # -- server lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> HubStandIn:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep the test output clean
                pass

            def do_GET(self):
                stand_in._handle(self, "GET")

            def do_POST(self):
                stand_in._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- API ---------------------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        path = handler.path.split("?")[0]
        with self._lock:
            self.requests.append((method, path))
            self.authorization.add(handler.headers.get("authorization", ""))
            status, payload = self._route(method, path, body)
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        if status == 404:
            handler.send_header("X-Error-Code", "RepoNotFound")
        handler.end_headers()
        handler.wfile.write(data)

    def _route(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        if method == "POST" and path == "/api/repos/create":
            request = json.loads(body)
            # like the Hub: a name without a namespace goes to the token's user (here always "user")
            repo_id = f"{request.get('organization') or 'user'}/{request['name']}"
            if repo_id in self.repos:
                return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
            self.repos[repo_id] = {"type": request.get("type"), "visibility": request.get("visibility")}
            return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}
        if method == "POST" and path == "/api/validate-yaml":
            content = json.loads(body)["content"]
            match = re.match(r"^---\n(.*?)\n---\n", content, re.DOTALL)
            try:
                metadata = yaml.safe_load(match.group(1)) if match else {}
            except yaml.YAMLError as error:
                return 400, {"errors": [{"message": str(error)}]}
            if not isinstance(metadata, dict):
                return 400, {"errors": [{"message": "metadata is not a mapping"}]}
            return 200, {"errors": [], "warnings": []}
        match = re.fullmatch(r"/api/models/(.+)/(preupload|commit)/([^/]+)", path)
        if method == "POST" and match:
            repo_id, action, revision = match.groups()
            if repo_id not in self.repos:
                return 404, {"error": "Repository not found"}
            if action == "preupload":
                files = json.loads(body)["files"]
                return 200, {
                    "files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                        for f in files
                    ]
                }
            return 200, self._commit(repo_id, revision, body)
        self.unknown.append((method, path))
        return 404, {"error": f"the stand-in does not implement {method} {path}"}

    def _commit(self, repo_id: str, revision: str, body: bytes) -> dict:
        commit = {"repo_id": repo_id, "revision": revision, "summary": None, "files": {}, "lfs_files": []}
        for line in body.decode().splitlines():
            item = json.loads(line)
            if item["key"] == "header":
                commit["summary"] = item["value"]["summary"]
            elif item["key"] == "file":
                assert item["value"]["encoding"] == "base64"
                commit["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            else:
                commit["lfs_files"].append(item["value"])
        self.commits.append(commit)
        oid = hashlib.sha1(body).hexdigest()
        return {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "success": True}


@pytest.fixture
def hub(monkeypatch):
    """A running stand-in; huggingface_hub is pointed at it (``HF_ENDPOINT``) with offline mode lifted."""
    from huggingface_hub import constants

    with HubStandIn() as stand_in:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
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


def test_second_push_reuses_the_repository(hub, tmp_path):
    make_output_folder(tmp_path)
    push_folder_to_hub(tmp_path, "tiny-model", token=DUMMY_TOKEN, commit_message="first")
    push_folder_to_hub(tmp_path, "tiny-model", token=DUMMY_TOKEN, commit_message="second")
    assert [c["summary"] for c in hub.commits] == ["first", "second"]
    assert list(hub.repos) == ["user/tiny-model"]
    assert {c["repo_id"] for c in hub.commits} == {"user/tiny-model"}


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
