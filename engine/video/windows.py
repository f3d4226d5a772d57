"""Stream or long video -> one `Clip` per sliding window, emitted as soon as its last frame decodes.

`iter_window_clips(source, spec, span=, stride=, unit=)` holds only the frames some open window still
needs (at most `(ceil(span / stride) + 1) * T * N` resized frames), never the whole video, so memory
stays flat over a stream that runs for days. Whole videos are clips.py's `load_clip`.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from apclip.engine.video.clips import Clip, FrameResizer, assemble_views
from apclip.engine.video.errors import NoFramesError
from apclip.engine.video.sampling import WindowPlan
from apclip.engine.video.sources import SourceSpec, VideoSource, open_source
from apclip.preprocessing import Preprocessing


@dataclass
class _OpenWindow:
    number: int  # k: the window starts at origin + k * stride
    targets: np.ndarray  # [N * T] positions to fill, in plan units
    start_seconds: float
    frames: np.ndarray = field(init=False)  # [N * T] decoded-frame index serving each target, -1: none yet

    def __post_init__(self) -> None:
        self.frames = np.full(self.targets.shape, -1, dtype=np.int64)


class _WindowAssembler:
    """Serves the targets of open windows with decoded frames and holds each frame until no window needs it.

    A target is served by the frame on screen at it: the first frame with position + period > target
    (position: frame index, period 1, in "frames" units; timestamp and 1 / fps in "seconds").
    """

    def __init__(self, plan: WindowPlan, fps: float | None) -> None:
        self.plan = plan
        self.by_frames = plan.unit == "frames"
        self.period = 1.0 if self.by_frames else (1.0 / fps if fps else 1e-6)
        self.windows: collections.deque[_OpenWindow] = collections.deque()
        self.held: dict[int, tuple[Any, float]] = {}  # frame index -> (resized frame or future, timestamp)
        self.users: collections.Counter[int] = collections.Counter()  # open-window targets per held frame
        self.origin: float | None = None
        self.next_window = 0
        self.awaited: int | None = None  # last frame selected; not held by the next call: it failed

    def select(self, index: int, timestamp: float) -> bool:
        position = float(index) if self.by_frames else timestamp
        if self.origin is None:
            self.origin = 0.0 if self.by_frames else timestamp
        if self.awaited is not None and self.awaited not in self.held:  # selected but not converted
            for window in self.windows:
                window.frames[window.frames == self.awaited] = -1
            self.users.pop(self.awaited, None)
        horizon = position + self.period
        while self.plan.start(self.next_window, self.origin) < horizon:  # windows this frame may serve
            k = self.next_window
            start_seconds = timestamp if self.by_frames else self.plan.start(k, self.origin)
            self.windows.append(_OpenWindow(k, self.plan.targets(k, self.origin).ravel(), start_seconds))
            self.next_window += 1
        served = 0
        for window in self.windows:
            due = (window.frames < 0) & (window.targets < horizon)
            window.frames[due] = index
            served += int(due.sum())
        if served:
            self.users[index] += served
        self.awaited = index if served else None
        return served > 0

    def hold(self, index: int, handle: Any, timestamp: float) -> None:
        self.held[index] = (handle, timestamp)

    def complete(self) -> Iterator[_OpenWindow]:
        """Pop the windows whose frames are all held, oldest first (windows complete in order)."""
        while self.windows and all(int(i) in self.held for i in self.windows[0].frames):
            yield self.windows.popleft()

    def release(self, window: _OpenWindow) -> None:
        for i in window.frames.tolist():
            self.users[i] -= 1
            if self.users[i] <= 0:
                del self.users[i]
                self.held.pop(i, None)


class WindowClips:
    """Iterable of `Clip`s, one per sliding window; see iter_window_clips."""

    def __init__(self, source: SourceSpec, spec: Preprocessing, plan: WindowPlan, workers: int = 0,
                 fps: float | None = None) -> None:
        self.spec, self.plan = spec, plan
        self.peak_buffered_frames = 0  # most resized frames held at once
        self._source_spec, self._workers, self._fps = source, workers, fps

    @property
    def buffer_bound(self) -> int:
        """Resized frames held at most: every window that can be open at once, T * N frames each."""
        return (self.plan.max_open_windows + 1) * self.spec.frames * self.spec.clips

    def __iter__(self) -> Iterator[Clip]:
        src = open_source(self._source_spec, fps=self._fps)
        resizer = FrameResizer(self.spec, self._workers)
        try:
            yield from self._windows(src, resizer)
        finally:
            resizer.close()
            if src is not self._source_spec:
                src.close()

    def _windows(self, src: VideoSource, resizer: FrameResizer) -> Iterator[Clip]:
        info = src.info
        windows = _WindowAssembler(self.plan, info.fps)
        emitted = 0
        for frame in src.frames(windows.select):
            now = frame.timestamp
            windows.hold(frame.index, resizer.submit(frame.image), now)
            del frame  # release the full-resolution image before the next one decodes
            self.peak_buffered_frames = max(self.peak_buffered_frames, len(windows.held))
            for window in windows.complete():
                yield self._clip(window, windows.held, src, now)
                windows.release(window)
                emitted += 1
        if src.decoded_frames == 0:
            raise NoFramesError(f"no decodable frames in {info.name}")
        if emitted == 0:
            raise NoFramesError(
                f"{info.name} ended after {src.decoded_frames} frames, before its first window of "
                f"{self.plan.span:g} {self.plan.unit} was complete: score the whole video (apclip-infer --mode clip, or load_clip) or use a shorter window"
            )

    def _clip(self, window: _OpenWindow, held: dict[int, tuple[Any, float]], src: VideoSource, now: float) -> Clip:
        indices = window.frames.reshape(self.spec.clips, self.spec.frames)  # [N * T] -> [N, T]
        views, frame_indices, timestamps = assemble_views(held, indices, self.spec)
        fps = src.info.fps
        if self.plan.unit == "seconds":
            end = window.start_seconds + self.plan.span
        else:  # in frames: the span at the nominal rate, or up to the frame that completed the window
            end = window.start_seconds + self.plan.span / fps if fps else now
        return Clip(views, frame_indices, timestamps, self.spec, src.info, window.start_seconds, end,
                    src.decoded_frames, src.skipped_frames)


def iter_window_clips(source: SourceSpec, spec: Preprocessing = Preprocessing(clips=1), *, span: float = 2.0,
                      stride: float = 1.0, unit: str = "seconds", workers: int = 0,
                      fps: float | None = None) -> WindowClips:
    """Sliding windows of `span` every `stride` (seconds or frames), each a Clip of spec.clips x T frames.

    Windows are emitted as soon as their last frame decodes; a trailing window the source ends
    inside is dropped, and a source shorter than one window raises NoFramesError. Window start/end
    are seconds (in "frames" units: the start frame's timestamp, plus span / fps). A VideoSource
    passed in is left open for the caller.
    """
    return WindowClips(source, spec, WindowPlan(span, stride, unit, spec.frames, spec.clips), workers, fps)
