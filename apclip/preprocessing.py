"""How frames become encoder input: the one preprocessing type, shared by export, the engine and training.

Export records it in the bundle manifest, inference reads it back, training samples with it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from apclip.config import (CROP_COUNTS, DEFAULT_CLIPS, DEFAULT_CROPS, DEFAULT_FRAMES, NORMALIZATIONS, ModelConfig,
                     Normalization, normalization)


@dataclass(frozen=True)
class Preprocessing:
    """What a clip is made of and how its frames are prepared for the vision encoder."""

    frames: int = DEFAULT_FRAMES  # T, frames per temporal clip
    clips: int = DEFAULT_CLIPS  # N, temporal clips per video (or per stream window)
    crops: int = DEFAULT_CROPS  # C, spatial crops per frame: 1 centre, 2 ends, 3 start/centre/end
    resolution: int = ModelConfig().image_resolution  # R, crop side in pixels
    normalization: Normalization = NORMALIZATIONS["clip"]  # or a preset name, e.g. "imagenet255"

    def __post_init__(self) -> None:
        if isinstance(self.normalization, str):
            object.__setattr__(self, "normalization", normalization(self.normalization))
        if min(self.frames, self.clips, self.resolution) < 1 or self.crops not in CROP_COUNTS:
            raise ValueError(f"preprocessing frames={self.frames} clips={self.clips} crops={self.crops} "
                             f"resolution={self.resolution} is invalid: frames, clips and resolution must be "
                             f">= 1, and crops must be one of {CROP_COUNTS}")

    @property
    def views(self) -> int:
        """V = clips * crops."""
        return self.clips * self.crops

    def with_clips(self, clips: int | None) -> "Preprocessing":
        """The same preprocessing with another number of temporal clips (e.g. 1 per stream window)."""
        return self if not clips else dataclasses.replace(self, clips=clips)

    def to_dict(self) -> dict[str, Any]:
        return {"resolution": self.resolution, "normalization": self.normalization.to_dict(),
                "frames": self.frames, "clips": self.clips, "crops": self.crops}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        norm = data["normalization"]
        return cls(frames=int(data["frames"]), clips=int(data["clips"]), crops=int(data["crops"]),
                   resolution=int(data["resolution"]),
                   normalization=norm if isinstance(norm, str) else Normalization.from_dict(norm))
