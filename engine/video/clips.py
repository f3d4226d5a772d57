"""Source -> clip: decode a whole video once, sample, preprocess; what inference and training call.

`load_clip(source, spec)` samples a whole video (test or train mode, see sampling.py) and returns a
`Clip` with views [V, T, 3, R, R]. With a known frame count the sampled indices are fixed before
decoding and only those frames are converted and resized. Without one (or with
`trust_frame_count=False`, for variable-frame-rate files whose header count is wrong) a
`StridedReservoir` of resized frames stands in, and the indices for the decoded count are served by
the nearest kept frames (`Clip.approximate`). When a file ends before its announced count
(truncated or corrupted), the indices are recomputed for the frames that decoded, likewise.

Sliding windows over streams and long videos are in windows.py (`iter_window_clips`).
"""
from __future__ import annotations

import collections
import concurrent.futures
from dataclasses import dataclass
from typing import Any

import numpy as np

from apclip.engine.video.errors import NoFramesError, SourceError
from apclip.engine.video.preprocess import resize_frame, spec_views
from apclip.engine.video.sampling import StridedReservoir, nearest_kept, sample_segment_indices, sample_train_indices
from apclip.engine.video.sources import SourceInfo, SourceSpec, open_source
from apclip.preprocessing import Preprocessing

# Frames the reservoir keeps for a source of unknown length: at least this, and 4 per sampled frame.
_MIN_KEPT = 64


@dataclass(frozen=True, eq=False)
class Clip:
    """One sampled, preprocessed clip (a whole video, or one window of a stream)."""

    views: np.ndarray  # [V, T, 3, R, R] float32; view v = clip * crops + crop
    frame_indices: np.ndarray  # [V, T] int64, index (among decoded frames) of every view frame
    timestamps: np.ndarray  # [V, T] float64 seconds of every view frame
    spec: Preprocessing
    source: SourceInfo
    start: float  # seconds: start of the video or window the clip was sampled from
    end: float  # seconds: its end
    decoded_frames: int  # frames the source had decoded when the clip was made
    skipped_frames: int  # frames lost to corruption or truncation (whole-video clips)
    approximate: bool = False  # True when nearest kept frames stood in for the formula's indices


class FrameResizer:
    """Resize frames as the profile says (preprocess.resize_frame) inline, or on a small thread pool
    (cv2 and PIL release the GIL).

    At most 2 * workers frames wait for the pool, so full-resolution frames never pile up.
    """

    def __init__(self, spec: Preprocessing, workers: int) -> None:
        self._spec = spec
        self._pool = concurrent.futures.ThreadPoolExecutor(workers) if workers > 0 else None
        self._pending: collections.deque[concurrent.futures.Future] = collections.deque()
        self._limit = 2 * workers

    def submit(self, image: np.ndarray) -> Any:
        if self._pool is None:
            return resize_frame(image, self._spec)
        future = self._pool.submit(resize_frame, image, self._spec)
        self._pending.append(future)
        while len(self._pending) > self._limit:
            self._pending.popleft().result()
        return future

    @staticmethod
    def get(handle: Any) -> np.ndarray:
        return handle.result() if isinstance(handle, concurrent.futures.Future) else handle

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def assemble_views(kept: dict[int, tuple[Any, float]], indices: np.ndarray, spec: Preprocessing) -> tuple[np.ndarray, ...]:
    """[N, T] indices into kept frames -> views [V, T, 3, R, R], indices [V, T], timestamps [V, T]."""
    frames = [[FrameResizer.get(kept[int(i)][0]) for i in row] for row in indices]
    times = np.array([[kept[int(i)][1] for i in row] for row in indices], dtype=np.float64)  # [N, T]
    views = spec_views(frames, spec)
    # [N, T] -> [V, T]: every clip's row repeated once per crop, matching the clip-major view order
    return views, np.repeat(indices, spec.crops, axis=0), np.repeat(times, spec.crops, axis=0)


@dataclass
class _TimeRange:
    """First and last timestamp seen, for a clip's start and end."""

    first: float = float("nan")
    last: float = float("nan")

    def see(self, timestamp: float) -> None:
        if self.first != self.first:  # nan: nothing seen yet
            self.first = timestamp
        self.last = timestamp

    def end(self, fps: float | None) -> float:
        return self.last + (1.0 / fps if fps else 0.0)


def load_clip(source: SourceSpec, spec: Preprocessing = Preprocessing(), *, mode: str = "test",
              rng: np.random.Generator | None = None, trust_frame_count: bool = True,
              max_frames: int | None = None, workers: int = 0, fps: float | None = None) -> Clip:
    """Decode `source` once and return its clip: spec.clips temporal clips x spec.crops crops.

    mode: "test" (deterministic segment centres) or "train" (random frame per segment; needs rng).
    trust_frame_count: plan with the container's frame count (False: count by decoding, for
      variable-frame-rate files whose header is wrong; indices are then approximate past max(64, 4 * T * N) frames).
    max_frames: decode at most this many frames (required for live sources such as cameras).
    workers: threads that resize frames while the next ones decode (0: resize inline).
    fps: frame rate of an image folder. A VideoSource passed in is left open for the caller.
    Raises SourceError / NoFramesError naming the source.
    """
    if mode not in ("test", "train"):
        raise ValueError(f"mode must be 'test' or 'train', got {mode!r}")
    if mode == "train" and rng is None:
        raise ValueError("train mode needs rng=np.random.default_rng(seed)")

    def draw(count: int) -> np.ndarray:  # [N, T]
        if mode == "train":
            return sample_train_indices(count, spec.frames, spec.clips, rng=rng)
        return sample_segment_indices(count, spec.frames, spec.clips)

    src = open_source(source, fps=fps)
    resizer = FrameResizer(spec, workers)
    try:
        info = src.info
        if info.live and max_frames is None:
            raise SourceError(f"{info.name} is a live source without an end: use iter_window_clips, "
                              "or pass max_frames to sample its first frames")
        # Plan with the smallest count known in advance; None: learn it by decoding.
        known = [n for n in (info.frame_count if trust_frame_count else None, max_frames) if n]
        count = min(known) if known else None
        planned = draw(count) if count is not None else None
        wanted = set(planned.ravel().tolist()) if planned is not None else set()
        reservoir: StridedReservoir[tuple[Any, float]] = StridedReservoir(max(_MIN_KEPT, 4 * spec.frames * spec.clips))
        kept: dict[int, tuple[Any, float]] = {}
        times = _TimeRange()

        def select(index: int, timestamp: float) -> bool:
            times.see(timestamp)
            return index in wanted if planned is not None else reservoir.wants(index)

        for frame in src.frames(select, limit=max_frames):
            entry = (resizer.submit(frame.image), frame.timestamp)
            if planned is not None:
                kept[frame.index] = entry
            else:
                reservoir.add(frame.index, entry)
            del frame  # release the full-resolution image before the next one decodes
        kept = kept if planned is not None else reservoir.items
        decoded = src.decoded_frames
        if not kept:
            raise NoFramesError(f"no decodable frames in {info.name}")
        indices, approximate = planned, False
        if planned is None or not wanted.issubset(kept):
            # Unknown count, or the file ended early: sample what decoded, served by the nearest kept frames.
            indices = nearest_kept(draw(decoded), kept)
            approximate = planned is not None or reservoir.stride > 1
        views, frame_indices, timestamps = assemble_views(kept, indices, spec)
        return Clip(views, frame_indices, timestamps, spec, info, times.first, times.end(info.fps),
                    decoded, src.skipped_frames, approximate)
    finally:
        resizer.close()
        if src is not source:
            src.close()
