"""Whole-video clips and sliding windows end to end: indices, pixels, order, memory, failures."""
from __future__ import annotations

import itertools
import tracemalloc
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from apclip.config import NORMALIZATIONS
from apclip.engine.video.clips import Clip, load_clip
from apclip.engine.video.windows import iter_window_clips
from apclip.preprocessing import Preprocessing
from apclip.engine.video.errors import NoFramesError, SourceError, SourceWarning
from apclip.engine.video.preprocess import flatten_views, unflatten_views
from apclip.engine.video.sampling import sample_segment_indices
from apclip.engine.video.sources import Frame, SourceInfo, VideoSource
from apclip.testing.videos import codec_available, frame_pattern, read_frame_index, write_test_video

SMALL = Preprocessing(frames=8, clips=2, crops=2, resolution=32)


class FakeStream(VideoSource):
    """Generated frames with no file behind them: long or endless streams cost nothing to make."""

    def __init__(self, frames: int | None, fps: float = 25.0, size: tuple[int, int] = (64, 48),
                 announce: bool = False) -> None:
        super().__init__(SourceInfo("fake://stream", "stream", fps, frames if announce else None, *size))
        self._total, self._size = frames, size
        self.closed = False

    def _frames(self, select, limit) -> Iterator[Frame]:  # type: ignore[no-untyped-def]
        for index in itertools.count() if self._total is None else range(self._total):
            if limit is not None and index >= limit:
                return
            self.decoded_frames = index + 1
            timestamp = index / self.info.fps
            if select is None or select(index, timestamp):
                yield Frame(index, timestamp, frame_pattern(index, *self._size))
        self._finish(0)

    def close(self) -> None:
        self.closed = True


def _view_frame_numbers(clip: Clip) -> np.ndarray:
    """[V, T] frame numbers read back from the pixels of every view frame (undoing the normalisation)."""
    norm = clip.spec.normalization
    mean = np.array(norm.mean)[:, None, None]
    std = np.array(norm.std)[:, None, None]
    numbers = np.empty(clip.views.shape[:2], dtype=np.int64)
    for v, t in np.ndindex(*numbers.shape):
        rgb = (clip.views[v, t] * std + mean) / norm.scale  # [3, R, R] 0-255 RGB
        bgr = np.clip(rgb[::-1].transpose(1, 2, 0) + 0.5, 0, 255).astype(np.uint8)
        numbers[v, t] = read_frame_index(bgr)
    return numbers


