"""Which frames make a clip: test-mode segment sampling with N temporal clips, train-mode random
sampling, sliding windows, and the fallback for sources whose frame count is unknown.

Test mode (deterministic, ViFi-CLIP). A video of F frames is cut into T segments of avg = F / T frames;
temporal clip j of N takes, from every segment i, the frame at the j-th of N evenly spaced offsets:

    index[j, i] = min(int(i * avg + avg * (2j + 1) / (2N)), F - 1)        i < T, j < N

With N = 1 the offset is avg / 2: ViFi-CLIP's test sampling (mmaction SampleFrames, clip_len=1,
test_mode=True), int(i * avg + avg / 2), computed with the same floating-point operations. With N > 1,
clip j is clip 0 shifted by j * avg / N frames. ViFi-CLIP's own multi-clip test instead draws N random
train-mode clips; fixed offsets keep inference reproducible. When F < T segments are shorter than a
frame and frames repeat (F = 1: every index is 0). F = 0 is an error.

Train mode (ViFi-CLIP's train sampling, mmaction `_get_train_clips` with clip_len=1): segments of
F // T whole frames and a random frame in each; when F < T, round(i * F / T). The F mod T frames past
the last whole segment are never drawn, as in ViFi-CLIP. N clips are N independent draws.

Unknown frame count: `StridedReservoir` keeps every s-th frame in at most `capacity` slots, doubling s
when full; at the end, the indices above are computed for the decoded count and each one is served by
the nearest kept frame (`nearest_kept`), which is exact while the video has at most `capacity` frames
and otherwise at most s / 2 frames away (s <= 2 * frames / capacity).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Generic, Iterable, TypeVar

import numpy as np

Item = TypeVar("Item")


def _check_counts(frames: int, clips: int) -> None:
    if frames < 1 or clips < 1:
        raise ValueError(f"frames and clips must be >= 1, got frames={frames} clips={clips}")


def segment_positions(length: float, frames: int, clips: int = 1) -> np.ndarray:
    """[clips, frames] float64 positions in [0, length): i * avg + avg * (2j + 1) / (2 * clips)."""
    _check_counts(frames, clips)
    avg = length / float(frames)
    base = np.arange(frames) * avg  # [T]
    offsets = np.array([avg * (2 * j + 1) / (2 * clips) for j in range(clips)])  # [N]
    return base[None, :] + offsets[:, None]  # [N, T]


def sample_segment_indices(num_frames: int, frames: int, clips: int = 1) -> np.ndarray:
    """Test-mode indices [clips, frames] int64 for a video of `num_frames` frames (formula above)."""
    if num_frames < 1:
        raise ValueError(f"cannot sample from a video with {num_frames} frames")
    positions = segment_positions(num_frames, frames, clips)
    return np.minimum(positions.astype(np.int64), num_frames - 1)  # astype truncates, as int() does


def sample_train_indices(num_frames: int, frames: int, clips: int = 1, *,
                         rng: np.random.Generator) -> np.ndarray:
    """Train-mode indices [clips, frames] int64: a random frame per segment, one draw per clip."""
    if num_frames < 1:
        raise ValueError(f"cannot sample from a video with {num_frames} frames")
    _check_counts(frames, clips)
    segment = num_frames // frames
    if segment == 0:
        # Fewer frames than T: every clip is the same evenly spread, repeating selection.
        row = np.around(np.arange(frames) * (num_frames / frames)).astype(np.int64)
        return np.repeat(row[None, :], clips, axis=0)
    base = np.arange(frames, dtype=np.int64) * segment  # [T]
    return base[None, :] + rng.integers(segment, size=(clips, frames))  # [N, T]


def nearest_kept(targets: np.ndarray, kept: Iterable[int]) -> np.ndarray:
    """Each target index replaced by the nearest kept index (the lower one on ties); same shape."""
    available = np.array(sorted(kept), dtype=np.int64)
    if available.size == 0:
        raise ValueError("no frames were kept")
    right = np.clip(np.searchsorted(available, targets), 0, available.size - 1)
    left = np.clip(right - 1, 0, available.size - 1)
    take_left = np.abs(targets - available[left]) <= np.abs(available[right] - targets)
    return np.where(take_left, available[left], available[right])


class StridedReservoir(Generic[Item]):
    """Every `stride`-th item of a sequence of unknown length, in at most `capacity` slots.

    Offer indices in increasing order; when the slots overflow, the stride doubles and the items
    off the new stride are dropped, so the kept items stay evenly spread over everything offered.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be >= 2, got {capacity}")
        self.capacity = capacity
        self.stride = 1
        self.items: dict[int, Item] = {}

    def wants(self, index: int) -> bool:
        return index % self.stride == 0

    def add(self, index: int, item: Item) -> None:
        self.items[index] = item
        if len(self.items) > self.capacity:
            self.stride *= 2
            self.items = {i: v for i, v in self.items.items() if i % self.stride == 0}


@dataclass(frozen=True)
class WindowPlan:
    """Sliding windows over a stream: window k covers [origin + k * stride, + span) in `unit`.

    Each window holds `clips` temporal clips of `frames` frames at the test-mode segment positions
    of the window (the formula above with F = span). In "frames" units these are frame indices; in
    "seconds" units, times, served by the frame on screen at that time.
    """

    span: float  # window length, in `unit`
    stride: float  # distance between consecutive window starts, in `unit`
    unit: str = "seconds"  # "seconds" | "frames"
    frames: int = 8  # T, frames per clip
    clips: int = 1  # N, temporal clips per window

    def __post_init__(self) -> None:
        if self.unit not in ("seconds", "frames"):
            raise ValueError(f"unit must be 'seconds' or 'frames', got {self.unit!r}")
        if not (self.span > 0 and self.stride > 0):
            raise ValueError(f"span and stride must be > 0, got span={self.span} stride={self.stride}")
        if self.unit == "frames" and not (float(self.span).is_integer() and float(self.stride).is_integer()):
            raise ValueError(f"span and stride in frames must be whole numbers, got {self.span}, {self.stride}")
        _check_counts(self.frames, self.clips)

    def start(self, window: int, origin: float = 0.0) -> float:
        return origin + window * self.stride

    def targets(self, window: int, origin: float = 0.0) -> np.ndarray:
        """[clips, frames] float64 positions (frame indices or seconds) that window `window` samples."""
        if self.unit == "frames":
            offsets = sample_segment_indices(int(self.span), self.frames, self.clips).astype(np.float64)
        else:
            offsets = segment_positions(self.span, self.frames, self.clips)
        return self.start(window, origin) + offsets

    @property
    def max_open_windows(self) -> int:
        """Windows whose frames can be held at once: the ones overlapping a point in time."""
        return math.ceil(self.span / self.stride)
