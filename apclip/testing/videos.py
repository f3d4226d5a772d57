"""Generated videos and image folders for tests, demos and benchmarks (cv2.VideoWriter; no downloads).

Every frame differs from the others and from black: a moving square over a shifting gradient. The
top quarter of every frame is a flat band whose colour encodes the frame number (4 bits per BGR
channel, 16 levels apart), so `read_frame_index` recovers it from a decoded, resized, cropped frame
even after lossy compression: tests use it to check which frames a clip really holds.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np

from apclip.fileio import atomic_write

_LEVEL = 16  # intensity step between the 16 levels of one index digit
MAX_FRAMES = _LEVEL ** 3  # indices the band can encode; longer videos repeat the band every MAX_FRAMES


def band_color(index: int) -> tuple[int, int, int]:
    """BGR colour of the index band: one base-16 digit per channel, at the centre of its level."""
    return tuple((index // _LEVEL ** k) % _LEVEL * _LEVEL + _LEVEL // 2 for k in range(3))  # type: ignore[return-value]


def band_height(height: int) -> int:
    return max(1, height // 4)


def frame_pattern(index: int, width: int, height: int) -> np.ndarray:
    """Frame `index` of the generated video: [height, width, 3] uint8 BGR."""
    if index < 0:
        raise ValueError(f"frame index must be >= 0, got {index}")
    # Built from 1-D ramps so that 8K frames take milliseconds, not seconds.
    x = np.arange(width, dtype=np.int64)
    y = np.arange(height, dtype=np.int64)
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[..., 0] = ((x * 255 // max(1, width - 1) + 7 * index) % 256).astype(np.uint8)  # [W] over rows
    image[..., 1] = ((y * 255 // max(1, height - 1) + 3 * index) % 256).astype(np.uint8)[:, None]  # [H, 1]
    diagonal = ((np.arange(width + height) * 2 + 11 * index) % 256).astype(np.uint8)  # value of x + y
    for row in range(height):
        image[row, :, 2] = diagonal[row:row + width]
    side = max(2, min(width, height) // 5)
    left = (index * max(1, width // 40)) % max(1, width - side)
    top = band_height(height) + (index * 3) % max(1, height - band_height(height) - side)
    image[top:top + side, left:left + side] = (255, 255, 255)
    image[:band_height(height)] = band_color(index % MAX_FRAMES)
    return image


def read_frame_index(image_bgr: np.ndarray) -> int:
    """The frame number (modulo MAX_FRAMES) encoded in the band of a decoded, possibly resized or cropped, BGR frame."""
    band = image_bgr[: band_height(image_bgr.shape[0])]
    margin = band.shape[0] // 4  # skip the rows where compression blurs the band into the pattern
    core = band[margin: band.shape[0] - margin] if band.shape[0] > 2 * margin + 1 else band
    levels = np.median(core.reshape(-1, 3), axis=0) // _LEVEL
    return int(sum(int(level) * _LEVEL ** k for k, level in enumerate(levels)))


def write_test_video(path: str | Path, frames: int = 64, size: tuple[int, int] = (320, 240), fps: float = 25.0,
                     codec: str = "MJPG", color: bool = True) -> Path:
    """Write `frames` generated frames of size (width, height) with a FOURCC codec; returns the path.

    The container follows the suffix (.avi, .mp4, .mkv, ...). Raises RuntimeError when this OpenCV
    build cannot write that codec/container pair (see codec_available).
    """
    def frame(index: int) -> np.ndarray:
        image = frame_pattern(index, *size)
        return image if color else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)

    return _write_frames(Path(path), frames, fps, codec, size, color, frame)


def _write_frames(path: Path, frames: int, fps: float, codec: str, size: tuple[int, int], color: bool,
                  frame) -> Path:
    """Encode frame(0) ... frame(frames - 1) into `path` (the container follows its suffix)."""
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), float(fps), (width, height), color)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {codec} into {path.suffix} here")
    try:
        for index in range(frames):
            writer.write(frame(index))
    finally:
        writer.release()
    return path


def write_image_folder(folder: str | Path, frames: int = 16, size: tuple[int, int] = (64, 48),
                       ext: str = ".png", mode: str = "bgr") -> list[Path]:
    """Write frames as frame_1.ext ... frame_N.ext (unpadded, to exercise natural ordering).

    mode: "bgr" (8-bit colour), "gray" (8-bit single channel), "gray16" (16-bit, PNG/TIFF only),
    "bgra" (8-bit with an alpha channel, PNG/TIFF/WebP only).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(frames):
        image = frame_pattern(index, *size)
        if mode == "gray":
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        elif mode == "gray16":
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257  # full 16-bit range
        elif mode == "bgra":
            image = cv2.cvtColor(image, cv2.COLOR_BGR2BGRA)
            image[..., 3] = 128
        elif mode != "bgr":
            raise ValueError(f"unknown mode {mode!r}")
        path = folder / f"frame_{index + 1}{ext}"
        if not cv2.imwrite(str(path), image):
            raise RuntimeError(f"OpenCV cannot write {path}")
        paths.append(path)
    return paths


