"""The one Hub upload path used by every script: a finished output folder, safetensors only, one commit.

Pretraining, conversion and fine-tuning all end with :func:`push_folder_to_hub` (never
``Trainer.push_to_hub`` or ``model.push_to_hub``): the folder's inference artefacts — safetensors
weights, configs, processor/tokenizer files, the rendered ``README.md`` card and result JSONs — go up in
a single commit; pickled weights and training state (``*.bin`` such as ``training_args.bin``,
optimizer ``*.pt``, Trainer ``checkpoint-*`` folders, Accelerate ``checkpoints/``, logs) stay local.
The endpoint is ``endpoint`` or ``HF_ENDPOINT`` (huggingface_hub's own setting), so a local stand-in for
the Hub API can receive the upload in tests.

Faults: huggingface_hub retries the preupload call and the LFS transfers itself (its ``http_backoff``), but
sends ``create_repo``, the card's metadata check and the commit POST once; those are retried here on a
transient status. A token the Hub refuses (401), or a Hub still unavailable after the retries, is a
:class:`HubPushError` with a one-line message.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import filter_repo_objects

logger = logging.getLogger(__name__)

# Pickled weights and training state never leave the machine: only inference artefacts are uploaded.
IGNORE_PATTERNS = [
    "*.bin",
    "*.pt",
    "*.pth",
    "*.pkl",
    "*.ckpt",
    "checkpoints/*",  # Accelerate training state of the pretraining scripts
    "checkpoint-*",  # Trainer checkpoints of the fine-tuning scripts (fnmatch's * spans folders)
    "runs/*",
    "logs/*",
    ".*",
    "*/.*",
]

# A passing fault at the Hub or at a proxy in front of it: the statuses huggingface_hub's http_backoff
# retries too.
TRANSIENT_STATUSES = (429, 500, 502, 503, 504)
# Tries of each call that huggingface_hub sends once; the wait doubles after each (2 + 4 + 8 s at most).
ATTEMPTS = 4
RETRY_WAIT_SECONDS = 2.0


# huggingface_hub's HTTP library's base error (its HfHubHTTPError derives from it; a refused connection
# raises it directly), taken from huggingface_hub rather than imported by a name that changes with it
TRANSPORT_ERROR = HfHubHTTPError.__mro__[1]


class HubPushError(RuntimeError):
    """The push failed for a reason the user must act on (a refused token, a Hub that stays unavailable);
    the message is one line naming the repository."""


def files_to_push(folder: str | Path) -> list[str]:
    """Relative (posix) paths of the files of ``folder`` that :func:`push_folder_to_hub` uploads."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return list(filter_repo_objects(paths, ignore_patterns=IGNORE_PATTERNS))


def push_folder_to_hub(
    folder: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload with data2vec-hf",
    endpoint: str | None = None,
):
    """Create ``repo_id`` if needed and upload ``folder`` in one commit; returns the ``CommitInfo``.

    Raises ``ValueError`` when the folder holds no ``*.safetensors`` weights (e.g. only a pickled
    ``pytorch_model.bin``): the Hub copy must load without unpickling anything; :class:`HubPushError` when
    the Hub refuses the token or stays unavailable through the retries.
    """
    folder = Path(folder)
    files = files_to_push(folder)
    if not any(name.endswith(".safetensors") for name in files):
        raise ValueError(
            f"{folder} holds no *.safetensors weights; only safetensors are pushed "
            "(save the model with save_pretrained, which writes model.safetensors)"
        )
    api = HfApi(token=token, endpoint=endpoint)
    requested = repo_id
    try:
        # The returned URL names the repository with its namespace ("name" -> "user/name").
        repo_id = with_retries(
            lambda: api.create_repo(requested, private=private, exist_ok=True, repo_type="model").repo_id,
            f"creating {requested}",
        )
        return commit_folder(api, repo_id, folder, files, commit_message)
    except HfHubHTTPError as error:
        if error.response.status_code == 401:
            raise HubPushError(
                f"the Hub refused the token for {repo_id} ({describe(error)}); log in with `hf auth login` "
                "or pass a valid write token with --hub_token"
            ) from error
        if error.response.status_code == 403:
            raise HubPushError(
                f"the token may not write to {repo_id} ({describe(error)}); use a token with write access to "
                "that namespace, or another --hub_model_id"
            ) from error
        raise HubPushError(f"the Hub refused the push to {repo_id} ({describe(error)})") from error
    except (TRANSPORT_ERROR, OSError) as error:  # no connection, or huggingface_hub's offline mode
        raise HubPushError(
            f"cannot reach the Hub to push {repo_id} ({type(error).__name__}: {error}); check the network "
            "(and HF_HUB_OFFLINE, HF_ENDPOINT)"
        ) from error


def commit_folder(api: HfApi, repo_id: str, folder: Path, files: list[str], commit_message: str):
    """Upload ``files`` of ``folder`` to ``repo_id`` in one commit, the commit POST retried on a transient
    status; returns the ``CommitInfo``."""
    wait = RETRY_WAIT_SECONDS
    for attempt in range(1, ATTEMPTS + 1):
        # Fresh operations on every attempt, so that the preupload call asks the Hub again which files it
        # holds: a commit answered with a 5xx may still have been applied (a proxy timing out while the
        # Hub finished it), and then the retry finds nothing to change and makes no second commit.
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=folder / name) for name in files]
        # Upload modes and LFS transfers first: huggingface_hub retries those requests itself.
        api.preupload_lfs_files(repo_id, additions=operations, repo_type="model", free_memory=False)
        try:
            # create_commit, not upload_folder: upload_folder may split a folder over several commits, and
            # a model repository must never be visible with half of its files.
            return api.create_commit(
                repo_id=repo_id, operations=operations, commit_message=commit_message, repo_type="model"
            )
        except HfHubHTTPError as error:
            if not is_transient(error):
                raise
            wait = wait_or_give_up(error, f"committing to {repo_id}", attempt, wait)


def with_retries(call, what: str):
    """``call()``, tried again while the Hub answers a transient status (``what`` names it in messages)."""
    wait = RETRY_WAIT_SECONDS
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return call()
        except HfHubHTTPError as error:
            if not is_transient(error):
                raise
            wait = wait_or_give_up(error, what, attempt, wait)


def is_transient(error: HfHubHTTPError) -> bool:
    """Whether the Hub's answer is one to try again after a moment."""
    return error.response.status_code in TRANSIENT_STATUSES


def wait_or_give_up(error: HfHubHTTPError, what: str, attempt: int, wait: float) -> float:
    """After failed try ``attempt``: sleep ``wait`` and return the next wait, or raise
    :class:`HubPushError` when it was the last try."""
    if attempt == ATTEMPTS:
        raise HubPushError(
            f"{what} failed {ATTEMPTS} times in a row (last answer: {describe(error)}); try again later"
        ) from error
    logger.warning(
        "%s: the Hub answered %s; trying again in %.0f s (%d of %d)",
        what,
        describe(error),
        wait,
        attempt + 1,
        ATTEMPTS,
    )
    time.sleep(wait)
    return wait * 2


def describe(error: HfHubHTTPError) -> str:
    """``401 Unauthorized: <the server's message>``, on one line."""
    response = error.response
    text = f"{response.status_code} {response.reason_phrase}".strip()
    message = (error.server_message or "").strip().splitlines()
    return f"{text}: {message[0]}" if message else text
