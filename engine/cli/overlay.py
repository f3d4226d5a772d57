"""--out-video: the input with the current top-k drawn on every frame (mmaction2 demo style)."""
from __future__ import annotations

import bisect
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from apclip.cli_common import UsageError
from apclip.fileio import AtomicFile

from apclip.engine.video.errors import SourceError
from apclip.engine.predictions import Prediction, WindowPrediction
from apclip.engine.video.sources import open_source

_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
# Tried first where the container holds it: H.264 plays in every browser and player; OpenCV's FFmpeg
# writes it only when built with an H.264 encoder (pip's opencv wheels usually are not).
_PREFERRED = {".mp4": "avc1", ".m4v": "avc1", ".mov": "avc1"}
CODEC_NAMES = {"avc1": "H.264 (avc1)", "mp4v": "MPEG-4 Part 2 (mp4v)", "MJPG": "Motion JPEG (MJPG)"}


@dataclass(frozen=True)
class OverlayResult:
    frames: int  # frames written
    codec: str  # fourcc used
    note: str | None = None  # why the preferred codec was not used, if it was not


# TrueType fonts from Debian packages scripts/setup.sh installs, tried per character in this order: DejaVu
# Sans (fonts-dejavu-core: Latin, accents, Greek, Cyrillic), then Droid Sans Fallback (fonts-droid-fallback,
# 1.8 MB: Chinese, Japanese, Korean). $APCLIP_FONT, when set, is tried first.
FONT_FILES = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
              "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf")
_NOT_A_CHARACTER = "\U0010fffd"  # private use: every font draws its "missing glyph" box for it


class FallbackFont:
    """Several FreeType fonts drawn as one: each character in the first font that has a glyph for it."""

    def __init__(self, fonts: list) -> None:
        self.fonts = fonts
        self._missing = [bytes(f.getmask(_NOT_A_CHARACTER)) for f in fonts]
        self._choice: dict[str, object] = {}

    def font_for(self, ch: str):
        if ch not in self._choice:
            self._choice[ch] = next((f for f, missing in zip(self.fonts, self._missing)
                                     if ch.isspace() or bytes(f.getmask(ch)) != missing), self.fonts[0])
        return self._choice[ch]

    def runs(self, text: str) -> list[tuple[str, object]]:
        """`text` cut into (substring, font) runs."""
        out: list[tuple[str, object]] = []
        for ch in text:
            font = self.font_for(ch)
            if out and out[-1][1] is font:
                out[-1] = (out[-1][0] + ch, font)
            else:
                out.append((ch, font))
        return out

    def getlength(self, text: str) -> float:
        return sum(font.getlength(run) for run, font in self.runs(text))

    def getmetrics(self) -> tuple[int, int]:
        return max(f.getmetrics()[0] for f in self.fonts), max(f.getmetrics()[1] for f in self.fonts)


@functools.lru_cache(maxsize=8)
def overlay_font(size: int) -> FallbackFont | None:
    """The overlay's fonts at `size` pixels, or None where no font file is installed (then OpenCV's
    Hershey font draws, which knows ASCII only)."""
    from PIL import ImageFont

    fonts = []
    for path in (os.environ.get("APCLIP_FONT"), *FONT_FILES):
        if path and os.path.isfile(path):
            try:
                fonts.append(ImageFont.truetype(path, size))
            except OSError:
                continue
    return FallbackFont(fonts) if fonts else None


def _label_line(t) -> str:
    shown = f"{100 * t.probability:.1f}%" if t.probability is not None else f"{t.score:.3f}"
    return f"{t.label}: {shown}"


