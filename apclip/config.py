"""Model settings, named presets and the preprocessing constants (the one place they live)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of a CLIP ViT model; every field can be read back from a state_dict's shapes."""

    embed_dim: int = 512  # joint embedding size E (output of both projections)
    image_resolution: int = 224  # input side R in pixels
    vision_layers: int = 12  # transformer blocks in the image encoder
    vision_width: int = 768  # residual width of the image encoder; heads = width // 64
    vision_patch_size: int = 16  # patch side; grid = R // patch
    context_length: int = 77  # text tokens per prompt, SOT and EOT included
    vocab_size: int = 49408  # BPE vocabulary, CLIP's SOT 49406 / EOT 49407 included
    transformer_width: int = 512  # residual width of the text encoder
    transformer_heads: int = 8  # attention heads of the text encoder
    transformer_layers: int = 12  # transformer blocks in the text encoder

    @property
    def vision_heads(self) -> int:
        # OpenAI CLIP fixes the head size at 64 for every ViT.
        return max(1, self.vision_width // 64)

    @property
    def vision_grid(self) -> int:
        return self.image_resolution // self.vision_patch_size

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config fields: {unknown}")
        return cls(**{k: int(v) for k, v in data.items()})

    @classmethod
    def from_name(cls, name: str) -> "ModelConfig":
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None


PRESETS: dict[str, ModelConfig] = {
    # Random-init test model: real vocabulary (so real token ids embed) but tiny widths and 32 px input.
    "tiny": ModelConfig(
        embed_dim=64, image_resolution=32, vision_layers=2, vision_width=128, vision_patch_size=16,
        transformer_width=128, transformer_heads=2, transformer_layers=2,
    ),
    "ViT-B-32": ModelConfig(vision_patch_size=32),
    "ViT-B-16": ModelConfig(),
    "ViT-L-14": ModelConfig(
        embed_dim=768, vision_layers=24, vision_width=1024, vision_patch_size=14,
        transformer_width=768, transformer_heads=12,
    ),
}


@dataclass(frozen=True)
class Normalization:
    """Pixel normalisation: (pixel * scale - mean) / std on RGB."""

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float  # 1/255 for CLIP (0-1 RGB), 1.0 for ViFi-CLIP (0-255 RGB)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mean": list(self.mean), "std": list(self.std), "scale": self.scale}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Normalization":
        return cls(str(data["name"]), tuple(map(float, data["mean"])), tuple(map(float, data["std"])),
                   float(data["scale"]))


NORMALIZATIONS: dict[str, Normalization] = {
    "clip": Normalization(
        "clip", (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711), 1.0 / 255.0,
    ),
    # ViFi-CLIP (mmaction-style) training pipelines normalise 0-255 RGB with ImageNet constants.
    "imagenet255": Normalization(
        "imagenet255", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375), 1.0,
    ),
}


def normalization(name: str) -> Normalization:
    try:
        return NORMALIZATIONS[name]
    except KeyError:
        raise ValueError(f"unknown normalisation {name!r}; choose one of {sorted(NORMALIZATIONS)}") from None


# The paper's inference defaults (docs/architecture.md): 8 frames, 2 temporal clips x 2 spatial crops.
DEFAULT_FRAMES = 8
DEFAULT_CLIPS = 2
DEFAULT_CROPS = 2
CROP_COUNTS = (1, 2, 3)  # spatial crops per frame: centre; both ends; start/centre/end
PROMPT_PREFIX = "a video of {label}"