@pytest.fixture(scope="module")
def video_300(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_video(tmp_path_factory.mktemp("clips") / "v300.avi", frames=300, size=(64, 48), fps=25.0)


def test_whole_video_clip_holds_the_sampled_frames(video_300: Path) -> None:
    clip = load_clip(video_300, SMALL)
    assert clip.views.shape == (4, 8, 3, 32, 32) and clip.views.dtype == np.float32
    expected = [[9, 46, 84, 121, 159, 196, 234, 271], [28, 65, 103, 140, 178, 215, 253, 290]]  # test_sampling
    # views: clip 0 crop 0, clip 0 crop 1, clip 1 crop 0, clip 1 crop 1
    assert clip.frame_indices.tolist() == [expected[0], expected[0], expected[1], expected[1]]
    np.testing.assert_array_equal(_view_frame_numbers(clip), clip.frame_indices)  # the pixels agree
    np.testing.assert_allclose(clip.timestamps, clip.frame_indices / 25.0, atol=1e-6)
    assert (clip.start, clip.end) == (0.0, pytest.approx(12.0))
    assert (clip.decoded_frames, clip.skipped_frames, clip.approximate) == (300, 0, False)
    assert clip.source.frame_count == 300
    assert not np.array_equal(clip.views[0], clip.views[1])  # left and right crops differ


def test_default_spec_is_the_papers_views(video_300: Path) -> None:
    clip = load_clip(video_300, Preprocessing(resolution=32))
    assert (clip.spec.frames, clip.spec.clips, clip.spec.crops, clip.spec.views) == (8, 2, 2, 4)
    assert clip.spec.normalization == NORMALIZATIONS["clip"]
    flat = flatten_views(clip.views)
    assert flat.shape == (32, 3, 32, 32)
    np.testing.assert_array_equal(unflatten_views(flat, 4), clip.views)


@pytest.mark.parametrize("codec,suffix", [("MJPG", ".avi"), ("mp4v", ".mp4"), ("FFV1", ".mkv")])
def test_three_crops_and_imagenet_normalisation_over_containers(tmp_path: Path, codec: str, suffix: str) -> None:
    if not codec_available(codec, suffix):
        pytest.skip(f"this OpenCV build cannot write and read {codec} in {suffix}")
    path = write_test_video(tmp_path / f"v{suffix}", frames=40, size=(96, 64), codec=codec)
    spec = Preprocessing(frames=4, clips=1, crops=3, resolution=32, normalization="imagenet255")
    clip = load_clip(path, spec)
    assert clip.views.shape == (3, 4, 3, 32, 32)
    assert clip.frame_indices.tolist() == [[5, 15, 25, 35]] * 3  # int(10 i + 5)
    np.testing.assert_array_equal(_view_frame_numbers(clip), clip.frame_indices)
    assert abs(float(clip.views.mean())) < 3  # 0-255 pixels normalised with ImageNet 0-255 constants


def test_fewer_frames_than_t_repeat(tmp_path: Path) -> None:
    path = write_test_video(tmp_path / "five.avi", frames=5, size=(64, 48))
    clip = load_clip(path, Preprocessing(frames=8, clips=1, crops=1, resolution=32))
    assert clip.frame_indices.tolist() == [[0, 0, 1, 2, 2, 3, 4, 4]]  # int(0.625 i + 0.3125)
    np.testing.assert_array_equal(clip.views[0, 0], clip.views[0, 1])
    np.testing.assert_array_equal(_view_frame_numbers(clip), clip.frame_indices)


def test_one_frame_video_fills_every_view(tmp_path: Path) -> None:
    path = write_test_video(tmp_path / "one.avi", frames=1, size=(64, 48))
    clip = load_clip(path, SMALL)
    assert (clip.frame_indices == 0).all()
    assert all(np.array_equal(clip.views[v, t], clip.views[v % 2, 0]) for v in range(4) for t in range(8))


def test_unknown_frame_count_is_exact_for_short_videos(tmp_path: Path) -> None:
    path = write_test_video(tmp_path / "short.avi", frames=50, size=(64, 48))
    trusted = load_clip(path, SMALL)
    counted = load_clip(path, SMALL, trust_frame_count=False)
    assert counted.frame_indices.tolist() == trusted.frame_indices.tolist() and not counted.approximate
    np.testing.assert_array_equal(counted.views, trusted.views)


def test_unknown_frame_count_is_close_for_long_videos(video_300: Path) -> None:
    clip = load_clip(video_300, SMALL, trust_frame_count=False)
    exact = np.repeat(sample_segment_indices(300, 8, 2), 2, axis=0)
    assert clip.approximate
    assert np.abs(clip.frame_indices - exact).max() <= 4  # 64 kept frames of 300: stride 8, error <= 4
    np.testing.assert_array_equal(_view_frame_numbers(clip), clip.frame_indices)


def test_truncated_video_samples_what_decoded(tmp_path: Path) -> None:
    path = write_test_video(tmp_path / "full.avi", frames=60, size=(64, 48))
    data = path.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.warns(SourceWarning, match="could not be decoded"):
        clip = load_clip(cut, SMALL)
    assert clip.approximate and 20 < clip.decoded_frames < 60
    assert clip.skipped_frames == 60 - clip.decoded_frames
    assert clip.frame_indices.max() < clip.decoded_frames
    intact = clip.frame_indices < clip.decoded_frames - 1  # the frame the cut runs through is partial
    np.testing.assert_array_equal(_view_frame_numbers(clip)[intact], clip.frame_indices[intact])


def test_zero_decodable_frames_raise_no_frames_error(tmp_path: Path) -> None:
    with pytest.raises(NoFramesError, match="no decodable frames in fake://stream"):
        load_clip(FakeStream(0, announce=True), SMALL)
    if not codec_available("FFV1", ".mkv"):
        pytest.skip("this OpenCV build cannot write FFV1 in .mkv")
    path = write_test_video(tmp_path / "one.mkv", frames=1, size=(64, 48), codec="FFV1")
    half = tmp_path / "half.mkv"
    half.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # header intact, frame cut
    with pytest.warns(SourceWarning), pytest.raises(NoFramesError, match=r"no decodable frames in .*half\.mkv"):
        load_clip(half, SMALL)


def test_train_mode_is_seeded(video_300: Path) -> None:
    first = load_clip(video_300, SMALL, mode="train", rng=np.random.default_rng(3))
    again = load_clip(video_300, SMALL, mode="train", rng=np.random.default_rng(3))
    assert first.frame_indices.tolist() == again.frame_indices.tolist()
    segment = 300 // 8
    lower = np.arange(8) * segment
    assert ((first.frame_indices >= lower) & (first.frame_indices < lower + segment)).all()
    np.testing.assert_array_equal(_view_frame_numbers(first), first.frame_indices)
    with pytest.raises(ValueError, match="rng"):
        load_clip(video_300, SMALL, mode="train")


def test_thread_pool_gives_identical_clips(video_300: Path) -> None:
    inline = load_clip(video_300, SMALL)
    pooled = load_clip(video_300, SMALL, workers=2)
    np.testing.assert_array_equal(inline.views, pooled.views)
    assert inline.frame_indices.tolist() == pooled.frame_indices.tolist()


def test_live_sources_need_windows_or_max_frames() -> None:
    stream = FakeStream(None)
    with pytest.raises(SourceError, match="fake://stream is a live source"):
        load_clip(stream, SMALL)
    clip = load_clip(FakeStream(None), SMALL, max_frames=80)
    assert clip.decoded_frames == 80 and clip.approximate is False
    assert clip.frame_indices[0].tolist() == sample_segment_indices(80, 8, 2)[0].tolist()
    np.testing.assert_array_equal(_view_frame_numbers(clip), clip.frame_indices)


def test_8k_frames_are_resized_one_at_a_time(tmp_path: Path) -> None:
    path = write_test_video(tmp_path / "8k.avi", frames=4, size=(7680, 4320), codec="MJPG")
    frame_bytes = 7680 * 4320 * 3
    tracemalloc.start()
    try:
        clip = load_clip(path, Preprocessing(frames=4, clips=1, crops=1, resolution=32))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert clip.frame_indices.tolist() == [[0, 1, 2, 3]]
    np.testing.assert_array_equal(_view_frame_numbers(clip), clip.frame_indices)
    assert peak < 1.5 * frame_bytes, f"peak {peak / 1e6:.0f} MB: full-resolution frames were held"


def test_clip_spec_round_trips_through_a_manifest_dict() -> None:
    spec = Preprocessing(frames=16, clips=4, crops=3, resolution=224, normalization="imagenet255")
    assert spec.normalization == NORMALIZATIONS["imagenet255"] and spec.views == 12
    assert Preprocessing.from_dict(spec.to_dict()) == spec
    assert Preprocessing.from_dict({**spec.to_dict(), "normalization": "clip"}).normalization == NORMALIZATIONS["clip"]
    with pytest.raises(ValueError, match="crops must be"):
        Preprocessing(crops=5)
    with pytest.raises(ValueError, match="unknown normalisation"):
        Preprocessing(normalization="nope")


# ---- sliding windows ----------------------------------------------------------------------------


def test_windows_over_a_long_video_count_time_and_memory(tmp_path: Path) -> None:
    path = write_test_video(tmp_path / "long.avi", frames=1500, size=(48, 32), fps=25.0)  # 60 s
    spec = Preprocessing(frames=8, clips=1, crops=1, resolution=32)
    windows = iter_window_clips(path, spec, span=2.0, stride=1.0)
    clips = list(windows)
    assert len(clips) == 59  # starts 0, 1, ..., 58 s; the window starting at 59 s would end past 60 s
    assert [c.start for c in clips] == [float(k) for k in range(59)]
    assert all(c.end == c.start + 2.0 for c in clips)
    # targets k + 0.125 + 0.25 i seconds, each served by the frame on screen then: floor(25 * t)
    expected = [[int(25 * (k + 0.125 + 0.25 * i)) for i in range(8)] for k in range(59)]
    assert [c.frame_indices[0].tolist() for c in clips] == expected
    np.testing.assert_allclose(clips[10].timestamps[0], np.array(expected[10]) / 25.0, atol=1e-6)
    np.testing.assert_array_equal(_view_frame_numbers(clips[30]), clips[30].frame_indices)
    assert windows.peak_buffered_frames <= windows.buffer_bound == 24  # (2 + 1) windows x 8 frames
    assert windows.peak_buffered_frames < 1500 / 50


def test_windows_in_frames_with_several_clips() -> None:
    spec = Preprocessing(frames=4, clips=2, crops=2, resolution=32)
    windows = iter_window_clips(FakeStream(100, announce=True), spec, span=20, stride=20, unit="frames")
    clips = list(windows)
    assert len(clips) == 5
    base = sample_segment_indices(20, 4, 2)  # [[1, 6, 11, 16], [3, 8, 13, 18]]
    for k, clip in enumerate(clips):
        assert clip.views.shape == (4, 4, 3, 32, 32)
        np.testing.assert_array_equal(clip.frame_indices, np.repeat(base + 20 * k, 2, axis=0))
        assert (clip.start, clip.end) == (pytest.approx(0.8 * k), pytest.approx(0.8 * k + 0.8))
    np.testing.assert_array_equal(_view_frame_numbers(clips[2]), clips[2].frame_indices)
    assert windows.peak_buffered_frames <= 8  # non-overlapping windows: one window's frames at most


def test_windows_on_an_endless_stream_close_it_when_the_consumer_stops() -> None:
    stream = FakeStream(None)
    windows = iter(iter_window_clips(stream, Preprocessing(frames=4, clips=1, crops=1, resolution=32),
                                     span=1.0, stride=0.5))
    first = list(itertools.islice(windows, 6))
    windows.close()  # what a consumer's break does to the generator
    assert [c.start for c in first] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert stream.closed is False  # a source passed in is the caller's to close


def test_source_shorter_than_a_window_raises() -> None:
    with pytest.raises(NoFramesError, match=r"ended after 30 frames, before its first window of 2 seconds"):
        list(iter_window_clips(FakeStream(30, announce=True), Preprocessing(resolution=32), span=2.0, stride=1.0))
