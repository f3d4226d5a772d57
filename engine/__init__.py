"""apclip.engine: the runtime (no torch). Sources, sampling, preprocessing, runners, scorers, Recognizer."""
from __future__ import annotations

from .clips import Clip, ClipSpec, iter_window_clips, load_clip
from .errors import NoFramesError, SourceError
from .predictions import Explanation, FrameMatch, LabelScore, Prediction, WindowPrediction
from .preprocess import flatten_views, unflatten_views
from .recognizer import BACKENDS, Recognizer
from .runners import BackendUnavailable
from .sources import Frame, SourceInfo, VideoSource, open_source

__all__ = [
    "BACKENDS", "BackendUnavailable", "Clip", "ClipSpec", "Explanation", "Frame", "FrameMatch", "LabelScore",
    "NoFramesError", "Prediction", "Recognizer", "SourceError", "SourceInfo", "VideoSource", "WindowPrediction",
    "flatten_views", "iter_window_clips", "load_clip", "open_source", "unflatten_views",
]
