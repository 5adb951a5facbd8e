"""A local stand-in for the Hub HTTP API that records every commit, for the push tests.

It implements what ``HfApi.create_repo`` + ``preupload_lfs_files`` + ``create_commit`` send (read from
huggingface_hub's ``hf_api.py``, ``_commit_api.py`` and ``lfs.py``), including the legacy LFS transfer:

- ``POST /api/repos/create``; ``GET /api/models/{repo}[/revision/{rev}]`` (repository info, asked by
  ``create_commit`` when nothing changed);
- ``POST /api/validate-yaml`` (the model card's metadata);
- ``POST /api/models/{repo}/preupload/{rev}``: ``uploadMode`` ``"lfs"`` for files above
  ``lfs_threshold`` bytes, ``"regular"`` otherwise, and the ``oid`` of a path the repository already
  holds (git blob sha1, sha256 for LFS files), so unchanged files are left out of a commit;
- ``POST /{repo}.git/info/lfs/objects/batch``: an ``upload`` action whose ``href`` points back here and
  a ``verify`` action, or no actions for an object already stored (as the Hub answers);
- ``PUT /lfs-storage/{oid}`` (the bytes; sha256 and size checked) and ``POST /{repo}.git/info/lfs/objects/verify``;
- ``POST /api/models/{repo}/commit/{rev}``: the ndjson commit; ``lfsFile`` entries must name stored objects.

Faults, set as attributes before the client calls: ``refuse_tokens`` answers every request 401 as the
Hub answers a bad token; ``forbid`` answers the repository creation 403 (a namespace the token may not
write to); ``fail_first = {kind: n}`` answers the first ``n`` requests of a kind
(:data:`KINDS`) with ``transient_status``; ``lose_commit_responses = n`` applies the first ``n`` commits
but answers them 504, as a proxy that timed out while the Hub finished the commit.

huggingface_hub uploads LFS files through Xet when ``hf_xet`` is installed; the ``hub`` fixture of
``test_hub.py`` turns Xet off, so the legacy LFS protocol above is what the client speaks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

# the request kinds of ``fail_first``
KINDS = (
    "create_repo",
    "repo_info",
    "validate_yaml",
    "preupload",
    "lfs_batch",
    "lfs_upload",
    "lfs_verify",
    "commit",
)
# what the Hub sends for a token it does not know (header and body; huggingface_hub reads the header)
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


def git_blob_oid(data: bytes) -> str:
    """The git object id of a file's bytes (what the Hub reports as a regular file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubStandIn:
    """Just enough of the Hub HTTP API for one-commit uploads, regular and LFS, on 127.0.0.1.

    ``commits`` lists ``{"repo_id", "revision", "summary", "files": {path: bytes}, "lfs_files": [...]}``
    (``lfs_files`` as the commit names them: ``{"path", "algo", "oid", "size"}``); ``lfs_objects`` maps
    each stored sha256 oid to its bytes; ``requests`` lists ``(method, path)`` of every call, ``failed``
    those answered with an injected fault, ``unknown`` those it could not answer; ``authorization``
    collects the Authorization headers of the API calls (the LFS storage PUT carries none, as on S3).
    """

    def __init__(self, lfs_threshold: int | None = None):
        self.lfs_threshold = lfs_threshold  # None: every file is regular (inline base64 in the commit)
        self.refuse_tokens = False
        self.forbid = False
        self.fail_first: dict[str, int] = {}
        self.transient_status = 503
        self.lose_commit_responses = 0
        self.repos: dict[str, dict] = {}
        self.trees: dict[str, dict[str, str]] = {}  # repo -> {path: oid} at the head of main
        self.heads: dict[str, str] = {}
        self.commits: list[dict] = []
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.failed: list[tuple[str, str, int]] = []
        self.unknown: list[tuple[str, str]] = []
        self.authorization: set[str] = set()
        self._lock = threading.Lock()

    def commit_contents(self, commit: dict) -> dict[str, bytes]:
        """Every file of ``commit`` with its bytes: the inline ones and the LFS ones from storage."""
        contents = dict(commit["files"])
        contents.update({item["path"]: self.lfs_objects[item["oid"]] for item in commit["lfs_files"]})
        return contents

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

            def do_PUT(self):
                stand_in._handle(self, "PUT")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # a short poll interval: shutdown() waits for it at the end of every test
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- HTTP --------------------------------------------------------------------------------------

    @staticmethod
    def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
        # huggingface_hub sends a Content-Length with every body, the LFS file PUT included
        length = int(handler.headers.get("Content-Length") or 0)
        return handler.rfile.read(length) if length else b""

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        body = self._read_body(handler)
        path = handler.path.split("?")[0]
        with self._lock:
            self.requests.append((method, path))
            kind, groups = self._kind(method, path)
            if kind != "lfs_upload":
                self.authorization.add(handler.headers.get("authorization", ""))
            status, payload, headers = self._respond(method, path, kind, groups, body)
        data = b"" if payload is None else json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)

    @staticmethod
    def _kind(method: str, path: str) -> tuple[str | None, tuple]:
        patterns = [
            ("POST", r"/api/repos/create", "create_repo"),
            ("GET", r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", "repo_info"),
            ("POST", r"/api/validate-yaml", "validate_yaml"),
            ("POST", r"/api/models/(.+)/preupload/([^/]+)", "preupload"),
            ("POST", r"/api/models/(.+)/commit/([^/]+)", "commit"),
            ("POST", r"/(.+)\.git/info/lfs/objects/batch", "lfs_batch"),
            ("POST", r"/(.+)\.git/info/lfs/objects/verify", "lfs_verify"),
            ("PUT", r"/lfs-storage/([0-9a-f]{64})", "lfs_upload"),
        ]
        for expected, pattern, kind in patterns:
            match = re.fullmatch(pattern, path)
            if method == expected and match:
                return kind, match.groups()
        return None, ()

    def _respond(self, method, path, kind, groups, body) -> tuple[int, dict | None, dict]:
        if self.refuse_tokens:
            self.failed.append((method, path, 401))
            return 401, {"error": INVALID_CREDENTIALS}, {"X-Error-Message": INVALID_CREDENTIALS}
        if self.forbid and kind == "create_repo":
            self.failed.append((method, path, 403))
            return 403, {"error": "You don't have the rights to create a model under this namespace"}, {}
        if kind is not None and self.fail_first.get(kind, 0) > 0:
            self.fail_first[kind] -= 1
            self.failed.append((method, path, self.transient_status))
            return self.transient_status, {"error": "the stand-in is unavailable for a moment"}, {}
        if kind is None:
            self.unknown.append((method, path))
            return 404, {"error": f"the stand-in does not implement {method} {path}"}, {}
        if kind not in ("create_repo", "validate_yaml", "lfs_upload") and groups[0] not in self.repos:
            return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        status, payload = getattr(self, f"_{kind}")(*groups, body=body)
        return status, payload, {}

    # -- API ---------------------------------------------------------------------------------------

    def _create_repo(self, body: bytes) -> tuple[int, dict]:
        request = json.loads(body)
        # like the Hub: a name without a namespace goes to the token's user (here always "user")
        repo_id = f"{request.get('organization') or 'user'}/{request['name']}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
        self.repos[repo_id] = {"type": request.get("type"), "visibility": request.get("visibility")}
        self.trees[repo_id] = {}
        return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}

    def _repo_info(self, repo_id: str, revision: str | None, body: bytes) -> tuple[int, dict]:
        return 200, {"id": repo_id, "sha": self.heads.get(repo_id), "private": False}

    def _validate_yaml(self, body: bytes) -> tuple[int, dict]:
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---\n", content, re.DOTALL)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as error:
            return 400, {"errors": [{"message": str(error)}]}
        if not isinstance(metadata, dict):
            return 400, {"errors": [{"message": "metadata is not a mapping"}]}
        return 200, {"errors": [], "warnings": []}

    def _preupload(self, repo_id: str, revision: str, body: bytes) -> tuple[int, dict]:
        tree = self.trees[repo_id]
        files = []
        for f in json.loads(body)["files"]:
            lfs = self.lfs_threshold is not None and f["size"] > self.lfs_threshold
            files.append(
                {
                    "path": f["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": tree.get(f["path"]),
                }
            )
        return 200, {"files": files}

    def _lfs_batch(self, repo_id: str, body: bytes) -> tuple[int, dict]:
        request = json.loads(body)
        assert request["operation"] == "upload" and request["hash_algo"] == "sha256", request
        objects = []
        for item in request["objects"]:
            answer = {"oid": item["oid"], "size": item["size"]}
            stored = self.lfs_objects.get(item["oid"])
            if stored is None or len(stored) != item["size"]:  # not stored yet: ask for the bytes
                answer["authenticated"] = True
                answer["actions"] = {
                    "upload": {"href": f"{self.url}/lfs-storage/{item['oid']}", "header": {}},
                    "verify": {"href": f"{self.url}/{repo_id}.git/info/lfs/objects/verify", "header": {}},
                }
            objects.append(answer)
        return 200, {"transfer": "basic", "objects": objects}

    def _lfs_upload(self, oid: str, body: bytes) -> tuple[int, dict | None]:
        if hashlib.sha256(body).hexdigest() != oid:
            return 400, {"error": f"the bytes received do not hash to {oid}"}
        self.lfs_objects[oid] = body
        return 200, None

    def _lfs_verify(self, repo_id: str, body: bytes) -> tuple[int, dict]:
        request = json.loads(body)
        stored = self.lfs_objects.get(request["oid"])
        if stored is None or len(stored) != request["size"]:
            return 404, {"error": f"LFS object {request['oid']} of {request['size']} bytes not found"}
        return 200, {}

    def _commit(self, repo_id: str, revision: str, body: bytes) -> tuple[int, dict]:
        commit = {"repo_id": repo_id, "revision": revision, "summary": None, "files": {}, "lfs_files": []}
        for line in body.decode().splitlines():
            item = json.loads(line)
            if item["key"] == "header":
                commit["summary"] = item["value"]["summary"]
            elif item["key"] == "file":
                assert item["value"]["encoding"] == "base64"
                commit["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] == "lfsFile":
                if item["value"]["oid"] not in self.lfs_objects:  # the Hub refuses a pointer to nothing
                    return 422, {"error": f"LFS object {item['value']['oid']} was never uploaded"}
                commit["lfs_files"].append(item["value"])
            else:
                return 400, {"error": f"the stand-in does not implement commit entries {item['key']!r}"}
        self.commits.append(commit)
        tree = self.trees[repo_id]
        tree.update({path: git_blob_oid(data) for path, data in commit["files"].items()})
        tree.update({item["path"]: item["oid"] for item in commit["lfs_files"]})
        oid = hashlib.sha1(body + b"%d" % len(self.commits)).hexdigest()
        self.heads[repo_id] = oid
        if self.lose_commit_responses > 0:
            self.lose_commit_responses -= 1
            self.failed.append(("POST", f"/api/models/{repo_id}/commit/{revision}", 504))
            return 504, {"error": "Gateway Timeout"}
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "success": True}
