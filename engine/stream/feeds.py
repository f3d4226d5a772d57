"""One decode thread per source: open (and, for live sources, reopen with backoff), sample the lattice,
resize and crop each sampled frame, and hand it to a bounded queue the encoder loop drains.

Queue policy. A file or image folder is read no faster than it is encoded: its thread waits for room,
and every window comes out. A live source (camera, RTSP, HTTP, or a file paced with `realtime`) cannot
wait: when its queue is full the oldest half is dropped at once (one contiguous block, so the windows
after it are whole again) and the windows that needed those frames are counted as dropped. Memory stays
bounded by `queue_frames` crops per source whatever the encoder's speed.

Live sources that end or break reconnect after 0.5 s, doubling to `max_backoff`, each attempt said in one
line; the lattice restarts at the first frame after a reconnect, and windows that straddled the gap are
counted as interrupted. A source that cannot be opened the first time, or a file, ends the feed.
"""
from __future__ import annotations

import collections
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from apclip.errors import ApclipError
from apclip.engine.video.errors import SourceError
from apclip.engine.video.lattice import LatticeSampler, StreamLattice
from apclip.engine.video.preprocess import crop_views, resize_frame
from apclip.engine.video.sources import STREAM_SCHEMES, SourceInfo, SourceSpec, VideoSource, _redact, open_source
from apclip.preprocessing import Preprocessing


@dataclass(frozen=True, eq=False)
class SampledFrame:
    """A decoded frame some lattice points need, cropped and ready to normalise."""

    feed: int  # source number
    epoch: int  # connection number (0, then +1 per reconnect)
    points: list[int]  # lattice points it serves
    index: int  # decoded frame index within the connection
    timestamp: float  # seconds since the source first opened
    origin: float  # lattice origin of this connection, seconds (frames: 0)
    crops: np.ndarray  # [C, R, R, 3] uint8 BGR
    decoded_at: float  # time.monotonic()
    info: SourceInfo


@dataclass(frozen=True)
class FeedEvent:
    feed: int
    kind: str  # opened | lost | retry | reconnected | ended | failed
    message: str
    error: BaseException | None = None


@dataclass
class FeedOptions:
    queue_frames: int = 32  # sampled frames waiting for the encoder, per source
    realtime: bool = False  # pace files to their timestamps and drop when behind, as a camera
    backoff: float = 0.5  # first reconnect delay, seconds; doubles per failed attempt
    max_backoff: float = 30.0
    timeout: float | None = None  # network open/read timeout, seconds (default: sources.py's)
    fps: float | None = None  # frame rate of image folders


def source_name(spec: SourceSpec) -> str:
    """What messages call a source before it opens (URLs without their password)."""
    if isinstance(spec, VideoSource):
        return spec.info.name
    text = str(spec)
    if _camera(spec):
        return f"camera {text}"
    return _redact(text) if text.split(":", 1)[0].lower() in STREAM_SCHEMES else text


def is_live_spec(spec: SourceSpec) -> bool:
    if isinstance(spec, VideoSource):
        return spec.info.live
    return _camera(spec) or str(spec).split(":", 1)[0].lower() in STREAM_SCHEMES


def _camera(spec: SourceSpec) -> bool:
    """A camera index, as open_source reads one (a folder named "0" is a folder)."""
    return isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit() and not os.path.exists(spec))


