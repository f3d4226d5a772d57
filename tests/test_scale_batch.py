"""apclip-batch on a local Ray instance (2 CPUs) over 20 generated videos, 3 of them corrupt.

One run is killed with SIGTERM once it has committed a part, the rerun finishes: every video then has
exactly one row, and each row equals what apclip-infer --json says for that video.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

from apclip.scale.batch_store import ResultStore  # noqa: E402

GOOD = 17
CORRUPT = ("random.mp4", "empty.avi", "header_only.avi")


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    from apclip.testing.videos import write_test_video

    root = tmp_path_factory.mktemp("archive")
    (root / "sub").mkdir()
    for i in range(GOOD):
        folder = root / "sub" if i % 3 == 0 else root
        write_test_video(folder / f"clip{i:02d}.avi", frames=16 + 2 * i, size=(80, 64), fps=25.0)
    (root / "random.mp4").write_bytes(os.urandom(4096))
    (root / "empty.avi").write_bytes(b"")
    header = (root / "clip01.avi").read_bytes()[:600]  # the RIFF header and no frames
    (root / "header_only.avi").write_bytes(header)
    (root / "notes.txt").write_text("not a video: ignored by the folder walk")
    return root


@pytest.fixture
def ray_env(tmp_path):
    env = make_ray_env(tmp_path)
    yield env
    shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)  # Ray's session logs and sockets


def make_ray_env(tmp: Path) -> dict[str, str]:
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    (home / "ray_bootstrap_config.yaml").write_text("")  # `ray` must never find a real cluster config
    # Ray's socket paths must stay under 107 characters: a short temp dir, not pytest's.
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    return dict(os.environ, HOME=str(home), RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
                RAY_TMPDIR=ray_tmp, OPENCV_FFMPEG_LOGLEVEL="-8")


def batch_command(bundle: Path, archive: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "apclip.scale.batch", str(bundle), "--input", str(archive), "--output", str(output),
            "--num-cpus", "2", "--threads", "1", "--decode-workers", "1", "--object-store-mb", "256"]


def infer_json(bundle: Path, video: Path, out: Path) -> dict | None:
    from apclip.engine.cli.infer import main as infer_main

    code = infer_main([str(video), "--bundle", str(bundle), "--json", str(out), "--quiet", "--threads", "1"])
    if code != 0:
        return None
    (line,) = out.read_text().splitlines()
    return json.loads(line)


@pytest.mark.slow
def test_batch_killed_and_resumed_matches_apclip_infer(tiny_bundle, archive, tmp_path, ray_env, capsys):
    env = ray_env
    output = tmp_path / "results.parquet"
    store = ResultStore(output)
    videos = sorted(str(p) for p in archive.rglob("*") if p.suffix in (".avi", ".mp4"))
    assert len(videos) == GOOD + len(CORRUPT)

    # Run 1: SIGTERM the driver as soon as it has committed its first part.
    proc = subprocess.Popen(batch_command(tiny_bundle, archive, output), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not list(store.parts.glob("part-*.parquet")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, f"run 1 ended before it could be killed:\n{proc.communicate()[0]}"
    proc.send_signal(signal.SIGTERM)
    log1, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, log1
    assert not output.exists(), "a killed run must not publish the merged output"
    done = store.completed()
    assert 1 <= len(done) < len(videos), log1

    # Run 2 resumes: only the videos without a committed row are processed.
    run2 = subprocess.run(batch_command(tiny_bundle, archive, output), env=env, capture_output=True, text=True,
                          timeout=300)
    assert run2.returncode == 0, run2.stdout + run2.stderr
    assert f"{len(done)} already in" in run2.stderr and f"{len(videos) - len(done)} to do" in run2.stderr
    rows = pq.read_table(output).to_pylist()
    assert sorted(r["path"] for r in rows) == videos  # exactly one row per video
    assert not store.parts.exists()

    # Same fields and values as apclip-infer --json, plus path, duration, error.
    by_path = {r["path"]: r for r in rows}
    for video in videos:
        row = by_path[video]
        expected = infer_json(tiny_bundle, Path(video), tmp_path / "infer.jsonl")
        capsys.readouterr()
        if Path(video).name in CORRUPT:
            assert expected is None and row["error"] and row["top"] == [], (video, row)
            continue
        assert expected is not None and row["error"] is None, (video, row["error"])
        assert set(expected) | {"path", "duration", "error"} == set(row), sorted(row)
        assert [t["label"] for t in row["top"]] == [t["label"] for t in expected["top"]], video
        for got, want in zip(row["top"], expected["top"]):
            assert got["score"] == pytest.approx(want["score"], abs=2e-6), video
        for field in ("source", "backend", "scorer", "protocol", "frames", "approximate", "distinct_frames"):
            assert row[field] == expected[field], (video, field)
        assert row["duration"] == pytest.approx((16 + 2 * int(Path(video).stem[4:])) / 25.0)
        assert set(dict(row["timings_ms"])) == set(expected["timings_ms"])

    # Run 3: nothing left to do; Ray is not even started and the output is unchanged.
    run3 = subprocess.run(batch_command(tiny_bundle, archive, output), env=env, capture_output=True, text=True,
                          timeout=120)
    assert run3.returncode == 0 and "0 to do" in run3.stderr, run3.stderr
    assert "Ray instance" not in run3.stderr
    assert len(pq.read_table(output)) == len(videos)


def _row(path: str, score: float, error: str | None = None) -> dict:
    return {"source": path, "top": [] if error else [{"label": "a", "score": score}], "backend": "ort-cpu",
            "scorer": "numpy", "protocol": "maka", "frames": 0 if error else 32, "approximate": False,
            "distinct_frames": 0 if error else 16,
            "timings_ms": {"decode+preprocess": 1.5}, "path": path, "duration": None if error else 2.0, "error": error}


def test_store_parts_merge_to_jsonl_once_per_path(tmp_path):
    store = ResultStore(tmp_path / "out.jsonl")
    assert store.completed() == set()
    store.commit([_row("b.mp4", 0.5), _row("a.mp4", 0.25)])
    store.commit([_row("c.mp4", 0.0, error="cannot open video c.mp4")])
    assert store.completed() == {"a.mp4", "b.mp4", "c.mp4"}
    assert store.merge() == 3 and not store.parts.exists()
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["path"] for r in lines] == ["a.mp4", "b.mp4", "c.mp4"]
    assert lines[0]["timings_ms"] == {"decode+preprocess": 1.5} and lines[0]["top"] == [{"label": "a", "score": 0.25}]
    assert lines[2]["error"] == "cannot open video c.mp4" and lines[2]["duration"] is None
    # A crash after the merge but before the parts were removed: the next merge keeps one row per path.
    store.commit([_row("a.mp4", 0.25), _row("d.mp4", 0.75)])
    assert store.completed() == {"a.mp4", "b.mp4", "c.mp4", "d.mp4"}
    assert store.merge() == 4
    assert [json.loads(line)["path"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == \
        ["a.mp4", "b.mp4", "c.mp4", "d.mp4"]


def test_store_refuses_other_suffixes_and_folders(tmp_path):
    from apclip.errors import ApclipError

    with pytest.raises(ApclipError, match=r"\.parquet or \.jsonl"):
        ResultStore(tmp_path / "out.csv")
    (tmp_path / "dir.parquet").mkdir()
    with pytest.raises(ApclipError, match="is a folder"):
        ResultStore(tmp_path / "dir.parquet")


def test_expand_inputs_folder_list_glob(tmp_path):
    from apclip.errors import ApclipError
    from apclip.scale.batch import expand_inputs

    (tmp_path / "v").mkdir()
    for name in ("b.mp4", "a.AVI", "skip.txt"):
        (tmp_path / "v" / name).write_bytes(b"x")
    assert expand_inputs(str(tmp_path / "v")) == [str(tmp_path / "v" / "a.AVI"), str(tmp_path / "v" / "b.mp4")]
    listing = tmp_path / "list.txt"
    listing.write_text("# archive\nv/b.mp4\n\n/abs/c.mp4\n")
    assert expand_inputs(str(listing)) == ["/abs/c.mp4", str(tmp_path / "v" / "b.mp4")]
    assert expand_inputs(str(tmp_path / "v" / "*.mp4")) == [str(tmp_path / "v" / "b.mp4")]
    with pytest.raises(ApclipError, match="no such folder"):
        expand_inputs(str(tmp_path / "missing"))
    with pytest.raises(ApclipError, match="no videos found"):
        expand_inputs(str(tmp_path / "v" / "*.mkv"))


@pytest.mark.slow
def test_local_ray_listens_on_loopback_only_and_dies_with_the_driver(tiny_bundle, archive, tmp_path, ray_env):
    """apclip-batch itself keeps Ray on 127.0.0.1 (the env here does not); kill -9 of the driver takes the
    GCS and the raylet with it (Ray's agents follow within about a minute: docs/security.md)."""
    from apclip.testing.sockets import descendants, listening, non_loopback

    env = {k: v for k, v in ray_env.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    output = tmp_path / "results.jsonl"
    proc = subprocess.Popen(batch_command(tiny_bundle, archive, output), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    store = ResultStore(output)
    seen: dict[tuple, str] = {}
    wide: list = []
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            pids = descendants(proc.pid)
            for pid, host, port in listening(pids):
                seen[(pid, host, port)] = Path(f"/proc/{pid}/comm").read_text().strip() if Path(f"/proc/{pid}").exists() else "?"
            wide += non_loopback(pids)
            if list(store.parts.glob("part-*")) and any(name == "raylet" for name in seen.values()):
                break
            time.sleep(0.3)
        assert proc.poll() is None, proc.communicate()[0]
        assert not wide, f"listening beyond loopback: {wide}"
        names = set(seen.values())
        assert {"gcs_server", "raylet"} <= names, seen  # the sockets were really looked at
        core = [pid for pid in descendants(proc.pid) if Path(f"/proc/{pid}/comm").exists()
                and Path(f"/proc/{pid}/comm").read_text().strip() in ("gcs_server", "raylet")]
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in core):
            time.sleep(0.2)
        assert not [pid for pid in core if Path(f"/proc/{pid}").exists()], "gcs_server/raylet outlived the driver"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
