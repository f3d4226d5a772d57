"""apclip.engine: the runtime (no torch). Sources, sampling, preprocessing, runners, scorers, Recognizer.

Names are imported on first use, so `apclip-infer` starts (and answers Ctrl-C) before OpenCV and
ONNX Runtime load, and importing one submodule does not pull in the others.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Clip": "video.clips", "iter_window_clips": "video.windows", "load_clip": "video.clips",
    "NoFramesError": "video.errors", "SourceError": "video.errors",
    "Explanation": "predictions", "FrameMatch": "predictions", "LabelScore": "predictions",
    "Prediction": "predictions", "WindowPrediction": "predictions",
    "flatten_views": "video.preprocess", "unflatten_views": "video.preprocess",
    "Recognizer": "recognizer",
    "BackendUnavailable": "runners.encoders",
    "Frame": "video.sources", "SourceInfo": "video.sources", "VideoSource": "video.sources", "open_source": "video.sources",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'apclip.engine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
