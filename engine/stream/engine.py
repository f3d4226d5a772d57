"""Many sources, one model: lattice-sampled frames from every source batched into one encoder call,
each frame encoded once, each window scored from its source's ring of embeddings.

    engine = MultiStream(rec, ["rtsp://cam1/live", "rtsp://cam2/live", "lobby.mp4"], StreamSettings(window=2, stride=0.5))
    for window in engine:                 # WindowPrediction per window, `stream` = the source's number
        print(window.source, window.start, window.top[0].label)
    engine.stats                          # per source: windows, dropped, interrupted, frames, lag

The loop runs in the caller's thread: it waits until `max_batch` crops are pending over all sources or
`deadline` passed since the first one arrived, normalises and encodes them in one call, files each
frame's embeddings into its source's ring (engine/stream/ring.py) and scores every window that became
complete. Decode threads (engine/stream/feeds.py) never wait for each other, so a slow, stalled or dead
source holds up nobody but itself.
"""
from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from apclip.engine.predictions import WindowPrediction
from apclip.engine.runners.encoders import encode_in_batches
from apclip.engine.stream.feeds import FeedEvent, FeedOptions, FeedQueue, SampledFrame, SourceFeed, source_name
from apclip.engine.stream.ring import PointFrame, RingWindow, WindowRing
from apclip.engine.video.clips import Clip
from apclip.engine.video.errors import NoFramesError
from apclip.engine.video.lattice import StreamLattice
from apclip.engine.video.preprocess import normalize
from apclip.engine.video.sources import SourceInfo, SourceSpec

_LAG_SAMPLES = 100_000  # lags kept per source for percentiles (the most recent ones)
_JOIN_SECONDS = 2.0  # how long closing waits for decode threads (one stuck in a network read is left to die)


@dataclass
class StreamSettings:
    window: float = 2.0  # span, in unit
    stride: float = 1.0  # between window starts, in unit
    unit: str = "seconds"  # seconds | frames
    max_batch: int = 32  # crops per encoder call, over all sources
    deadline: float = 0.02  # seconds a partial batch waits for more frames
    feed: FeedOptions = field(default_factory=FeedOptions)


@dataclass
class SourceStats:
    name: str
    windows: int = 0  # scored and yielded
    dropped: int = 0  # lost because the encoder fell behind a live source
    interrupted: int = 0  # open when a live source broke
    frames_encoded: int = 0  # sampled frames (each C crops)
    reconnects: int = 0
    status: str = "starting"  # starting | running | ended | failed | reconnecting
    error: str | None = None
    lags: collections.deque = field(default_factory=lambda: collections.deque(maxlen=_LAG_SAMPLES))

    def to_dict(self) -> dict:
        lags = np.array(self.lags) * 1000 if self.lags else None
        return {"source": self.name, "windows": self.windows, "dropped": self.dropped,
                "interrupted": self.interrupted, "frames_encoded": self.frames_encoded,
                "reconnects": self.reconnects, "status": self.status, "error": self.error,
                "lag_ms": None if lags is None else {"p50": float(np.percentile(lags, 50)),
                                                     "p99": float(np.percentile(lags, 99)),
                                                     "max": float(lags.max())}}


@dataclass
class _Feed:
    """Engine-side state of one source."""

    thread: SourceFeed
    queue: FeedQueue
    stats: SourceStats
    ring: WindowRing
    epoch: int = 0
    origin: float | None = None
    base: int = 0  # window number of ring window 0 (numbers continue across reconnects)
    done: bool = False  # its thread ended and everything it queued was handled
    info: SourceInfo | None = None  # what the source said when it opened


