"""Video sources: one interface yielding decoded frames in order, each decoded once.

`open_source(spec)` accepts a video file (any container/codec OpenCV's FFmpeg build decodes), a folder
of image frames, a camera index (`0` or "0"), or a network stream URL (rtsp://, rtsps://, http://,
https://). Every source yields `Frame(index, timestamp, image)` with `image` BGR uint8 [H, W, 3]:
grayscale, 16-bit and 4-channel pixels are converted, rotation metadata is applied by the decoder.

`VideoSource.frames(select)` is a single pass (no seeking, no second pass). `select(index, timestamp)`
lets the caller say which frames it wants before they are converted: every frame is still decoded
(a video cannot skip decoding), but unwanted ones are never colour-converted or yielded, which is most
of the per-frame cost once decoding is done.

Frames that fail to decode are skipped and counted: `skipped_frames` is the larger of the read
failures that were followed by a good frame and, for files, the shortfall against the container's
frame count. One `SourceWarning` with the count is issued when a pass ends.
"""
from __future__ import annotations

import os
import re
import time
import warnings
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Union
from urllib.parse import urlsplit, urlunsplit
from urllib.request import url2pathname

import cv2
import numpy as np

from apclip.engine.video.errors import SourceError, SourceWarning

STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")
DEFAULT_IMAGE_FPS = 30.0  # image folders carry no frame rate; override with open_source(..., fps=)

# Consecutive failed reads after which a source counts as ended. A file at its end fails at once,
# but corrupted packets mid-file also fail a few reads before good frames resume.
_FILE_MAX_FAILURES = 64
_LIVE_MAX_FAILURES = 5  # each failure of a network stream or camera may wait for a read timeout
_STREAM_TIMEOUT_MS = 10_000
_MAX_FPS = 1000.0  # streams report 90 kHz clock rates as fps; anything above this is not a frame rate

