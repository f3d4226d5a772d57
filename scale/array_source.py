"""Frames already in memory (a client's uint8 clip) as a VideoSource, so that load_clip samples and
preprocesses them exactly as it does the frames it decodes from a file."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from apclip.engine.video.sources import Frame, Select, SourceInfo, VideoSource


class ArraySource(VideoSource):
    """frames [N, H, W, 3] uint8 in BGR (OpenCV's order; pass rgb=True for RGB) at `fps`."""

    def __init__(self, frames: np.ndarray, name: str = "request", *, fps: float | None = None, rgb: bool = False):
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
            raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {list(frames.shape)}")
        self._frames_array = frames[..., ::-1] if rgb else frames  # [N, H, W, 3] RGB -> BGR (a view)
        n, h, w = frames.shape[:3]
        super().__init__(SourceInfo(name, "array", fps, n, w, h))

    def _frames(self, select: Select | None, limit: int | None) -> Iterator[Frame]:
        period = 1.0 / self.info.fps if self.info.fps else 0.0
        for index in range(len(self._frames_array)):
            if limit is not None and index >= limit:
                return
            self.decoded_frames += 1
            timestamp = index * period
            if select is None or select(index, timestamp):
                yield Frame(index, timestamp, np.ascontiguousarray(self._frames_array[index]))
