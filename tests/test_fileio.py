"""apclip.fileio.atomic_write: the one way artifacts are written (temporary file beside the target,
fsync, umask modes, rename; removed on any error, the old file untouched)."""
from __future__ import annotations

import os
import stat

import pytest

from apclip.fileio import AtomicFile, atomic_write


def _siblings(path):
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def test_text_is_published_with_umask_modes(tmp_path):
    target = tmp_path / "sub" / "out.json"
    old = os.umask(0o027)
    try:
        with atomic_write(target) as f:
            f.write("{}\n")
            assert not target.exists(), "the target appeared before the write finished"
    finally:
        os.umask(old)
    assert target.read_text() == "{}\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # 0666 & ~027, not tempfile's private 0600
    assert _siblings(target) == []


def test_an_error_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "bank.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target, "wb") as f:
            f.write(b"half of the new")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert _siblings(target) == []


def test_path_mode_for_writers_that_open_files_themselves(tmp_path):
    target = tmp_path / "overlay.mp4"
    with atomic_write(target, mode=None, suffix=".mp4") as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".mp4" and tmp.name.startswith(".overlay.mp4.")
        tmp.write_bytes(b"\x00" * 10)
    assert target.read_bytes() == b"\x00" * 10 and _siblings(target) == []


def test_atomic_file_commit_later_or_discard(tmp_path):
    kept, dropped = AtomicFile(tmp_path / "a.jsonl", "w"), AtomicFile(tmp_path / "b.jsonl", "w")
    kept.file.write("1\n")
    dropped.file.write("2\n")
    kept.commit()
    dropped.discard()
    assert (tmp_path / "a.jsonl").read_text() == "1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]


def test_replace_dir_swaps_a_whole_directory(tmp_path):
    from apclip.fileio import replace_dir

    final, new = tmp_path / "bundle", tmp_path / ".bundle.partial"
    final.mkdir()
    (final / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    replace_dir(new, final)
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no old copy or partial left