class FeedQueue:
    """A bounded FIFO of SampledFrames for one feed; all feeds share the engine's condition."""

    def __init__(self, capacity: int, cond: threading.Condition) -> None:
        self.capacity = max(2, capacity)
        self.cond = cond
        self.items: collections.deque[SampledFrame] = collections.deque()
        self.lost: list[tuple[int, list[int]]] = []  # (epoch, points) dropped, for the engine to count
        self.dropped_frames = 0
        self.peak = 0  # most frames queued at once

    def put(self, item: SampledFrame, drop: bool, stop: threading.Event) -> None:
        with self.cond:
            while len(self.items) >= self.capacity:
                if drop:  # behind real time: the oldest half goes, in one block
                    for _ in range(max(1, len(self.items) // 2)):
                        old = self.items.popleft()
                        self.lost.append((old.epoch, old.points))
                        self.dropped_frames += 1
                    break
                if stop.is_set():
                    return
                self.cond.wait(0.1)
            self.items.append(item)
            self.peak = max(self.peak, len(self.items))
            self.cond.notify_all()


class SourceFeed(threading.Thread):
    def __init__(self, number: int, spec: SourceSpec, lattice: StreamLattice, pre: Preprocessing,
                 queue: FeedQueue, events: Callable[[FeedEvent], None], stop: threading.Event,
                 options: FeedOptions) -> None:
        super().__init__(name="apclip-decode", daemon=True)
        self.number, self.spec, self.lattice, self.pre = number, spec, lattice, pre
        self.queue, self.emit, self.stop, self.options = queue, events, stop, options
        self.name_ = source_name(spec)
        self.live = is_live_spec(spec)
        self.decoded_frames = 0  # all connections
        self.sampled_frames = 0
        self.first_window_seen = False  # set by the engine when a window of this feed completes

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # a bug or an unexpected decoder error: this feed ends, the others go on
            self.emit(FeedEvent(self.number, "failed", f"{self.name_}: {_one_line(exc)}", exc))
        finally:
            with self.queue.cond:
                self.queue.cond.notify_all()

    def _run(self) -> None:
        epoch, attempt, offset = 0, 0, 0.0
        first_open = time.monotonic()
        lost_at = 0.0
        while not self.stop.is_set():
            try:
                src = open_source(self.spec, fps=self.options.fps, timeout=self.options.timeout)
            except (ApclipError, OSError) as exc:
                if epoch == 0:  # the first open: a wrong path or URL, said at once
                    self.emit(FeedEvent(self.number, "failed", _one_line(exc), exc))
                    return
                attempt += 1
                delay = self._delay(attempt)
                self.emit(FeedEvent(self.number, "retry", f"{self.name_}: reconnect attempt {attempt} failed "
                                                          f"({_one_line(exc)}); next in {delay:g} s"))
                self._sleep(delay)
                continue
            live = self.live or src.info.live or self.options.realtime
            if epoch == 0:
                self.emit(FeedEvent(self.number, "opened", f"{self.name_}: opened ({_describe(src.info)})"))
            else:
                self.emit(FeedEvent(self.number, "reconnected", f"{self.name_}: reconnected after "
                                                                f"{time.monotonic() - lost_at:.1f} s"))
                offset = time.monotonic() - first_open  # source time keeps running across the gap
            attempt = 0
            error = self._read(src, epoch, offset, live)
            if src is not self.spec:
                src.close()
            if self.stop.is_set():
                return
            if not (self.live or src.info.live):  # a file or folder ended: normal
                if src.decoded_frames == 0 and error is None:
                    error = f"no decodable frames in {src.info.name}"
                self.emit(FeedEvent(self.number, "ended" if error is None else "failed",
                                    f"{self.name_}: " + ("ended" if error is None else error)))
                return
            if isinstance(self.spec, VideoSource):  # an object passed in cannot be reopened
                self.emit(FeedEvent(self.number, "ended", f"{self.name_}: ended"))
                return
            epoch += 1
            lost_at = time.monotonic()
            delay = self._delay(1)
            self.emit(FeedEvent(self.number, "lost", f"{self.name_}: stream lost"
                                                     f"{' (' + error + ')' if error else ''}; reconnecting in "
                                                     f"{delay:g} s"))
            self._sleep(delay)

    def _read(self, src: VideoSource, epoch: int, offset: float, drop: bool) -> str | None:
        """Sample one connection until it ends; the reason it broke, or None."""
        sampler = LatticeSampler(self.lattice, src.info.fps)
        pre = self.pre
        start = time.monotonic()
        try:
            for frame in src.frames(sampler.select):
                if self.stop.is_set():
                    return None
                points = sampler.claim(frame.index)
                if not points:
                    continue
                if self.options.realtime and not src.info.live:  # pace a file as a camera would deliver it
                    wait = start + frame.timestamp - time.monotonic()
                    if wait > 0:
                        self._sleep(wait)
                crops = crop_views(resize_frame(frame.image, pre), pre.resolution, pre.crops, pre.profile)
                index, timestamp = frame.index, frame.timestamp
                del frame  # the full-resolution image, before the next one decodes
                self.sampled_frames += 1
                origin = (sampler.origin or 0.0) + (offset if self.lattice.unit == "seconds" else 0.0)
                self.queue.put(SampledFrame(self.number, epoch, points, index, timestamp + offset, origin, crops,
                                            time.monotonic(), src.info), drop, self.stop)
        except (ApclipError, OSError) as exc:
            return _one_line(exc)
        finally:
            self.decoded_frames += src.decoded_frames
        return None

    def _delay(self, attempt: int) -> float:
        return min(self.options.max_backoff, self.options.backoff * 2 ** (attempt - 1))

    def _sleep(self, seconds: float) -> None:
        self.stop.wait(seconds)


def _describe(info: SourceInfo) -> str:
    fps = f"{info.fps:g} fps" if info.fps else "unknown fps"
    return f"{info.kind}, {info.width}x{info.height}, {fps}"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
