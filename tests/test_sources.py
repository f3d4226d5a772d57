"""Video sources over generated files, folders and a local HTTP server; robustness to bad input."""
from __future__ import annotations

import functools
import http.server
import threading
import warnings
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest

from apclip.engine.video.errors import SourceError, SourceWarning
from apclip.engine.video.sources import ImageFolderSource, open_source, to_bgr8
from apclip.testing.videos import (
    codec_available,
    frame_pattern,
    read_frame_index,
    write_image_folder,
    write_test_video,
)

CONTAINERS = [("MJPG", ".avi"), ("mp4v", ".mp4"), ("FFV1", ".mkv")]


def _need_codec(codec: str, suffix: str) -> None:
    if not codec_available(codec, suffix):
        pytest.skip(f"this OpenCV build cannot write and read {codec} in {suffix}")


@pytest.fixture(scope="module")
def mjpg_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_video(tmp_path_factory.mktemp("src") / "clip.avi", frames=40, size=(96, 64), fps=20.0)


@pytest.mark.parametrize("codec,suffix", CONTAINERS)
def test_containers_decode_every_frame_in_order(tmp_path: Path, codec: str, suffix: str) -> None:
    _need_codec(codec, suffix)
    path = write_test_video(tmp_path / f"v{suffix}", frames=30, size=(96, 64), fps=25.0, codec=codec)
    with open_source(path) as source:
        info = source.info
        assert (info.kind, info.fps, info.frame_count, info.width, info.height, info.rotation) == (
            "file", 25.0, 30, 96, 64, 0)
        assert info.duration == pytest.approx(1.2) and not info.live
        frames = list(source.frames())
    assert [f.index for f in frames] == list(range(30))
    assert [read_frame_index(f.image) for f in frames] == list(range(30))  # the right pictures, in order
    np.testing.assert_allclose([f.timestamp for f in frames], np.arange(30) / 25.0, atol=1e-6)
    assert all(f.image.shape == (64, 96, 3) and f.image.dtype == np.uint8 for f in frames)
    assert source.decoded_frames == 30 and source.skipped_frames == 0


def test_frames_differ_from_each_other_and_from_black() -> None:
    frames = [frame_pattern(i, 64, 48) for i in range(20)]
    assert all(f.any() for f in frames)
    assert len({f.tobytes() for f in frames}) == 20


def test_select_converts_only_chosen_frames_but_counts_all(mjpg_video: Path) -> None:
    seen: list[tuple[int, float]] = []

    def select(index: int, timestamp: float) -> bool:
        seen.append((index, timestamp))
        return index % 10 == 3

    source = open_source(mjpg_video)
    chosen = list(source.frames(select))
    assert [f.index for f in chosen] == [3, 13, 23, 33]
    assert [read_frame_index(f.image) for f in chosen] == [3, 13, 23, 33]
    assert [i for i, _ in seen] == list(range(40)) and source.decoded_frames == 40
    with pytest.raises(RuntimeError, match="read once"):
        source.frames()
    source.close()


def test_limit_stops_decoding(mjpg_video: Path) -> None:
    with open_source(mjpg_video) as source:
        assert [f.index for f in source.frames(limit=5)] == [0, 1, 2, 3, 4]
        assert source.decoded_frames == 5


def test_one_frame_video(tmp_path: Path) -> None:
    path = write_test_video(tmp_path / "one.avi", frames=1, size=(64, 48))
    with open_source(path) as source:
        frames = list(source.frames())
    assert len(frames) == 1 and read_frame_index(frames[0].image) == 0


def test_grayscale_video_becomes_bgr(tmp_path: Path) -> None:
    path = write_test_video(tmp_path / "gray.avi", frames=5, size=(64, 48), color=False)
    with open_source(path) as source:
        frames = list(source.frames())
    assert len(frames) == 5
    image = frames[2].image
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    expected = cv2.cvtColor(frame_pattern(2, 64, 48), cv2.COLOR_BGR2GRAY).astype(int)
    assert np.abs(image[..., 0].astype(int) - expected).mean() < 3  # JPEG-close to the gray original
    assert np.abs(image[..., 0].astype(int) - image[..., 2]).max() <= 2