Select = Callable[[int, float], bool]
SourceSpec = Union["VideoSource", str, int, os.PathLike]


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame."""

    index: int  # position among the frames the source decoded, from 0
    timestamp: float  # presentation time in seconds (files: from the container; live: since the first frame)
    image: np.ndarray  # [H, W, 3] uint8 BGR


@dataclass(frozen=True)
class SourceInfo:
    """What a source says about itself before decoding."""

    name: str  # how messages refer to it: a path, "camera 0", or a URL without credentials
    kind: str  # "file" | "images" | "camera" | "stream"
    fps: float | None  # nominal frame rate; None when the source does not give a usable one
    frame_count: int | None  # frames the container announces; None when unknown (live sources)
    width: int  # frame width in pixels after rotation
    height: int  # frame height in pixels after rotation
    rotation: int = 0  # degrees of rotation metadata the decoder applied (0, 90, 180, 270)

    @property
    def live(self) -> bool:
        """True for sources without an end: cameras and streams of unknown length."""
        return self.frame_count is None and self.kind in ("camera", "stream")

    @property
    def duration(self) -> float | None:
        if self.frame_count is None or not self.fps:
            return None
        return self.frame_count / self.fps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def to_bgr8(image: np.ndarray) -> np.ndarray:
    """Any decoded image -> [H, W, 3] uint8 BGR (gray, BGRA, 16-bit and float 0-1 are converted)."""
    if image.dtype != np.uint8:
        if image.dtype == np.uint16:
            image = (image >> 8).astype(np.uint8)  # keep the 8 most significant bits, as cv2.imread does
        elif np.issubdtype(image.dtype, np.floating):
            image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        else:
            raise ValueError(f"unsupported pixel type {image.dtype}")
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.shape[2] != 3:
        raise ValueError(f"unsupported image shape {image.shape}")
    return image


class VideoSource(ABC):
    """Frames in decode order from one source; `frames()` may be called once."""

    def __init__(self, info: SourceInfo) -> None:
        self.info = info
        self.decoded_frames = 0  # frames passed so far, selected or not (unreadable ones excluded)
        self.skipped_frames = 0  # frames that could not be decoded (set when a pass ends)
        self._started = False

    def frames(self, select: Select | None = None, limit: int | None = None) -> Iterator[Frame]:
        """Yield the frames for which `select(index, timestamp)` is true (all when None), in order.

        limit: stop after this many decoded frames (no end-of-source accounting then).
        """
        if self._started:
            raise RuntimeError(f"{self.info.name}: frames() was already called; a source is read once")
        self._started = True
        return self._frames(select, limit)

    @abstractmethod
    def _frames(self, select: Select | None, limit: int | None) -> Iterator[Frame]: ...

    def close(self) -> None:
        """Release the decoder; idempotent."""

    def _finish(self, glitches: int) -> None:
        """Count the frames lost in a pass that reached its end and warn once."""
        shortfall = (self.info.frame_count or 0) - self.decoded_frames
        self.skipped_frames = max(glitches, shortfall)
        if self.skipped_frames:
            announced = f" of the {self.info.frame_count} announced" if self.info.frame_count else ""
            warnings.warn(
                f"{self.info.name}: {self.skipped_frames} frame(s){announced} could not be decoded "
                f"(corrupted or truncated); continuing with the {self.decoded_frames} that did",
                SourceWarning, stacklevel=2,
            )

    def __enter__(self) -> "VideoSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.info.name!r})"


class CaptureSource(VideoSource):
    """A cv2.VideoCapture: files, cameras and network streams differ only in how they open and end."""

    def __init__(self, capture: cv2.VideoCapture, name: str, kind: str) -> None:
        # Rotation metadata (phones) is applied by the decoder; width/height then report the rotated size.
        capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
        fps = capture.get(cv2.CAP_PROP_FPS)
        count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        info = SourceInfo(
            name=name, kind=kind,
            fps=float(fps) if np.isfinite(fps) and 0 < fps <= _MAX_FPS else None,
            frame_count=int(count) if kind != "camera" and np.isfinite(count) and 0 < count < 2**40 else None,
            width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            rotation=int(capture.get(cv2.CAP_PROP_ORIENTATION_META)) % 360,
        )
        super().__init__(info)
        self._capture = capture
        self._max_failures = _FILE_MAX_FAILURES if kind == "file" else _LIVE_MAX_FAILURES

    def _frames(self, select: Select | None, limit: int | None) -> Iterator[Frame]:
        capture, count = self._capture, self.info.frame_count
        clock = _Clock(self.info)
        failures = glitches = 0
        while True:
            if limit is not None and self.decoded_frames >= limit:
                return
            if not capture.grab():
                failures += 1
                # With a known count, a failure past it is the end; before it, maybe a corrupted packet.
                if failures >= self._max_failures or (count is not None and self.decoded_frames >= count):
                    break
                continue
            glitches += failures  # failed reads followed by a good frame were frames lost mid-stream
            failures = 0
            index = self.decoded_frames
            self.decoded_frames += 1
            timestamp = clock.timestamp(capture.get(cv2.CAP_PROP_POS_MSEC))
            if select is not None and not select(index, timestamp):
                continue
            ok, image = capture.retrieve()
            if not ok or image is None or image.size == 0:
                glitches += 1
                continue
            yield Frame(index, timestamp, to_bgr8(image))
            del image  # before the next retrieve: an 8K frame is 100 MB
        self._finish(glitches)

    def close(self) -> None:
        self._capture.release()


class _Clock:
    """Frame timestamps: the decoder's presentation time while it increases, else a derived one.

    Files keep their container time; live sources count from their first frame, and fall back to
    the wall clock when the decoder gives no usable time (many cameras report 0).
    """

    def __init__(self, info: SourceInfo) -> None:
        self._period = 1.0 / info.fps if info.fps else None
        self._from_first = info.kind in ("camera", "stream")
        self._origin: float | None = None
        self._wall_origin = 0.0  # wall-clock time of the first frame
        self._last: float | None = None

    def timestamp(self, pos_msec: float) -> float:
        seconds = pos_msec / 1000.0 if np.isfinite(pos_msec) and pos_msec >= 0 else None
        if seconds is not None and self._from_first:
            if self._origin is None:
                self._origin = seconds
            seconds -= self._origin
        if self._last is None:
            self._wall_origin = time.monotonic()
        if seconds is None or (self._last is not None and seconds <= self._last):
            if self._last is None:
                seconds = 0.0
            elif self._from_first or self._period is None:
                seconds = max(time.monotonic() - self._wall_origin, self._last + 1e-6)
            else:
                seconds = self._last + self._period
        self._last = seconds
        return seconds


class ImageFolderSource(VideoSource):
    """Image files of a folder in natural order (frame2 before frame10) at a given frame rate."""

    def __init__(self, folder: Path, fps: float | None = None) -> None:
        files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                       key=_natural_key)
        if not files:
            raise SourceError(f"no images in folder {folder} (looked for {', '.join(IMAGE_EXTENSIONS)})")
        self._files = files
        # The first readable image gives the size; it is kept so that no file is decoded twice.
        self._first: tuple[int, np.ndarray] | None = None
        self._unreadable = 0
        for position, path in enumerate(files):
            image = _read_image(path)
            if image is not None:
                self._first = (position, image)
                break
            self._unreadable += 1
        if self._first is None:
            raise SourceError(f"no readable images in folder {folder} ({len(files)} files failed to decode)")
        height, width = self._first[1].shape[:2]
        rate = float(fps) if fps else DEFAULT_IMAGE_FPS
        super().__init__(SourceInfo(str(folder), "images", rate, len(files), width, height))

    def _frames(self, select: Select | None, limit: int | None) -> Iterator[Frame]:
        assert self._first is not None  # set by __init__, which raises otherwise
        first_position, first_image = self._first
        self._first = None
        glitches = self._unreadable
        period = 1.0 / self.info.fps if self.info.fps else 0.0
        for position in range(first_position, len(self._files)):
            if limit is not None and self.decoded_frames >= limit:
                return
            index = self.decoded_frames
            timestamp = index * period
            if select is not None and not select(index, timestamp):
                self.decoded_frames += 1
                continue
            image = first_image if position == first_position else _read_image(self._files[position])
            if image is None:
                glitches += 1
                continue
            self.decoded_frames += 1
            yield Frame(index, timestamp, image)
        self._finish(glitches)


# Largest image of an image folder ($APCLIP_MAX_IMAGE_PIXELS, default 8K x 8K). A PNG header may claim
# 100000 x 100000 in a few bytes; the header is read (PIL, no decode) before anything is allocated, and
# such an image is skipped like an unreadable one, not the whole folder.
MAX_IMAGE_PIXELS = int(os.environ.get("APCLIP_MAX_IMAGE_PIXELS", str(8192 * 8192)))


def _image_size_ok(path: Path) -> bool:
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: the limit below decides
            with Image.open(path) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        return False
    except Exception:  # not an image PIL knows: OpenCV decides (its own limit is 2^30 pixels)
        return True
    return width * height <= MAX_IMAGE_PIXELS


def _read_image(path: Path) -> np.ndarray | None:
    if not _image_size_ok(path):
        return None
    # IMREAD_COLOR applies EXIF orientation and converts gray / 16-bit / alpha to 8-bit BGR.
    data = np.fromfile(str(path), dtype=np.uint8)  # fromfile + imdecode: non-ASCII paths work everywhere
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except cv2.error:  # e.g. over CV_IO_MAX_IMAGE_PIXELS: this image is unreadable, not the folder
        return None
    return None if image is None else to_bgr8(image)


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def open_source(spec: SourceSpec, *, fps: float | None = None, threads: int | None = None,
                timeout: float | None = None) -> VideoSource:
    """Open a file, image folder, camera index or stream URL; raise SourceError naming it if impossible.

    fps: frame rate of an image folder (default 30). threads: FFmpeg decoding threads for files
    (default: FFmpeg's choice). timeout: seconds a stream URL may take to open or to deliver a packet
    (default 10).
    """
    if isinstance(spec, VideoSource):
        return spec
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit() and not os.path.exists(spec)):
        return _open_camera(int(spec))
    if isinstance(spec, str):
        parts = urlsplit(spec)
        scheme = parts.scheme.lower()
        if len(scheme) > 1:  # a one-letter "scheme" is a Windows drive
            if scheme == "file":
                return open_source(Path(url2pathname(parts.path)), fps=fps, threads=threads)
            if scheme in STREAM_SCHEMES:
                return _open_stream(spec, timeout)
            raise SourceError(
                f"unsupported URL scheme {scheme!r} in {_redact(spec)}: use a file path, an image folder, "
                f"a camera index, or an {'/'.join(STREAM_SCHEMES)} URL"
            )
    path = Path(spec)
    if path.is_dir():
        return ImageFolderSource(path, fps)
    if not path.exists():
        raise SourceError(f"video file not found: {path}")
    if not path.is_file():
        raise SourceError(f"not a regular file: {path}")
    if path.stat().st_size == 0:
        raise SourceError(f"cannot open video {path}: the file is empty")
    params = [cv2.CAP_PROP_N_THREADS, int(threads)] if threads else []
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, params)
    if not capture.isOpened():
        raise SourceError(f"cannot open video {path}: OpenCV's FFmpeg backend does not recognise its "
                          "format (not a video, or badly damaged)")
    return CaptureSource(capture, str(path), "file")


def _open_camera(index: int) -> VideoSource:
    capture = cv2.VideoCapture(index)
    if not capture.isOpened():
        raise SourceError(f"cannot open camera {index}: no such device, or it is busy")
    return CaptureSource(capture, f"camera {index}", "camera")


def _open_stream(url: str, timeout: float | None = None) -> VideoSource:
    ms = int(timeout * 1000) if timeout else _STREAM_TIMEOUT_MS
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
    capture = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
    if not capture.isOpened():
        raise SourceError(f"cannot open stream {_redact(url)}: unreachable, refused, or not a video")
    return CaptureSource(capture, _redact(url), "stream")


def _redact(url: str) -> str:
    """The URL with any password replaced, for messages and metadata."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
