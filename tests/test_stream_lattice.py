"""Stream mode's lattice and ring: the same frames as sliding windows, each encoded once, and scores equal,
bit for bit, to encoding and scoring each window from its own frames."""
from __future__ import annotations

import itertools
from typing import Iterator

import cv2
import numpy as np
import pytest

from apclip.engine.stream.ring import PointFrame, WindowRing
from apclip.engine.video.lattice import LatticeSampler, StreamLattice
from apclip.engine.video.sampling import WindowPlan
from apclip.engine.video.sources import Frame, SourceInfo, VideoSource
from apclip.engine.video.windows import iter_window_clips
from apclip.preprocessing import Preprocessing
from apclip.testing.videos import frame_pattern, write_test_video


class Generated(VideoSource):
    def __init__(self, frames: int, fps: float) -> None:
        super().__init__(SourceInfo("generated", "file", fps, frames, 64, 48))
        self._total = frames

    def _frames(self, select, limit) -> Iterator[Frame]:  # type: ignore[no-untyped-def]
        for index in range(self._total):
            self.decoded_frames = index + 1
            timestamp = index / self.info.fps
            if select is None or select(index, timestamp):
                yield Frame(index, timestamp, frame_pattern(index, 64, 48))
        self._finish(0)


# -- the lattice ------------------------------------------------------------------------------------------
def test_default_lattice_shares_six_of_eight_frames():
    lattice = StreamLattice.plan(2.0, 0.5, "seconds", 8)
    assert (lattice.grid, lattice.step, lattice.snapped) == (0.25, 2, False)
    assert lattice.points(3).tolist() == list(range(6, 14))
    assert lattice.new_points_per_window == 2  # 8 / 2: the encoder does a quarter of the work
    assert lattice.max_open_windows == 4


@pytest.mark.parametrize("span, stride, unit", [(2.0, 0.5, "seconds"), (2.0, 1.0, "seconds"), (3.0, 2.0, "seconds"),
                                                (2.0, 0.3, "seconds"), (1.0, 3.0, "seconds"), (20, 5, "frames"),
                                                (13, 4, "frames")])
def test_lattice_points_are_the_sliding_windows_targets(span, stride, unit):
    """Window k's lattice positions are the segment centres WindowPlan gives window k (clip-mode formula)."""
    lattice = StreamLattice.plan(span, stride, unit, 8)
    plan = WindowPlan(span, stride, unit, 8, 1)
    assert not lattice.snapped
    for k in range(6):
        positions = [lattice.position(int(n)) for n in lattice.points(k)]
        np.testing.assert_allclose(positions, plan.targets(k)[0], rtol=0, atol=1e-9)
    earlier = set(np.concatenate([lattice.points(k) for k in range(8)]).tolist())
    assert lattice.new_points_per_window == len(set(lattice.points(8).tolist()) - earlier)


def test_a_stride_off_every_grid_is_snapped_to_the_frame_spacing():
    lattice = StreamLattice.plan(2.0, 0.25 * (1 + np.pi / 1000), "seconds", 8)
    assert lattice.snapped and lattice.stride == 0.25 and lattice.step == 1


@pytest.mark.parametrize("span, stride, fps, frames", [(2.0, 0.5, 10.0, 60), (2.0, 1.0, 7.0, 50), (3.0, 2.0, 10.0, 80),
                                                       (1.0, 0.5, 3.0, 30), (20, 5, 25.0, 90)])
def test_sampler_and_ring_serve_the_frames_sliding_windows_serve(span, stride, fps, frames):
    """Every window the ring completes holds the decoded frames iter_window_clips samples for it (also when
    a slow source has fewer frames than points, and one frame serves several points)."""
    unit = "frames" if isinstance(span, int) else "seconds"
    spec = Preprocessing(frames=8, clips=1, crops=1, resolution=32)
    expected = [clip.frame_indices[0].tolist()
                for clip in iter_window_clips(Generated(frames, fps), spec, span=span, stride=stride, unit=unit)]
    lattice = StreamLattice.plan(span, stride, unit, 8)
    sampler, ring = LatticeSampler(lattice, fps), WindowRing(lattice, crops=1)
    got, sampled = [], 0
    for frame in Generated(frames, fps).frames(sampler.select):
        points = sampler.claim(frame.index)
        sampled += 1
        ring.add(points, PointFrame(np.full((1, 4), frame.index, np.float32), frame.index, frame.timestamp, 0.0))
        got += [w.frame_indices[0].tolist() for w in ring.ready()]
        assert len(ring.points) <= (lattice.max_open_windows + 1) * 8  # bounded: the open windows' points
    assert got == expected
    # every converted frame serves an emitted window, except those of the windows the video ends inside
    assert 0 <= sampled - len({i for w in expected for i in w}) < 8


