"""How frames become encoder input: the one preprocessing type, shared by export, the engine and training.

Export records it in the bundle manifest, inference reads it back, training samples with it.

The profile fixes the resize rule, interpolation, crop rule and normalisation together, so that a
bundle sees the pixels the code that trained its checkpoint saw (apclip.engine.video.preprocess does them):
  vificlip  ViFi-CLIP / X-CLIP test pipeline (mmaction Resize + CenterCrop, or ThreeCrop when crops=3),
            ImageNet normalisation on 0-255 RGB; crops 1 or 3.
  clip      OpenAI CLIP's `_transform` (PIL bicubic short side R + CenterCrop R), CLIP normalisation; crops 1.
  xclip     XCLIPProcessor's VideoMAEImageProcessor (PIL bilinear short side R, centre crop R with floor
            offsets, ImageNet mean/std = imagenet255 on 0-255 values); crops 1.
  apclip    what bundles made before profiles did (short side R, INTER_AREA / INTER_CUBIC, crops along the
            long side), any normalisation; a manifest without a profile means this one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from apclip.config import (CROP_COUNTS, DEFAULT_CLIPS, DEFAULT_CROPS, DEFAULT_FRAMES, NORMALIZATIONS, ModelConfig,
                     Normalization, normalization)

PROFILES = ("apclip", "vificlip", "clip", "xclip")
LEGACY_PROFILE = "apclip"  # what a manifest or checkpoint without a profile means
# The normalisation each profile implies (apclip: the default; it accepts any).
PROFILE_NORMALIZATION = {"apclip": "clip", "vificlip": "imagenet255", "clip": "clip", "xclip": "imagenet255"}
# Spatial crops each profile can reproduce: ViFi-CLIP takes one centre crop, or mmaction's ThreeCrop
# when TEST.NUM_CROP == 3; OpenAI's transform takes one centre crop.
PROFILE_CROPS = {"apclip": CROP_COUNTS, "vificlip": (1, 3), "clip": (1,), "xclip": (1,)}


def vificlip_crops(num_crop: int) -> int:
    """The crops ViFi-CLIP's test pipeline really takes for TEST.NUM_CROP: 3 -> ThreeCrop, anything else
    (2 included) -> one centre crop."""
    return 3 if int(num_crop) == 3 else 1


@dataclass(frozen=True)
class Preprocessing:
    """What a clip is made of and how its frames are prepared for the vision encoder."""

    frames: int = DEFAULT_FRAMES  # T, frames per temporal clip
    clips: int = DEFAULT_CLIPS  # N, temporal clips per video (or per stream window)
    # C, spatial crops per frame (apclip: 1 centre, 2 ends, 3 start/centre/end); None: the profile's default
    crops: int | None = None
    resolution: int = ModelConfig().image_resolution  # R, crop side in pixels
    # A Normalization or a preset name ("imagenet255"); None: the profile's (PROFILE_NORMALIZATION).
    normalization: Normalization | str | None = None
    profile: str = LEGACY_PROFILE  # apclip | vificlip | clip: resize, interpolation, crops, normalisation

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown preprocessing profile {self.profile!r}; choose one of {', '.join(PROFILES)}")
        if self.normalization is None:
            object.__setattr__(self, "normalization", PROFILE_NORMALIZATION[self.profile])
        if self.crops is None:
            object.__setattr__(self, "crops", DEFAULT_CROPS if self.profile == "apclip" else 1)
        if isinstance(self.normalization, str):
            object.__setattr__(self, "normalization", normalization(self.normalization))
        if min(self.frames, self.clips, self.resolution) < 1 or self.crops not in CROP_COUNTS:
            raise ValueError(f"preprocessing frames={self.frames} clips={self.clips} crops={self.crops} "
                             f"resolution={self.resolution} is invalid: frames, clips and resolution must be "
                             f">= 1, and crops must be one of {CROP_COUNTS}")
        if self.crops not in PROFILE_CROPS[self.profile]:
            raise ValueError(f"preprocessing profile {self.profile} takes crops "
                             f"{' or '.join(map(str, PROFILE_CROPS[self.profile]))}, not {self.crops}")
        implied = PROFILE_NORMALIZATION[self.profile]
        if self.profile != "apclip" and self.normalization != NORMALIZATIONS[implied]:
            raise ValueError(f"preprocessing profile {self.profile} normalises with {implied}, "
                             f"not {self.normalization.name}")

    @property
    def views(self) -> int:
        """V = clips * crops."""
        return self.clips * self.crops

    def with_clips(self, clips: int | None) -> "Preprocessing":
        """The same preprocessing with another number of temporal clips (e.g. 1 per stream window)."""
        return self if not clips else dataclasses.replace(self, clips=clips)

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile, "resolution": self.resolution,
                "normalization": self.normalization.to_dict(),
                "frames": self.frames, "clips": self.clips, "crops": self.crops}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        norm = data["normalization"]
        return cls(frames=int(data["frames"]), clips=int(data["clips"]), crops=int(data["crops"]),
                   resolution=int(data["resolution"]),
                   normalization=norm if isinstance(norm, str) else Normalization.from_dict(norm),
                   profile=str(data.get("profile", LEGACY_PROFILE)))
