"""Stream mode's sampling lattice: every window samples points of one fixed grid, so overlapping windows
share frames and each sampled frame is encoded once.

Clip mode (sampling.py) places T segment centres over the whole video. Stream mode uses the same
segment centres inside each window of `span` every `stride`: window k samples

    seconds:  start_k + (i + 0.5) * span / T        frames:  start_k + int(i * avg + avg / 2), avg = span / T

These are points of one lattice. In seconds, with d = span / T and the smallest r (1..64) for which
stride is a whole multiple p of the grid g = d / r, point n sits at origin + (n + r / 2) * g and window k
samples points k * p + r * i (i < T). With the defaults (2 s windows every 0.5 s, T = 8): d = 0.25 s,
r = 1, p = 2, so consecutive windows share 6 of their 8 frames and each window brings 2 new ones. A
stride that is no multiple of any d / r is snapped to the nearest multiple of d (`snapped`). In frames
the grid is one frame (point n is decoded frame n) and window k samples k * stride + int(i * avg + avg / 2).

A point is served by the frame on screen at its position, as in windows.py: the first decoded frame
whose position + period passes it (one frame may serve several points of a slow source).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

from apclip.engine.video.sampling import WindowPlan, sample_segment_indices

_MAX_SUBDIVISION = 64  # finest grid tried: d / 64


@dataclass(frozen=True)
class StreamLattice:
    """Windows of `span` every `stride` (unit) of T frames, as points of one grid (module docstring)."""

    span: float
    stride: float  # the stride windows really use (the requested one, unless snapped)
    unit: str
    frames: int  # T
    grid: float  # g: distance between neighbouring points, in unit
    step: int  # p: window k starts at point k * step
    offsets: tuple[int, ...]  # [T] window k samples points k * step + offsets
    centre: float  # point n sits at origin + (n + centre) * grid
    snapped: bool = False  # the requested stride was no multiple of the grid and was rounded

    @classmethod
    def plan(cls, span: float, stride: float, unit: str = "seconds", frames: int = 8) -> "StreamLattice":
        WindowPlan(span, stride, unit, frames, 1)  # the same argument checks as sliding windows
        if unit == "frames":
            offsets = sample_segment_indices(int(span), frames, 1)[0]  # [T]
            return cls(span, stride, unit, frames, 1.0, int(stride), tuple(int(o) for o in offsets), 0.0)
        d = span / frames
        for r in range(1, _MAX_SUBDIVISION + 1):
            ratio = stride * r / d
            if abs(ratio - round(ratio)) <= 1e-9 * max(1.0, ratio) and round(ratio) >= 1:
                return cls(span, stride, unit, frames, d / r, int(round(ratio)), tuple(r * i for i in range(frames)),
                           r / 2.0)
        p = max(1, round(stride / d))
        return cls(span, p * d, unit, frames, d, p, tuple(range(frames)), 0.5, snapped=True)

    def points(self, window: int) -> np.ndarray:
        """[T] int64 lattice points window `window` samples, in frame order."""
        return window * self.step + np.asarray(self.offsets, dtype=np.int64)

    def position(self, point: int, origin: float = 0.0) -> float:
        return origin + (point + self.centre) * self.grid

    def start(self, window: int, origin: float = 0.0) -> float:
        return origin + window * self.step * self.grid

    @property
    def new_points_per_window(self) -> int:
        """Points a window adds to those of the windows before it, once the stream runs (encoder work per window)."""
        k = max(4, -(-self.offsets[-1] // self.step) + 2)  # a window far enough from the start
        earlier = set(np.concatenate([self.points(j) for j in range(k)]).tolist())
        return len(set(self.points(k).tolist()) - earlier)

    @property
    def max_open_windows(self) -> int:
        """Windows that can share one point: how many windows a lost point costs at most."""
        return -(-(self.offsets[-1] + 1) // self.step)


@dataclass
class LatticeSampler:
    """Decode-thread side: which decoded frames serve which lattice points (VideoSource.frames' `select`).

    select(index, timestamp) opens the windows starting before the frame's horizon and gives the frame
    every point that is due; claim(index) hands those points over once the frame was really converted
    (a frame that fails to convert leaves its points to the next one).
    """

    lattice: StreamLattice
    fps: float | None
    origin: float | None = None
    next_window: int = 0
    _pending: list[int] = field(default_factory=list)  # heap of opened points not yet served
    _opened: set[int] = field(default_factory=set)  # points pushed, pruned below the next window's first
    _chosen: tuple[int, list[int]] | None = None  # (frame index, points) selected and not yet claimed

    @property
    def _period(self) -> float:
        if self.lattice.unit == "frames":
            return 1.0
        return 1.0 / self.fps if self.fps else 1e-6

    def select(self, index: int, timestamp: float) -> bool:
        if self._chosen is not None:  # the last selected frame never arrived: its points wait for this one
            for n in self._chosen[1]:
                heapq.heappush(self._pending, n)
            self._chosen = None
        by_frames = self.lattice.unit == "frames"
        position = float(index) if by_frames else timestamp
        if self.origin is None:
            self.origin = 0.0 if by_frames else timestamp
        horizon = position + self._period
        while self.lattice.start(self.next_window, self.origin) < horizon:
            for n in self.lattice.points(self.next_window).tolist():
                if n not in self._opened:
                    self._opened.add(n)
                    heapq.heappush(self._pending, n)
            self.next_window += 1
            floor = int(self.lattice.points(self.next_window)[0]) - self.lattice.offsets[-1]
            self._opened = {n for n in self._opened if n >= floor}
        due = []
        while self._pending and self.lattice.position(self._pending[0], self.origin) < horizon:
            due.append(heapq.heappop(self._pending))
        if due:
            self._chosen = (index, due)
        return bool(due)

    def claim(self, index: int) -> list[int]:
        """The points of frame `index`, which select() chose and the source delivered."""
        if self._chosen is None or self._chosen[0] != index:
            return []
        points, self._chosen = self._chosen[1], None
        return points