def test_ring_orders_rows_as_clip_mode_and_drops_windows_with_a_lost_point():
    lattice = StreamLattice.plan(4, 2, "frames", 4)  # points k*2 + [0, 1, 2, 3]... int(i + 0.5) = i
    ring = WindowRing(lattice, crops=2)
    for n in range(4):
        ring.add([n], PointFrame(np.array([[n, 0.0], [n, 1.0]], np.float32), n, n / 10, 0.0))  # [C=2, E=2]
    [window] = ring.ready()
    # [C*T, E] view-major: crop 0's four frames, then crop 1's
    assert window.embeddings[:, 1].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert window.embeddings[:4, 0].tolist() == [0, 1, 2, 3]
    ring.lose([5])
    ring.add([4], PointFrame(np.zeros((2, 2), np.float32), 4, 0.4, 0.0))
    dropped = list(ring.ready())  # windows 1 (points 2..5) and 2 (4..7) need the lost point 5
    assert [(w.number, w.embeddings) for w in dropped] == [(1, None), (2, None)]
    assert ring.next_window == 3 and min(ring.points, default=6) >= 6  # released: nothing later needs them


# -- encode once, score from the ring: equal to each window encoded on its own -------------------------------
ort = pytest.importorskip("onnxruntime")
FPS = 10.0


class RowByRow:
    """A vision runner fed one image at a time, so an image's embedding does not depend on its batch."""

    def __init__(self, runner) -> None:
        self.runner, self.name, self.batch_size = runner, runner.name, runner.batch_size
        self.images = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.images += len(batch)
        return np.concatenate([self.runner(batch[i:i + 1]) for i in range(len(batch))])


@pytest.fixture(scope="module")
def row_rec(tiny_bundle):
    from apclip.engine import Recognizer

    rec = Recognizer.from_bundle(tiny_bundle, backend="ort", scorer="numpy")
    rec.vision = RowByRow(rec.vision)
    return rec


@pytest.fixture(scope="module")
def six_seconds(tmp_path_factory):
    return write_test_video(tmp_path_factory.mktemp("video") / "six.avi", frames=60, size=(96, 72), fps=FPS)


def decoded_frames(path) -> list[np.ndarray]:
    capture, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, image = capture.read()
        if not ok:
            return frames
        frames.append(image)


def recomputed_scores(rec, frames: list[np.ndarray], start: float, span: float) -> np.ndarray:
    """The window from scratch: frames on screen at its segment centres, preprocessed, encoded, scored."""
    from apclip.engine.scoring.scorers import NumpyScorer
    from apclip.engine.video.preprocess import flatten_views, preprocess_clip

    pre = rec.manifest.preprocessing.with_clips(1)
    centres = start + (np.arange(pre.frames) + 0.5) * span / pre.frames  # seconds
    window = [frames[int(np.floor(t * FPS + 1e-9))] for t in centres]
    views = preprocess_clip(window, pre)  # [C, T, 3, R, R]
    emb = rec.vision(flatten_views(views))  # [C*T, E]
    return NumpyScorer()(emb[None], rec.classes)[0]


def test_stream_scores_equal_each_window_recomputed_bit_for_bit(row_rec, six_seconds):
    from apclip.engine.stream.engine import StreamSettings

    frames = decoded_frames(six_seconds)
    engine = row_rec.stream_many([six_seconds], StreamSettings(window=2.0, stride=0.5))
    windows = list(engine)
    assert [w.start for w in windows] == pytest.approx([0.5 * k for k in range(len(windows))])
    assert len(windows) == 9  # starts 0 .. 4 s; the window at 4.5 s would sample past the 6 s video
    for w in windows:
        np.testing.assert_array_equal(w.scores, recomputed_scores(row_rec, frames, w.start, 2.0))
    # 8 frames for the first window, then 2 new ones per window: (8 + 8 * 2) / 9 frames per window
    assert engine.stats[0].frames_encoded == 8 + 2 * (len(windows) - 1)
    assert engine.frames_per_window == pytest.approx(24 / 9)


def test_many_sources_batched_together_score_as_each_alone(row_rec, six_seconds, tmp_path):
    from apclip.engine.stream.engine import StreamSettings

    other = write_test_video(tmp_path / "other.avi", frames=45, size=(80, 80), fps=15.0)
    settings = StreamSettings(window=2.0, stride=1.0, max_batch=48)
    alone = [[w.scores for w in row_rec.stream_many([s], settings)] for s in (six_seconds, other)]
    engine = row_rec.stream_many([six_seconds, other, six_seconds], settings)
    together = list(engine)
    assert engine.encoder_calls < sum(s.frames_encoded for s in engine.stats)  # frames shared encoder calls
    for number, expected in enumerate([alone[0], alone[1], alone[0]]):
        got = [w for w in together if w.stream == number]
        assert [w.index for w in got] == list(range(len(expected)))
        for w, scores in zip(got, expected):
            np.testing.assert_array_equal(w.scores, scores)


def test_batched_ort_scores_match_the_recomputed_window(tiny_bundle, six_seconds):
    """The real runner batches frames of different windows together: equal within fp32 noise."""
    from apclip.engine import Recognizer

    rec = Recognizer.from_bundle(tiny_bundle, backend="ort", scorer="numpy")
    frames = decoded_frames(six_seconds)
    for w in rec.stream(six_seconds, window=2.0, stride=0.5):
        np.testing.assert_allclose(w.scores, recomputed_scores(rec, frames, w.start, 2.0), rtol=0, atol=1e-5)
