"""What the engine returns: typed predictions, and their JSON form (one object per prediction)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float


@dataclass(frozen=True)
class FrameMatch:
    """One frame's best prompt within a class (the paper's interpretability view)."""

    view: int  # view index (clip-major: clip * crops + crop)
    frame: int  # decoded frame index
    time: float  # seconds
    prompt: str  # text of the class prompt this frame matched best
    similarity: float


@dataclass(frozen=True)
class ViewMatch:
    """One view's part in a vificlip-protocol score (ViFi-CLIP scores views, not frames)."""

    view: int  # view index (clip-major)
    first_frame: int  # decoded frame index of the view's first and last frame
    last_frame: int
    start: float  # seconds of those frames
    end: float
    prompt: str  # the class's one prompt
    similarity: float  # cosine of the view's mean-pooled features with the prompt
    probability: float  # the view's softmax probability of the class (the score sums these)


@dataclass(frozen=True)
class Explanation:
    label: str
    score: float
    frames: list[FrameMatch]  # maka: every frame's best prompt
    views: list[ViewMatch] | None = None  # vificlip: every view's similarity and probability


@dataclass
class Prediction:
    """The multi-view prediction for a whole video (clip mode)."""

    source: str
    top: list[LabelScore]
    scores: np.ndarray = field(repr=False)  # [K] score of every class (by `protocol`), in label order
    backend: str = ""
    scorer: str = ""
    protocol: str = "maka"  # scoring protocol that made the scores: maka | vificlip (sum of per-view softmax)
    frames: int = 0  # frame embeddings scored together (views x T)
    approximate: bool = False  # sampled from an unknown or wrong frame count (nearest kept frames)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    explanations: list[Explanation] | None = None
    sampled_frames: int = 0  # frame positions sampled per crop (clips x T)
    distinct_frames: int = 0  # different decoded frames among them (fewer for very short videos)

    @property
    def label(self) -> str:
        return self.top[0].label

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source,
            "top": [{"label": t.label, "score": round(t.score, 6)} for t in self.top],
            "backend": self.backend, "scorer": self.scorer, "protocol": self.protocol, "frames": self.frames,
            "approximate": self.approximate, "distinct_frames": self.distinct_frames,
            "timings_ms": {k: round(v * 1000, 3) for k, v in self.timings.items()},
        }
        if self.explanations is not None:
            out["explain"] = [_explanation_dict(e) for e in self.explanations]
        return out


@dataclass
class WindowPrediction(Prediction):
    """The prediction for one sliding window of a stream or long video (stream mode)."""

    index: int = 0  # window number, from 0
    start: float = 0.0  # seconds
    end: float = 0.0
    stream: int | None = None  # number of the source among many (apclip-infer --stream); None for one

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        head = {"source": out.pop("source")}
        if self.stream is not None:
            head["stream"] = self.stream
        return {**head, "window": self.index, "start": round(self.start, 3), "end": round(self.end, 3), **out}


def _explanation_dict(e: Explanation) -> dict[str, Any]:
    out: dict[str, Any] = {"label": e.label, "score": round(e.score, 6)}
    if e.views is not None:
        out["views"] = [{"view": v.view, "frames": [v.first_frame, v.last_frame],
                         "time": [round(v.start, 3), round(v.end, 3)], "prompt": v.prompt,
                         "similarity": round(v.similarity, 6), "probability": round(v.probability, 6)}
                        for v in e.views]
    else:
        out["frames"] = [{"view": f.view, "frame": f.frame, "time": round(f.time, 3), "prompt": f.prompt,
                          "similarity": round(f.similarity, 6)} for f in e.frames]
    return out
