"""The fairseq fixtures in ``tests/fixtures`` are the unchanged reference files (sha256 of each)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from conftest import REFERENCE_DIR, TRAIN_REFERENCE_DIR

MODELS = ("d2v1_audio", "d2v1_text", "d2v2_audio", "d2v2_image", "d2v2_text")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_forward_fixtures_are_intact():
    root = Path(REFERENCE_DIR)
    models = json.loads((root / "manifest.json").read_text())["models"]
    assert sorted(models) == list(MODELS)
    for entry in models.values():
        for name, digest in entry["sha256"].items():
            assert sha256(root / name) == digest, name


def test_training_step_fixtures_are_intact():
    root = Path(TRAIN_REFERENCE_DIR)
    models = json.loads((root / "manifest.json").read_text())["models"]
    assert sorted(models) == list(MODELS)
    for entry in models.values():
        for name, facts in entry["files"].items():
            path = root / name
            assert path.stat().st_size == facts["bytes"] and sha256(path) == facts["sha256"], name
