"""The one write-then-rename helper: a reader sees the old content or the new, never a mix or a leftover."""

from __future__ import annotations

import pytest
from data2vec_hf.atomic import atomic_file, atomic_folder


def test_a_folder_replaces_the_old_one_only_when_complete(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(target) as scratch:
        (scratch / "new.txt").write_text("half")
        raise RuntimeError("the disk is full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no scratch folder left
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    with atomic_folder(target) as scratch:
        (scratch / "new.txt").write_text("new")
        assert not (target / "new.txt").exists()  # nothing visible before the block ends
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]


def test_a_file_is_replaced_only_when_written(tmp_path):
    target = tmp_path / "clean.txt"
    target.write_text("old")
    with pytest.raises(ValueError), atomic_file(target) as temporary:
        temporary.write_text("half")
        raise ValueError
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["clean.txt"]
    with atomic_file(target) as temporary:
        temporary.write_text("new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["clean.txt"]
