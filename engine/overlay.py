"""--out-video: the input with the current top-k drawn on every frame (mmaction2 demo style)."""
from __future__ import annotations

import bisect
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from apclip.fileio import AtomicFile

from apclip.engine.errors import SourceError
from apclip.engine.predictions import Prediction, WindowPrediction
from apclip.engine.sources import open_source

_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


def draw_top(image: np.ndarray, pred: Prediction | None, topk: int) -> np.ndarray:
    """Top-k labels and scores in a shaded box at the top-left corner (in place)."""
    lines = [f"{t.label}: {t.score:.3f}" for t in pred.top[:topk]] if pred is not None else ["(first window pending)"]
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


def overlay_fourcc(out: str | os.PathLike) -> str:
    """The codec for an --out-video name; checked before a run so a bad name does not waste it."""
    fourcc = _FOURCC.get(Path(out).suffix.lower())
    if fourcc is None:
        raise SourceError(f"--out-video {out}: use a .mp4, .m4v, .mov, .avi or .mkv file name")
    return fourcc


def write_overlay(source, out: str | os.PathLike, predictions: Sequence[Prediction], topk: int = 5) -> int:
    """Re-read `source` and write every frame with the prediction current at its time; returns frames.

    Clip mode: the one prediction on every frame. Stream mode: the latest window that had ended by
    the frame's timestamp. Written to a temporary file and renamed, so `out` is never half-written.
    """
    out = Path(out)
    fourcc = overlay_fourcc(out)
    windows = [p for p in predictions if isinstance(p, WindowPrediction)]
    ends = [w.end for w in windows]
    src = open_source(source)
    if src.info.live:
        src.close()
        raise SourceError(f"--out-video needs a file or image folder, not the live source {src.info.name}")
    try:
        target = AtomicFile(out, mode=None, suffix=out.suffix)  # the writer picks the container from the suffix
    except OSError as exc:
        src.close()
        raise SourceError(f"--out-video {out}: cannot create a file there ({exc.strerror})") from None
    writer = None
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
                writer = cv2.VideoWriter(str(target.tmp), cv2.VideoWriter_fourcc(*fourcc),
                                         float(src.info.fps or 30.0), (w, h))
                if not writer.isOpened():
                    raise SourceError(f"--out-video {out}: OpenCV cannot write {fourcc} here; try a .avi name")
            writer.write(image)
            count += 1
        if writer is None:
            raise SourceError(f"--out-video {out}: {src.info.name} gave no frames on the second read")
        writer.release()
        writer = None
        target.commit()
        return count
    finally:
        if writer is not None:
            writer.release()
        src.close()
        target.discard()
