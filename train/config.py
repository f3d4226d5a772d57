"""Training settings: one dataclass, the paper's three settings as presets, and a tiny CPU preset.

The presets follow ViFi-CLIP's configs (utils/config.py defaults, configs/*/*.yaml) with AP-CLIP's
learning rates (docs/architecture.md): zero-shot (Kinetics-400 training) 8e-6, base-to-novel 2e-6, few-shot
2e-4; effective batch 256 / 64 / 64 by accumulation; 10 / 11 / 50 epochs; 5 warm-up epochs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from apclip.config import DEFAULT_FRAMES


@dataclass
class TrainConfig:
    # data
    train_list: str = ""  # ViFi-CLIP list file: relative/path LABEL_ID per line
    val_list: str | None = None  # validation list (top-1 picks best.pt); None: no validation
    root: str = "."  # folder the list paths are relative to
    labels: str = ""  # labels file (one per line or ViFi-CLIP CSV)
    prompts: str | None = None  # prompt bank JSON; None: the single template "a video of {label}."
    base_classes: str | None = None  # base-to-novel: train on these classes only (names or ids per line)
    shots: int | None = None  # few-shot: K videos per class, drawn by `seed`
    # model
    init: str | None = None  # checkpoint to fine-tune (any format apclip.load_checkpoint reads)
    base: str | None = None  # OpenAI CLIP file for a ViFi-CLIP `init` (token embedding)
    model_preset: str | None = None  # random-init model instead of `init` (tests: "tiny")
    profile: str | None = None  # preprocessing profile at validation and in best.pt; default: the init checkpoint's
    normalize: str | None = None  # pixel normalisation; default: the profile's (apclip: the init checkpoint's, else clip)
    # sampling and augmentation (ViFi-CLIP AUG.*)
    frames: int = DEFAULT_FRAMES  # T per training clip
    test_clips: int = 1  # temporal clips at validation (and in best.pt's preprocessing)
    test_crops: int = 1  # spatial crops at validation
    color_jitter: float = 0.8
    gray_scale: float = 0.2
    flip: float = 0.5
    label_smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_switch_prob: float = 0.5
    prompts_per_class: int = 4  # prompts drawn per class per step; 0: all (see train/model.py)
    # optimisation (ViFi-CLIP TRAIN.*)
    lr: float = 8e-6
    min_lr_ratio: float = 0.01  # cosine floor = lr * ratio (timm lr_min = LR / 100)
    weight_decay: float = 0.001
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    epochs: int = 10
    warmup_epochs: float = 5.0
    batch_size: int = 4  # clips per step per process
    accumulation: int = 8  # steps per optimizer update (effective batch = batch * accumulation * GPUs)
    amp: str = "auto"  # auto (bf16 or fp16+scaler on CUDA, off on CPU) | off | bf16 | fp16
    grad_checkpointing: bool = False
    # run
    seed: int = 1024  # ViFi-CLIP SEED
    workers: int = 2  # DataLoader worker processes
    log_every: int = 10  # optimizer updates between JSON log lines
    max_skipped: float = 0.25  # stop when more than this share of the training videos failed to decode
    preset: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config fields: {unknown}")
        data = dict(data)
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(**data)


PRESETS: dict[str, dict[str, Any]] = {
    # Kinetics-400 training for zero-shot transfer: 4 x 8 accumulation x 8 GPUs = 256.
    "zero-shot": {"lr": 8e-6, "epochs": 10, "warmup_epochs": 5, "batch_size": 4, "accumulation": 8},
    # Base classes of each dataset, K=16 shots per base class: 4 x 2 x 8 GPUs = 64.
    "base-to-novel": {"lr": 2e-6, "epochs": 11, "warmup_epochs": 5, "batch_size": 4, "accumulation": 2,
                      "shots": 16},
    # K-shot (2/4/8/16) training on all classes: 4 x 2 x 8 GPUs = 64.
    "few-shot": {"lr": 2e-4, "epochs": 50, "warmup_epochs": 5, "batch_size": 4, "accumulation": 2},
    # CPU smoke test and demo: a random-init tiny model learns the synthetic dataset in about a minute.
    "tiny": {"model_preset": "tiny", "lr": 1e-3, "epochs": 10, "warmup_epochs": 1, "batch_size": 8,
             "accumulation": 1, "frames": 4, "mixup": 0.0, "weight_decay": 0.001, "min_lr_ratio": 0.1},
}


def preset_values(name: str) -> dict[str, Any]:
    try:
        return dict(PRESETS[name])
    except KeyError:
        raise ValueError(f"unknown training preset {name!r}; choose one of {', '.join(PRESETS)}") from None
