"""Many streams through one model: a stalled or dead source holds up nobody, a live source behind real
time drops old windows (counted) with memory bounded, live servers on 127.0.0.1 (GStreamer RTSP, ffmpeg
HTTP) are reconnected after a kill and restart, and apclip-infer --stream mixes them. Every wait is bounded."""
from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

from apclip.engine import Recognizer  # noqa: E402
from apclip.engine.stream.engine import StreamSettings  # noqa: E402
from apclip.engine.stream.feeds import FeedOptions  # noqa: E402
from apclip.engine.video.sources import Frame, SourceInfo, VideoSource  # noqa: E402
from apclip.testing.videos import frame_pattern, write_test_video  # noqa: E402
from infer_cli_helpers import read_jsonl, run  # noqa: E402
from stream_servers import http_server, rtsp_server  # noqa: E402


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail instead of hanging: SIGALRM raises in the main thread after `seconds`."""
    def expired(signum, frame):
        raise TimeoutError(f"test still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("APCLIP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")  # a killed server is seen at once


@pytest.fixture(scope="module")
def rec(tiny_bundle) -> Recognizer:
    return Recognizer.from_bundle(tiny_bundle, backend="ort", scorer="numpy")


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> Path:
    """4 s at 10 fps: 5 windows of 2 s every 0.5 s."""
    return write_test_video(tmp_path_factory.mktemp("video") / "four.mp4", frames=40, size=(96, 72), fps=10.0,
                            codec="mp4v")


class Stalled(VideoSource):
    """A live source that delivers a few frames, then blocks until released (a camera that hangs)."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__(SourceInfo("stalled://cam", "stream", 10.0, None, 64, 48))
        self.release = release

    def _frames(self, select, limit) -> Iterator[Frame]:  # type: ignore[no-untyped-def]
        for index in range(3):
            self.decoded_frames = index + 1
            if select(index, index / 10):
                yield Frame(index, index / 10, frame_pattern(index, 64, 48))
        self.release.wait(60)


class SlowEncoder:
    def __init__(self, runner, seconds_per_image: float) -> None:
        self.runner, self.name, self.batch_size = runner, runner.name, runner.batch_size
        self.seconds = seconds_per_image

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds * len(batch))
        return self.runner(batch)


SETTINGS = StreamSettings(window=2.0, stride=0.5)


def test_a_stalled_source_does_not_block_another(rec, clip_file):
    release = threading.Event()
    engine = rec.stream_many([Stalled(release), clip_file], SETTINGS)
    try:
        with deadline(60):
            windows = []
            for w in engine:
                windows.append(w)
                if len(windows) == 5:
                    break
    finally:
        release.set()
    assert [(w.stream, w.index) for w in windows] == [(1, k) for k in range(5)]
    assert engine.stats[0].windows == 0 and engine.stats[1].windows == 5