def draw_top(image: np.ndarray, pred: Prediction | None, topk: int) -> np.ndarray:
    """Top-k labels and probabilities in a shaded box at the top-left corner (in place); labels in any
    script are drawn by FreeType through Pillow."""
    lines = [_label_line(t) for t in pred.top[:topk]] if pred is not None else ["(first window pending)"]
    font = overlay_font(max(12, int(min(image.shape[:2]) / 600 * 22)))
    if font is not None:
        return _draw_with_font(image, lines, font)
    scale = max(0.4, min(image.shape[:2]) / 600)
    thickness = max(1, int(round(scale * 2)))
    height = int(28 * scale) + 4
    width = max(cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0] for line in lines) + 12
    box = image[: height * len(lines) + 8, : width]
    box[:] = (box * 0.4).astype(image.dtype)
    for i, line in enumerate(lines):
        cv2.putText(image, line, (6, height * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                    thickness, cv2.LINE_AA)
    return image


def _draw_with_font(image: np.ndarray, lines: list[str], font) -> np.ndarray:
    from PIL import Image, ImageDraw

    ascent, descent = font.getmetrics()
    height = ascent + descent + 4
    width = int(max(font.getlength(line) for line in lines)) + 12
    box = image[: height * len(lines) + 8, : width]
    box[:] = (box * 0.4).astype(image.dtype)
    canvas = Image.fromarray(np.ascontiguousarray(box[..., ::-1]))  # [H, W, 3] BGR -> RGB
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        x = 6.0
        for run, face in font.runs(line):
            draw.text((x, 4 + height * i), run, font=face, fill=(255, 255, 255))
            x += face.getlength(run)
    box[:] = np.asarray(canvas)[..., ::-1]
    return image


def overlay_fourcc(out: str | os.PathLike) -> str:
    """The codec for an --out-video name; checked before a run so a bad name does not waste it."""
    fourcc = _FOURCC.get(Path(out).suffix.lower())
    if fourcc is None:
        raise UsageError(f"--out-video {out}: use a .mp4, .m4v, .mov, .avi or .mkv file name")
    return fourcc


def _open_writer(path: Path, fourccs: Sequence[str], fps: float, size: tuple[int, int]):
    """The first fourcc OpenCV opens a writer for, with that writer (None, None: none could)."""
    logging = cv2.utils.logging
    level = logging.getLogLevel()
    try:
        for i, fourcc in enumerate(fourccs):
            # A failed probe of the preferred codec is expected (and said in one note): OpenCV's ERROR lines
            # for it are silenced; the last candidate keeps the caller's level.
            logging.setLogLevel(logging.LOG_LEVEL_SILENT if i < len(fourccs) - 1 else level)
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
            if writer.isOpened():
                return writer, fourcc
            writer.release()
    finally:
        logging.setLogLevel(level)
    return None, None


def write_overlay(source, out: str | os.PathLike, predictions: Sequence[Prediction], topk: int = 5,
                  fps: float | None = None) -> OverlayResult:
    """Re-read `source` and write every frame with the prediction current at its time; returns frames.

    Clip mode: the one prediction on every frame. Stream mode: the latest window that had ended by
    the frame's timestamp. Written to a temporary file and renamed, so `out` is never half-written.
    MP4/MOV get H.264 when OpenCV can write it, else MPEG-4 Part 2 (the result's note says so).
    fps: frame rate of an image-folder source.
    """
    out = Path(out)
    fourcc = overlay_fourcc(out)
    windows = [p for p in predictions if isinstance(p, WindowPrediction)]
    ends = [w.end for w in windows]
    src = open_source(source, fps=fps)
    if src.info.live:
        src.close()
        raise SourceError(f"--out-video needs a file or image folder, not the live source {src.info.name}")
    try:
        target = AtomicFile(out, mode=None, suffix=out.suffix)  # the writer picks the container from the suffix
    except OSError as exc:
        src.close()
        raise SourceError(f"--out-video {out}: cannot create a file there ({exc.strerror})") from None
    writer = None
    used = fourcc
    note = None
    count = 0
    try:
        for frame in src.frames():
            image = np.ascontiguousarray(frame.image)
            if windows:
                i = bisect.bisect_right(ends, frame.timestamp + 1e-9) - 1
                current = windows[i] if i >= 0 else None
            else:
                current = predictions[0] if predictions else None
            draw_top(image, current, topk)
            if writer is None:
                h, w = image.shape[:2]
                preferred = _PREFERRED.get(out.suffix.lower())
                writer, used = _open_writer(target.tmp, [c for c in (preferred, fourcc) if c],
                                            float(src.info.fps or 30.0), (w, h))
                if writer is None:
                    raise SourceError(f"--out-video {out}: OpenCV cannot write {fourcc} here; try a .avi name")
                if preferred and used != preferred:
                    note = (f"OpenCV here cannot encode {CODEC_NAMES[preferred]}; wrote {CODEC_NAMES[used]} "
                            f"instead (plays in VLC/ffplay, not in every browser)")
            writer.write(image)
            count += 1
        if writer is None:
            raise SourceError(f"--out-video {out}: {src.info.name} gave no frames on the second read")
        writer.release()
        writer = None
        target.commit()
        return OverlayResult(count, used, note)
    finally:
        if writer is not None:
            writer.release()
        src.close()
        target.discard()