def test_truncated_file_yields_what_decodes_and_warns_once(tmp_path: Path) -> None:
    path = write_test_video(tmp_path / "full.avi", frames=60, size=(96, 64))
    data = path.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 6 // 10])
    with pytest.warns(SourceWarning) as record:
        with open_source(cut) as source:
            frames = list(source.frames())
    assert len(record) == 1 and "cut.avi" in str(record[0].message)
    assert 20 < len(frames) < 60
    assert [read_frame_index(f.image) for f in frames] == list(range(len(frames)))
    assert source.skipped_frames == 60 - len(frames)
    assert f"{60 - len(frames)} frame(s)" in str(record[0].message)


@pytest.mark.parametrize("codec,suffix", CONTAINERS)
def test_garbage_in_the_middle_is_skipped_and_counted(tmp_path: Path, codec: str, suffix: str) -> None:
    _need_codec(codec, suffix)
    path = write_test_video(tmp_path / f"v{suffix}", frames=60, size=(160, 120), codec=codec)
    data = bytearray(path.read_bytes())
    start, length = len(data) * 4 // 10, len(data) // 10
    data[start:start + length] = np.random.default_rng(1).integers(0, 256, length, dtype=np.uint8).tobytes()
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with open_source(bad) as source:
            frames = list(source.frames())
    ours = [w for w in record if issubclass(w.category, SourceWarning)]
    assert len(ours) == 1 and "could not be decoded" in str(ours[0].message)
    assert 0 < len(frames) < 60 and source.skipped_frames >= 60 - len(frames)
    assert [f.index for f in frames] == list(range(len(frames)))
    decoded_numbers = [read_frame_index(f.image) for f in frames[:5]]
    assert decoded_numbers == [0, 1, 2, 3, 4]  # frames before the damage are intact
    assert np.all(np.diff([f.timestamp for f in frames]) > 0)


def test_empty_missing_and_non_video_files_raise_one_line_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match=r"empty\.mp4: the file is empty"):
        open_source(empty)
    with pytest.raises(SourceError, match=r"video file not found: .*missing\.mp4"):
        open_source(tmp_path / "missing.mp4")
    text = tmp_path / "notes.avi"
    text.write_bytes(b"this is not a video\n" * 100)
    with pytest.raises(SourceError, match=r"cannot open video .*notes\.avi") as caught:
        open_source(text)
    assert "\n" not in str(caught.value)


def test_unsupported_url_scheme_is_named_and_credentials_hidden() -> None:
    with pytest.raises(SourceError, match="unsupported URL scheme 'ftp'") as caught:
        open_source("ftp://user:secret@example.com/video.mp4")
    assert "secret" not in str(caught.value) and "ftp://user:***@example.com/video.mp4" in str(caught.value)


def test_unreachable_stream_raises_without_leaking_the_password() -> None:
    with pytest.raises(SourceError, match=r"cannot open stream rtsp://admin:\*\*\*@127\.0\.0\.1:9/live") as caught:
        open_source("rtsp://admin:hunter2@127.0.0.1:9/live")  # port 9 (discard): connection refused
    assert "hunter2" not in str(caught.value)


def test_missing_camera_raises() -> None:
    with pytest.raises(SourceError, match="cannot open camera 97"):
        open_source(97)


def test_file_url_opens_the_file(mjpg_video: Path) -> None:
    with open_source(mjpg_video.as_uri()) as source:
        assert source.info.kind == "file" and source.info.frame_count == 40


@pytest.fixture()
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    finally:
        server.shutdown()
        thread.join()


def test_http_stream_is_read_in_order(http_root: tuple[str, Path]) -> None:
    base, folder = http_root
    write_test_video(folder / "stream.avi", frames=25, size=(64, 48), fps=25.0)
    with open_source(f"{base}/stream.avi") as source:
        assert source.info.kind == "stream" and source.info.frame_count == 25 and not source.info.live
        frames = list(source.frames())
    assert [read_frame_index(f.image) for f in frames] == list(range(25))
    np.testing.assert_allclose([f.timestamp for f in frames], np.arange(25) / 25.0, atol=1e-6)