def test_a_silent_server_fails_alone(rec, clip_file):
    """A server that accepts and never answers: its source fails after the timeout, the file runs to its end."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/live.ts"
        events = []
        settings = StreamSettings(window=2.0, stride=0.5, feed=FeedOptions(timeout=1.0))
        with deadline(60):
            engine = rec.stream_many([url, clip_file], settings, on_event=events.append)
            windows = list(engine)
    assert [w.stream for w in windows] == [1] * 5
    assert engine.stats[0].status == "failed" and "cannot open stream" in engine.stats[0].error
    assert [e.kind for e in events if e.feed == 0] == ["failed"]


def test_behind_real_time_old_windows_are_dropped_and_memory_is_bounded(tiny_bundle, tmp_path):
    """Paced like a camera, with an encoder at half the speed real time needs: windows are dropped and
    counted, the queue never passes its bound, and every window that comes out is whole and in order."""
    video = write_test_video(tmp_path / "six.avi", frames=60, size=(64, 48), fps=10.0)
    slow = Recognizer.from_bundle(tiny_bundle, backend="ort", scorer="numpy")
    slow.vision = SlowEncoder(slow.vision, 0.125)  # 8 frames/s x 2 crops needed, 8 images/s available
    settings = StreamSettings(window=1.0, stride=0.25, max_batch=4, feed=FeedOptions(realtime=True, queue_frames=16))
    events = []
    engine = slow.stream_many([video], settings, on_event=events.append)
    with deadline(60):
        windows = list(engine)
    stats = engine.stats[0]
    assert stats.dropped > 0 and stats.windows > 0
    assert stats.windows + stats.dropped == 21  # windows start every 0.25 s up to 5 s
    assert [w.index for w in windows] == sorted({w.index for w in windows})
    assert all(w.distinct_frames == 8 for w in windows)
    assert any(e.kind == "dropped" for e in events)
    assert engine.peak_queued <= 16
    assert max(stats.lags) < 16 * 2 * 0.125 + 1.0  # a full queue's encoding, plus slack


@pytest.mark.parametrize("kind", ["http", "rtsp"])
def test_live_server_killed_and_restarted_is_reconnected(rec, clip_file, kind):
    server = http_server(clip_file) if kind == "http" else rtsp_server()
    events = []
    settings = StreamSettings(window=2.0, stride=0.5,
                              feed=FeedOptions(backoff=0.2, max_backoff=1.0, timeout=3.0))
    try:
        server.start()
        engine = rec.stream_many([server.url], settings, on_event=events.append)
        before, after = [], []
        with deadline(90):
            for w in engine:
                if not any(e.kind == "reconnected" for e in events):
                    before.append(w)
                    if len(before) == 2:
                        server.stop()  # the stream breaks ...
                        threading.Timer(1.5, server.start).start()  # ... and the server comes back
                else:
                    after.append(w)
                    if len(after) == 2:
                        break
    finally:
        time.sleep(1.6)  # let the restart timer finish before stopping
        server.stop()
    kinds = [e.kind for e in events]
    assert kinds[0] == "opened" and "lost" in kinds and "reconnected" in kinds
    assert kinds.index("lost") < kinds.index("reconnected")
    assert engine.stats[0].reconnects == 1
    indices = [w.index for w in before + after]
    assert indices == sorted(set(indices))  # numbers keep increasing across the gap
    assert after[0].start >= before[-1].start  # source time keeps running


# -- apclip-infer --stream ----------------------------------------------------------------------------------
def test_cli_streams_two_files_in_one_run(capsys, tiny_bundle, clip_file, tmp_path):
    other = write_test_video(tmp_path / "other.avi", frames=30, size=(64, 64), fps=10.0)
    out = tmp_path / "windows.jsonl"
    code, stdout, err = run(capsys, "--stream", clip_file, other, tmp_path / "missing.mp4", "--bundle", tiny_bundle,
                            "--window", 2, "--stride", 0.5, "--max-batch", 8, "--topk", 2, "--json", out)
    assert code == 1  # the missing file failed; the others ran to their ends
    records = read_jsonl(out)
    assert sorted((r["stream"], r["window"]) for r in records) == [(0, k) for k in range(5)] + [(1, k) for k in range(3)]
    assert {r["source"] for r in records} == {str(clip_file), str(other)}
    assert all(list(r)[:5] == ["source", "stream", "window", "start", "end"] and len(r["top"]) == 2 for r in records)
    assert all("lag" in r["timings_ms"] for r in records)
    assert "video file not found" in err and "missing.mp4: failed" in err
    assert len([line for line in stdout.splitlines() if "[" in line]) == 8


def test_cli_mixes_a_file_an_http_and_an_rtsp_stream(tiny_bundle, clip_file, tmp_path):
    """The console script on three kinds of source until Ctrl-C, which ends a live run with status 0."""
    http, rtsp = http_server(clip_file), rtsp_server()
    out = tmp_path / "live.jsonl"
    script = Path(sys.executable).with_name("apclip-infer")
    try:
        http.start()
        rtsp.start()
        command = [str(script), "--stream", str(clip_file), http.url, rtsp.url, "--bundle", str(tiny_bundle),
                   "--window", "2", "--stride", "0.5", "--json", str(out)]
        with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
            end = time.monotonic() + 60
            streams: set[int] = set()
            while time.monotonic() < end and len(streams) < 3 and proc.poll() is None:
                time.sleep(0.5)
                if out.exists():
                    streams = {r["stream"] for r in read_jsonl_complete(out)}
            proc.send_signal(signal.SIGINT)
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
    finally:
        http.stop()
        rtsp.stop()
    assert streams == {0, 1, 2}, err
    assert proc.returncode == 0, err
    records = read_jsonl(out)
    assert {r["source"] for r in records} == {str(clip_file), http.url, rtsp.url}
    assert "interrupted:" in err


def read_jsonl_complete(path: Path) -> list[dict]:
    """The whole lines of a JSON-lines file another process is still appending to."""
    import json

    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]


@pytest.mark.parametrize("extra, message", [
    (["--max-batch", "0"], "--max-batch 0"),
    (["--stride", "nan"], "--stride nan"),
    (["--csv", "x.csv"], "--csv is not written with --stream"),
    (["--mode", "clip"], "drop --mode clip"),
])
def test_cli_stream_refuses_what_cannot_work(capsys, clip_file, extra, message):
    code, _, err = run(capsys, "--stream", clip_file, "--bundle", "no-bundle", *extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