def codec_available(codec: str, suffix: str) -> bool:
    """Whether this OpenCV build writes and reads back `codec` in a `suffix` container."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"probe{suffix}"
        try:
            write_test_video(path, frames=2, size=(64, 48), codec=codec)
        except RuntimeError:
            return False
        capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        ok, _ = capture.read()
        capture.release()
        return bool(ok)


# Frame sizes (width, height) of the varied set: landscape, portrait, square, small (upscaled by the
# engine) and wide, so crops land on different parts of the pattern.
VARIED_SIZES = ((320, 240), (240, 320), (426, 240), (256, 256), (640, 360), (180, 320), (200, 150), (512, 216))
# BGR channel orders and tints, so colour statistics differ between videos.
_COLOURINGS = ("bgr", "rgb", "gray", "invert", "warm", "cool", "gbr", "dark")


def varied_frame(index: int, width: int, height: int, variant: int) -> np.ndarray:
    """Frame `index` of varied video `variant`: the generated pattern at another speed, colouring and size.

    Motion: the pattern advances `speed` frames per frame (0: a still video, up to 5: fast motion)."""
    speed = variant % 6
    image = frame_pattern(index * speed + 17 * variant, width, height)
    colouring = _COLOURINGS[(variant // 2) % len(_COLOURINGS)]
    if colouring == "rgb":
        image = image[..., ::-1]
    elif colouring == "gbr":
        image = image[..., [1, 2, 0]]
    elif colouring == "gray":
        image = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    elif colouring == "invert":
        image = 255 - image
    elif colouring in ("warm", "cool", "dark"):
        gain = {"warm": (0.6, 0.9, 1.2), "cool": (1.2, 0.9, 0.6), "dark": (0.35, 0.35, 0.35)}[colouring]
        image = np.clip(image * np.asarray(gain, np.float32), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def write_varied_videos(folder: str | Path, count: int = 16, frames: int = 24, fps: float = 25.0,
                        codec: str = "MJPG", suffix: str = ".avi") -> list[Path]:
    """`count` short videos that differ in size, aspect ratio, colours and motion (see varied_frame)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for variant in range(count):
        width, height = VARIED_SIZES[variant % len(VARIED_SIZES)]
        path = folder / f"varied-{variant:02d}-{width}x{height}{suffix}"
        with atomic_write(path, mode=None, suffix=suffix) as tmp:  # a killed run leaves no half video
            _write_varied(tmp, frames, fps, codec, (width, height), variant)
        paths.append(path)
    return paths


def _write_varied(path: Path, frames: int, fps: float, codec: str, size: tuple[int, int], variant: int) -> None:
    _write_frames(path, frames, fps, codec, size, True, lambda index: varied_frame(index, *size, variant))
