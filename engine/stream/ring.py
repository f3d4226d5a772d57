"""One source's bounded ring of frame embeddings, from which each window is scored.

Every lattice point (engine/video/lattice.py) arrives once with the embeddings of its C crops; a window
is complete when all its T points are in the ring, and its embeddings are those points' rows in the
order clip mode encodes a window ([C, T] view-major). Points no later window needs are released, so the
ring holds at most the points of the windows open at once. A point lost before encoding (dropped when the
encoder fell behind) makes every window that needs it a dropped window.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from apclip.engine.video.lattice import StreamLattice


@dataclass(frozen=True)
class PointFrame:
    """The frame that served a lattice point, and its embeddings."""

    embeddings: np.ndarray  # [C, E] one row per crop
    index: int  # decoded frame index
    timestamp: float  # seconds (source time)
    decoded_at: float  # time.monotonic() when the frame was decoded: the start of its window's lag


@dataclass(frozen=True)
class RingWindow:
    """A complete window (embeddings set) or a dropped one (embeddings None)."""

    number: int  # k
    embeddings: np.ndarray | None  # [C*T, E] view-major, as flatten_views orders a clip
    frame_indices: np.ndarray  # [C, T] int64 (-1 where a point was lost)
    timestamps: np.ndarray  # [C, T] float64
    decoded_at: float  # latest decode time among its frames


class WindowRing:
    def __init__(self, lattice: StreamLattice, crops: int) -> None:
        self.lattice = lattice
        self.crops = crops
        self.points: dict[int, PointFrame] = {}
        self.lost: set[int] = set()
        self.next_window = 0
        self.peak_points = 0  # most points held at once (bounded by the open windows)

    def add(self, points: list[int], frame: PointFrame) -> None:
        floor = int(self.lattice.points(self.next_window)[0])
        for n in points:
            if n >= floor:
                self.points[n] = frame
        self.peak_points = max(self.peak_points, len(self.points))

    def lose(self, points: list[int]) -> None:
        self.lost.update(points)

    def ready(self) -> Iterator[RingWindow]:
        """Windows whose points are all resolved (in the ring or lost), in order."""
        while True:
            points = self.lattice.points(self.next_window).tolist()
            lost = any(n in self.lost for n in points)
            if not lost and not all(n in self.points for n in points):
                return
            frames = [self.points.get(n) for n in points]
            yield self._window(self.next_window, frames, lost)
            self.next_window += 1
            self._release()

    def _window(self, number: int, frames: list[PointFrame | None], lost: bool) -> RingWindow:
        c = self.crops
        indices = np.array([f.index if f else -1 for f in frames], dtype=np.int64)  # [T]
        times = np.array([f.timestamp if f else np.nan for f in frames], dtype=np.float64)  # [T]
        decoded_at = max((f.decoded_at for f in frames if f), default=0.0)
        embeddings = None
        if not lost:
            stacked = np.stack([f.embeddings for f in frames])  # T x [C, E] -> [T, C, E]
            # [T, C, E] -> [C, T, E] -> [C*T, E]: view-major, the order clip mode encodes a window in
            embeddings = np.ascontiguousarray(stacked.transpose(1, 0, 2)).reshape(c * len(frames), -1)
        return RingWindow(number, embeddings, np.repeat(indices[None], c, axis=0), np.repeat(times[None], c, axis=0),
                          decoded_at)

    def _release(self) -> None:
        floor = int(self.lattice.points(self.next_window)[0])
        for n in [n for n in self.points if n < floor]:
            del self.points[n]
        self.lost = {n for n in self.lost if n >= floor}