class MultiStream:
    def __init__(self, rec, sources: Sequence[SourceSpec], settings: StreamSettings | None = None, *,
                 topk: int | None = None, explain: bool = False, on_event: Callable[[FeedEvent], None] | None = None,
                 raise_errors: bool = False) -> None:
        """rec: a Recognizer. raise_errors: a source that fails raises here (one-source streams) instead of
        being reported through on_event and stats."""
        self.rec = rec
        self.sources = list(sources)
        self.settings = settings or StreamSettings()
        self.pre = rec.manifest.preprocessing.with_clips(1)
        self.lattice = StreamLattice.plan(self.settings.window, self.settings.stride, self.settings.unit,
                                          self.pre.frames)
        self.topk, self.explain = topk, explain
        self.on_event = on_event or (lambda event: None)
        self.raise_errors = raise_errors
        self.stats = [SourceStats(source_name(s)) for s in self.sources]
        self.encoder_calls = 0
        self.encoder_seconds = 0.0
        self.images_encoded = 0

    # -- the loop -------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[WindowPrediction]:
        cond = threading.Condition()
        stop = threading.Event()
        events: queue.SimpleQueue[FeedEvent] = queue.SimpleQueue()

        def emit(event: FeedEvent) -> None:
            events.put(event)
            with cond:
                cond.notify_all()

        feeds = []
        for number, (spec, stats) in enumerate(zip(self.sources, self.stats)):
            # A window needs T queued frames after a drop to complete: the queue holds two windows at least.
            q = FeedQueue(max(self.settings.feed.queue_frames, 2 * self.pre.frames), cond)
            thread = SourceFeed(number, spec, self.lattice, self.pre, q, emit, stop, self.settings.feed)
            feeds.append(_Feed(thread, q, stats, WindowRing(self.lattice, self.pre.crops)))
        self._feeds = feeds
        for feed in feeds:
            feed.thread.start()
        try:
            while True:
                batch = self._collect(feeds, cond, events)
                self._handle_events(feeds, events)
                touched = self._handle_lost(feeds, cond)
                if batch:
                    touched |= self._encode(feeds, batch)
                for number in sorted(touched):
                    yield from self._windows(feeds[number])
                if self._finish(feeds) and not batch and events.empty():
                    return
        finally:
            stop.set()
            with cond:
                cond.notify_all()
            deadline = time.monotonic() + _JOIN_SECONDS
            for feed in feeds:
                feed.thread.join(max(0.0, deadline - time.monotonic()))

    def _collect(self, feeds: list[_Feed], cond: threading.Condition, events) -> list[SampledFrame]:
        """Wait for a full batch or the deadline after the first pending frame; take frames round-robin."""
        crops, limit = self.pre.crops, max(1, self.settings.max_batch)
        first_seen = None
        with cond:
            while True:
                pending = sum(len(f.queue.items) for f in feeds)
                alive = any(f.thread.is_alive() for f in feeds)
                if pending * crops >= limit or (pending and not alive):
                    break
                now = time.monotonic()
                if pending:
                    first_seen = first_seen or now
                    if now - first_seen >= self.settings.deadline:
                        break
                    cond.wait(self.settings.deadline - (now - first_seen))
                    continue
                if not alive or not events.empty():
                    break
                cond.wait(0.1)
            batch: list[SampledFrame] = []
            while len(batch) * crops < limit:
                took = False
                for feed in feeds:  # one frame per source per turn: no source starves the others
                    if feed.queue.items and len(batch) * crops < limit:
                        batch.append(feed.queue.items.popleft())
                        took = True
                if not took:
                    break
            cond.notify_all()  # room for file feeds waiting on a full queue
        return batch

    def _encode(self, feeds: list[_Feed], batch: list[SampledFrame]) -> set[int]:
        crops = np.stack([f.crops for f in batch])  # B x [C, R, R, 3] -> [B, C, R, R, 3]
        b, c = crops.shape[:2]
        pixels = normalize(crops.reshape((b * c,) + crops.shape[2:]), self.pre.normalization)  # [B*C, 3, R, R]
        t = time.perf_counter()
        embeddings = encode_in_batches(self.rec.vision, pixels)  # [B*C, E]
        self.encoder_seconds += time.perf_counter() - t
        self.encoder_calls += 1
        self.images_encoded += b * c
        embeddings = embeddings.reshape(b, c, -1)  # [B*C, E] -> [B, C, E]
        touched = set()
        for frame, rows in zip(batch, embeddings):
            feed = feeds[frame.feed]
            if not self._enter_epoch(feed, frame.epoch):
                continue
            if feed.origin is None:
                feed.origin = frame.origin
            feed.stats.frames_encoded += 1
            feed.ring.add(frame.points, PointFrame(rows, frame.index, frame.timestamp, frame.decoded_at))
            feed.info = frame.info
            touched.add(frame.feed)
        return touched

    def _enter_epoch(self, feed: _Feed, epoch: int) -> bool:
        """False for a frame of a connection already left behind; a newer one restarts the ring."""
        if epoch < feed.epoch:
            return False
        if epoch > feed.epoch:
            ring = feed.ring
            held = [n for n in list(ring.points) + list(ring.lost)]
            open_windows = (max(held) // self.lattice.step - ring.next_window + 1) if held else 0
            feed.stats.interrupted += max(0, open_windows)
            feed.base += ring.next_window + max(0, open_windows)
            feed.ring = WindowRing(self.lattice, self.pre.crops)
            feed.epoch, feed.origin = epoch, None
        return True

    def _handle_lost(self, feeds: list[_Feed], cond: threading.Condition) -> set[int]:
        touched = set()
        for number, feed in enumerate(feeds):
            with cond:
                lost, feed.queue.lost = feed.queue.lost, []
            for epoch, points in lost:
                if self._enter_epoch(feed, epoch):
                    feed.ring.lose(points)
                    touched.add(number)
        return touched

    def _handle_events(self, feeds: list[_Feed], events) -> None:
        while not events.empty():
            event = events.get()
            stats = feeds[event.feed].stats
            if event.kind in ("opened", "reconnected"):
                stats.status = "running"
                stats.reconnects += event.kind == "reconnected"
            elif event.kind in ("lost", "retry"):
                stats.status = "reconnecting"
            elif event.kind == "failed":
                stats.status, stats.error = "failed", event.message
                if self.raise_errors:
                    raise event.error if event.error is not None else NoFramesError(event.message)
            self.on_event(event)

    def _finish(self, feeds: list[_Feed]) -> bool:
        """Mark feeds whose thread ended and whose frames were all handled; True when all are."""
        for feed in feeds:
            if feed.done or feed.thread.is_alive() or feed.queue.items or feed.queue.lost:
                continue
            feed.done = True
            stats = feed.stats
            if stats.status in ("running", "starting"):
                stats.status = "ended"
            if stats.status == "ended" and stats.windows == 0 and stats.dropped == 0:
                message = (f"{stats.name} ended after {feed.thread.decoded_frames} frames, before its first window "
                           f"of {self.lattice.span:g} {self.lattice.unit} was complete: score the whole video "
                           f"(apclip-infer --mode clip, or load_clip) or use a shorter window")
                stats.status, stats.error = "failed", message
                if self.raise_errors:
                    raise NoFramesError(message)
                self.on_event(FeedEvent(feeds.index(feed), "failed", message))
        return all(feed.done for feed in feeds)

    # -- windows -> predictions ---------------------------------------------------------------------------
    def _windows(self, feed: _Feed) -> Iterator[WindowPrediction]:
        dropped = 0
        for window in feed.ring.ready():
            if window.embeddings is None:
                dropped += 1
                continue
            yield self._predict(feed, window)
        if dropped:
            feed.stats.dropped += dropped
            self.on_event(FeedEvent(feed.thread.number, "dropped",
                                    f"{feed.stats.name}: {dropped} window(s) dropped, encoding is behind real time "
                                    f"({feed.stats.dropped} so far, {feed.queue.dropped_frames} frames)"))

    def _predict(self, feed: _Feed, window: RingWindow) -> WindowPrediction:
        lattice, info = self.lattice, feed.info
        if lattice.unit == "seconds":
            start = lattice.start(window.number, feed.origin or 0.0)
            end = start + lattice.span
        elif info.fps:
            start = lattice.start(window.number) / info.fps
            end = start + lattice.span / info.fps
        else:
            start, end = float(window.timestamps[0, 0]), float(window.timestamps[0, -1])
        clip = Clip(np.empty((0,), np.float32), window.frame_indices, window.timestamps, self.pre, info, start, end,
                    feed.thread.decoded_frames, 0)
        pred = WindowPrediction(source=feed.stats.name, top=[], scores=np.zeros(0), index=feed.base + window.number,
                                start=float(start), end=float(end), stream=feed.thread.number)
        t = time.perf_counter()
        self.rec.rank(pred, window.embeddings, clip, {}, self.topk or self.rec.topk, self.explain)
        lag = time.monotonic() - window.decoded_at
        pred.timings = {"score": time.perf_counter() - t, "lag": lag}
        feed.stats.windows += 1
        feed.stats.lags.append(lag)
        return pred

    @property
    def peak_queued(self) -> int:
        """Most sampled frames one source had waiting for the encoder (bounded by FeedOptions.queue_frames)."""
        return max((f.queue.peak for f in getattr(self, "_feeds", [])), default=0)

    @property
    def frames_per_window(self) -> float:
        """Sampled frames encoded per window scored so far (T for today's re-encoding path)."""
        windows = sum(s.windows + s.dropped for s in self.stats)
        return sum(s.frames_encoded for s in self.stats) / windows if windows else float("nan")
