"""The one Hub upload path used by every script: a finished output folder, safetensors only, one commit.

Pretraining, conversion and fine-tuning all end with :func:`push_folder_to_hub` (never
``Trainer.push_to_hub`` or ``model.push_to_hub``): the folder's inference artefacts — safetensors
weights, configs, processor/tokenizer files, the rendered ``README.md`` card and result JSONs — go up in
a single commit; pickled weights and training state (``*.bin`` such as ``training_args.bin``,
optimizer ``*.pt``, Trainer ``checkpoint-*`` folders, Accelerate ``checkpoints/``, logs) stay local.
The endpoint is ``endpoint`` or ``HF_ENDPOINT`` (huggingface_hub's own setting), so a local stand-in for
the Hub API can receive the upload in tests.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.utils import filter_repo_objects

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
    ``pytorch_model.bin``): the Hub copy must load without unpickling anything.
    """
    folder = Path(folder)
    files = files_to_push(folder)
    if not any(name.endswith(".safetensors") for name in files):
        raise ValueError(
            f"{folder} holds no *.safetensors weights; only safetensors are pushed "
            "(save the model with save_pretrained, which writes model.safetensors)"
        )
    api = HfApi(token=token, endpoint=endpoint)
    # The returned URL names the repository with its namespace ("name" -> "user/name").
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
    # create_commit, not upload_folder: upload_folder may split a folder over several commits, and a
    # model repository must never be visible with half of its files.
    return api.create_commit(
        repo_id=repo_id,
        operations=[CommitOperationAdd(path_in_repo=name, path_or_fileobj=folder / name) for name in files],
        commit_message=commit_message,
        repo_type="model",
    )
