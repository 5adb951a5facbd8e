"""The one Hub upload path used by every script: a finished output folder, safetensors only."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi

# Pickled weights and training state never leave the machine: only inference artefacts are uploaded.
IGNORE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.pkl", "checkpoints/*", "runs/*", "logs/*", ".*"]


def push_folder_to_hub(
    folder: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload with data2vec-hf",
    endpoint: str | None = None,
):
    """Create ``repo_id`` if needed and upload ``folder`` in one commit; returns the commit info."""
    api = HfApi(token=token, endpoint=endpoint)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message,
        ignore_patterns=IGNORE_PATTERNS,
        repo_type="model",
    )
