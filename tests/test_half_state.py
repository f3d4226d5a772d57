"""No half state: kill -9 at any moment of publishing a folder leaves the old or the new one, leftovers of
killed runs are cleaned by the next run, and a full disk leaves no temporary file."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from apclip.fileio import clean_stale, partial_dir, replace_dir


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def make_bundle(folder: Path, tag: str, files: int = 30) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (folder / f"f{i:02d}.bin").write_text(tag)
    (folder / "complete").write_text(tag)


def whole(folder: Path) -> str:
    """The tag of a complete bundle folder, or an AssertionError."""
    tags = {p.read_text() for p in folder.iterdir()}
    assert len(tags) == 1 and (folder / "complete").exists() and len(list(folder.iterdir())) == 31, folder
    return tags.pop()


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_replace_dir_swaps_and_leaves_nothing_beside(tmp_path, monkeypatch, exchange):
    if not exchange:  # a filesystem without RENAME_EXCHANGE
        import apclip.fileio as fileio

        monkeypatch.setattr(fileio, "_exchange", lambda a, b: False)
    final = tmp_path / "bundle"
    make_bundle(final, "old")
    work = partial_dir(final)
    make_bundle(work, "new")
    replace_dir(work, final)
    assert whole(final) == "new" and [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_kill_9_at_any_moment_leaves_the_old_or_the_new_bundle(tmp_path):
    final = tmp_path / "bundle"
    make_bundle(final, "gen-0")
    child = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_half_state import make_bundle
        from apclip.fileio import partial_dir, replace_dir
        final = Path({str(final)!r})
        print("go", flush=True)
        for generation in range(1, 100000):
            work = partial_dir(final)
            make_bundle(work, f"gen-{{generation}}")
            replace_dir(work, final)
    """)
    rng = random.Random(0)
    seen = set()
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "go\n"
        time.sleep(0.05 + rng.random() * 0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        clean_stale(final)  # what the next run does first
        seen.add(whole(final))
        assert [p.name for p in tmp_path.iterdir()] == ["bundle"], sorted(p.name for p in tmp_path.iterdir())
    assert len(seen) > 1  # the child really replaced the bundle between kills


def test_a_kill_between_the_fallback_renames_is_repaired_by_the_next_run(tmp_path):
    """Where renameat2 cannot exchange, the old folder is renamed aside first; a kill then left only it."""
    final = tmp_path / "bundle"
    pid = dead_pid()
    make_bundle(tmp_path / f".bundle.old-{pid}", "old")
    make_bundle(tmp_path / f".bundle.partial-{pid}-abc", "new")
    make_bundle(tmp_path / f".bundle.partial-{os.getpid()}-live", "ours")  # a live run's: kept
    work = partial_dir(final)
    assert whole(final) == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["bundle", f".bundle.partial-{os.getpid()}-live",
                                                                 work.name])


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs (root only; skipped elsewhere)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()[:200]}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_full_disk_leaves_no_temporary_file(full_disk):
    from apclip.fileio import atomic_write

    with pytest.raises(OSError) as info:
        with atomic_write(full_disk / "out.jsonl", "wb") as f:
            f.write(os.urandom(1 << 20))
    assert info.value.errno == 28  # ENOSPC
    assert list(full_disk.iterdir()) == []


def test_export_on_a_full_disk_is_one_line_and_leaves_nothing(full_disk, demo_assets):
    result = subprocess.run([sys.executable, "-m", "apclip.export.cli", "--ckpt", str(demo_assets["checkpoint"]),
                             "--labels", str(demo_assets["labels"]), "--out", str(full_disk / "bundle"),
                             "--no-verify"], capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    error_lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(error_lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "space" in error_lines[0].lower(), error_lines
    assert list(full_disk.iterdir()) == []


def test_infer_json_on_a_full_disk_is_one_line_and_leaves_no_temporary(full_disk, tiny_bundle, demo_assets):
    """A buffered close re-raised ENOSPC inside the cleanup: a traceback, and the .tmp stayed."""
    with open(full_disk / "filler", "wb") as f:
        try:
            f.write(bytes(1 << 20))
        except OSError:
            pass  # the disk is full now
    result = subprocess.run([sys.executable, "-m", "apclip.engine.cli.infer", str(demo_assets["video"]), "--bundle",
                             str(tiny_bundle), "--json", str(full_disk / "out.jsonl"), "--threads", "1", "--quiet"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1 and "No space" in result.stderr
    assert [p.name for p in full_disk.iterdir()] == ["filler"]