def test_image_folder_in_natural_order(tmp_path: Path) -> None:
    write_image_folder(tmp_path, frames=12, size=(64, 48))
    (tmp_path / "readme.txt").write_text("not an image")
    source = open_source(tmp_path, fps=10.0)
    assert isinstance(source, ImageFolderSource)
    assert (source.info.kind, source.info.fps, source.info.frame_count, source.info.width) == ("images", 10.0, 12, 64)
    frames = list(source.frames())
    assert [read_frame_index(f.image) for f in frames] == list(range(12))  # frame_10 after frame_9
    np.testing.assert_allclose([f.timestamp for f in frames], np.arange(12) / 10.0)


@pytest.mark.parametrize("mode", ["gray", "gray16", "bgra"])
def test_image_folder_converts_gray_16bit_and_alpha(tmp_path: Path, mode: str) -> None:
    write_image_folder(tmp_path, frames=3, size=(40, 30), mode=mode)
    with open_source(tmp_path) as source:
        frames = list(source.frames())
    original = frame_pattern(1, 40, 30)
    expected = cv2.cvtColor(cv2.cvtColor(original, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR) if "gray" in mode \
        else original
    image = frames[1].image
    assert image.shape == (30, 40, 3) and image.dtype == np.uint8
    assert np.abs(image.astype(int) - expected).max() <= 1  # 16-bit: value * 257 >> 8 == value


def test_unreadable_images_are_skipped_with_one_warning(tmp_path: Path) -> None:
    write_image_folder(tmp_path, frames=6, size=(32, 24))
    (tmp_path / "frame_3.png").write_bytes(b"\x89PNG garbage")
    with pytest.warns(SourceWarning, match="1 frame"):
        frames = list(open_source(tmp_path).frames())
    assert [read_frame_index(f.image) for f in frames] == [0, 1, 3, 4, 5]
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]


def test_folders_without_images_raise(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SourceError, match=r"no images in folder .*\(looked for \.jpg"):
        open_source(tmp_path)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(SourceError, match="no readable images"):
        open_source(tmp_path)


def test_to_bgr8_conversions() -> None:
    gray = np.array([[0, 128], [255, 7]], dtype=np.uint8)
    assert to_bgr8(gray).shape == (2, 2, 3) and (to_bgr8(gray)[..., 1] == gray).all()
    assert to_bgr8(gray[..., None]).shape == (2, 2, 3)
    deep = gray.astype(np.uint16) * 257
    np.testing.assert_array_equal(to_bgr8(deep)[..., 0], gray)
    bgra = np.dstack([np.full((2, 2), v, np.uint8) for v in (1, 2, 3, 4)])
    np.testing.assert_array_equal(to_bgr8(bgra)[0, 0], [1, 2, 3])
    unit = np.full((2, 2, 3), 0.5, dtype=np.float32)
    assert (to_bgr8(unit) == 128).all()
    bgr = np.zeros((2, 2, 3), np.uint8)
    assert to_bgr8(bgr) is bgr
    with pytest.raises(ValueError, match="unsupported"):
        to_bgr8(np.zeros((2, 2, 2), np.uint8))


def test_clock_keeps_container_time_and_repairs_bad_timestamps() -> None:
    from apclip.engine.video.sources import _Clock, SourceInfo

    file_clock = _Clock(SourceInfo("f", "file", 25.0, 10, 8, 8))
    # container time kept; a repeated or missing time becomes the previous one plus a frame period
    assert [file_clock.timestamp(ms) for ms in (40.0, 80.0, 80.0, float("nan"), 240.0)] == [
        0.04, 0.08, 0.12, 0.16, 0.24]
    live_clock = _Clock(SourceInfo("s", "stream", 25.0, None, 8, 8))
    assert [round(live_clock.timestamp(ms), 6) for ms in (5000.0, 5040.0, 5080.0)] == [0.0, 0.04, 0.08]
    camera_clock = _Clock(SourceInfo("c", "camera", None, None, 8, 8))
    times = [camera_clock.timestamp(0.0) for _ in range(3)]  # cameras reporting no time: wall clock
    assert times[0] == 0.0 and times[0] < times[1] < times[2]
