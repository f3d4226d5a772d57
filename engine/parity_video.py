"""Frames of a generated video through the engine's real decode and preprocessing.

Export verification runs the encoders on these (not only on random pixels), so parity is checked on
the value distribution the engine actually feeds them.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from apclip.bundle import Preprocessing

from .clips import clip_spec, load_clip
from .preprocess import flatten_views
from .synthetic import write_test_video


def generated_video_pixels(pre: Preprocessing, frames: int = 48) -> np.ndarray:
    """[V*T, 3, R, R] float32 for a generated 320x240 MJPG video sampled as the bundle says."""
    with tempfile.TemporaryDirectory(prefix="apclip-parity-") as tmp:
        path = write_test_video(Path(tmp) / "parity.avi", frames=frames, size=(320, 240), codec="MJPG")
        clip = load_clip(path, clip_spec(pre))
    return flatten_views(clip.views)
