"""ViFi-CLIP's training pipeline on decoded BGR frames, in numpy + OpenCV (no mmcv, no torchvision).

ViFi-CLIP `datasets/build.py` train_pipeline, step by step (R = input size, 224 for ViT-B/16):

  SampleFrames(clip_len=1, num_clips=T)   one random frame per segment (apclip.engine.video.sampling.sample_train_indices)
  Resize(scale=(-1, int(256 / 224 * R)))  short side to S = int(256/224*R), long side int(L * S / short + 0.5),
                                          bilinear (mmcv.imresize = cv2 INTER_LINEAR)
  MultiScaleCrop(R, scales=(1, .875, .75, .66), random_crop=False, max_wh_scale_gap=1)
                                          crop w, h from int(min(H, W) * scale) with |i - j| <= 1 scale levels,
                                          snapped to R when within 3 px, at one of 5 fixed offsets
  Resize((R, R), keep_ratio=False)        bilinear
  Flip(flip_ratio=0.5)                    horizontal, the whole clip
  ColorJitter(p=0.8)                      with probability p for the clip, torchvision ColorJitter(brightness=.4,
                                          contrast=.4, saturation=.2, hue=.1) applied frame by frame (each frame
                                          draws its own factors and order, as ViFi-CLIP's per-frame call does)
  GrayScale(p=0.2)                        with probability p for the clip, ITU-R 601 luma in all three channels
  Normalize                               the profile's normalisation (apclip.preprocessing.Preprocessing)

Every random draw comes from one numpy Generator passed in (ViFi-CLIP mixes python's `random`,
numpy's global state and torch's), so a clip is a pure function of (seed, epoch, index): training
resumes exactly and loader workers need no seeding. The colour operations follow PIL's formulas
(what torchvision runs on PIL images: blends in float32 truncated to uint8, PIL's integer luma and
its HSV conversion), so they match PIL pixel for pixel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from apclip.config import Normalization
from apclip.engine.video.preprocess import normalize

MULTISCALE_SCALES = (1.0, 0.875, 0.75, 0.66)


def train_resize_side(resolution: int) -> int:
    """ViFi-CLIP's short side before cropping: int(256 / 224 * R) (256 for R = 224)."""
    return int(256 / 224 * resolution)


def rescaled_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """mmcv.rescale_size((w, h), (inf, short)): the short side to `short_side`, rounded half up."""
    scale = short_side / min(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_short_side_bilinear(image: np.ndarray, short_side: int) -> np.ndarray:
    height, width = image.shape[:2]
    new_height, new_width = rescaled_size(height, width, short_side)
    if (new_height, new_width) == (height, width):
        return image
    return cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_LINEAR)


def multiscale_crop_box(height: int, width: int, size: int, rng: np.random.Generator,
                        scales: Sequence[float] = MULTISCALE_SCALES, max_gap: int = 1) -> tuple[int, int, int, int]:
    """(left, top, crop_w, crop_h) as mmaction's MultiScaleCrop with random_crop=False, 5 fixed crops."""
    base = min(height, width)
    sizes = [int(base * s) for s in scales]
    candidates = [(w, h) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= max_gap]
    crop_w, crop_h = candidates[int(rng.integers(len(candidates)))]
    # Sizes within 3 px of the network input are snapped to it (input_size is (R, R)).
    crop_w = size if abs(crop_w - size) < 3 else crop_w
    crop_h = size if abs(crop_h - size) < 3 else crop_h
    w_step, h_step = (width - crop_w) // 4, (height - crop_h) // 4
    offsets = [(0, 0), (4 * w_step, 0), (0, 4 * h_step), (4 * w_step, 4 * h_step), (2 * w_step, 2 * h_step)]
    left, top = offsets[int(rng.integers(len(offsets)))]
    return left, top, crop_w, crop_h


def _blend(image: np.ndarray, other: np.ndarray | float, factor: float) -> np.ndarray:
    """PIL Image.blend(other, image, factor): other + factor * (image - other) in float32, truncated to uint8."""
    other = np.asarray(other, dtype=np.float32)
    out = other + np.float32(factor) * (image.astype(np.float32) - other)
    return np.clip(out, 0, 255).astype(np.uint8)  # in [0, 255] the cast truncates, as PIL's (UINT8) does


def luma(image_bgr: np.ndarray) -> np.ndarray:
    """PIL convert("L"): (R * 299 + G * 587 + B * 114) / 1000, rounded; [H, W] uint8 from BGR."""
    b, g, r = (image_bgr[..., c].astype(np.int32) for c in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)  # PIL's fixed-point L


def adjust_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    return _blend(image, 0.0, factor)


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    mean = float(int(luma(image).mean() + 0.5))  # PIL ImageEnhance.Contrast: the rounded mean of L
    return _blend(image, mean, factor)


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    gray = luma(image).astype(np.float32)[..., None]
    return _blend(image, gray, factor)


def rgb_to_hsv_pil(rgb: np.ndarray) -> np.ndarray:
    """PIL's convert("HSV") (libImaging/Convert.c rgb2hsv): [..., 3] uint8 RGB -> uint8 H, S, V."""
    rgb = rgb.astype(np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    maxc, minc = rgb.max(axis=-1), rgb.min(axis=-1)
    span = np.where(maxc > minc, maxc - minc, 1).astype(np.float32)
    rc, gc, bc = ((maxc - c).astype(np.float32) / span for c in (r, g, b))
    # C's promotions: float operands, double literals (2.0, 6.0, 255.0), results stored in floats.
    h = np.where(r == maxc, bc - gc, np.where(g == maxc, 2.0 + rc.astype(np.float64) - bc,
                                              4.0 + gc.astype(np.float64) - rc)).astype(np.float32)
    h = np.fmod(h.astype(np.float64) / 6.0 + 1.0, 1.0).astype(np.float32)
    s = span / np.where(maxc > 0, maxc, 1).astype(np.float32)
    flat = maxc == minc
    hue = np.where(flat, 0, np.clip((h.astype(np.float64) * 255.0).astype(np.int32), 0, 255))
    sat = np.where(flat, 0, np.clip((s.astype(np.float64) * 255.0).astype(np.int32), 0, 255))
    return np.stack([hue, sat, maxc], axis=-1).astype(np.uint8)


def hsv_to_rgb_pil(hsv: np.ndarray) -> np.ndarray:
    """PIL's HSV -> RGB (libImaging/Convert.c hsv2rgb): [..., 3] uint8 -> uint8 RGB."""
    h, s, v = (hsv[..., c].astype(np.float32) for c in range(3))
    sector = np.floor(h * np.float32(6.0) / np.float32(255.0))
    f = h * np.float32(6.0) / np.float32(255.0) - sector
    fs = s / np.float32(255.0)
    p = np.clip(np.round(v * (1 - fs)), 0, 255)
    q = np.clip(np.round(v * (1 - fs * f)), 0, 255)
    t = np.clip(np.round(v * (1 - fs * (1 - f))), 0, 255)
    i = sector.astype(np.int32) % 6
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.stack([np.select([i == k for k in range(6)], [c[channel] for c in choices]) for channel in range(3)],
                   axis=-1)
    grey = (hsv[..., 1] == 0)[..., None]
    return np.where(grey, hsv[..., 2:3], out).astype(np.uint8)


def adjust_hue(image_bgr: np.ndarray, shift: float) -> np.ndarray:
    """torchvision adjust_hue on a PIL image: PIL HSV, hue += uint8(shift * 255) with wrap-around, back to RGB."""
    hsv = rgb_to_hsv_pil(image_bgr[..., ::-1])
    hsv[..., 0] = ((hsv[..., 0].astype(np.int64) + int(shift * 255)) % 256).astype(np.uint8)
    return np.ascontiguousarray(hsv_to_rgb_pil(hsv)[..., ::-1])


@dataclass(frozen=True)
class ColorJitter:
    """torchvision.transforms.ColorJitter(brightness, contrast, saturation, hue) for one frame."""

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1

    def __call__(self, image_bgr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        order = rng.permutation(4)  # torchvision draws the order, then each factor
        factors = (rng.uniform(1 - self.brightness, 1 + self.brightness),
                   rng.uniform(1 - self.contrast, 1 + self.contrast),
                   rng.uniform(1 - self.saturation, 1 + self.saturation),
                   rng.uniform(-self.hue, self.hue))
        ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
        for op in order:
            image_bgr = ops[op](image_bgr, factors[op])
        return image_bgr


@dataclass(frozen=True)
class TrainAugment:
    """Decoded frames of one clip -> [T, 3, R, R] float32, ViFi-CLIP's train pipeline (module docstring)."""

    resolution: int  # R
    normalization: Normalization
    flip: float = 0.5  # Flip(flip_ratio)
    color_jitter: float = 0.8  # AUG.COLOR_JITTER
    gray_scale: float = 0.2  # AUG.GRAY_SCALE
    scales: tuple[float, ...] = MULTISCALE_SCALES
    jitter: ColorJitter = ColorJitter()

    @property
    def resize_side(self) -> int:
        return train_resize_side(self.resolution)

    def resize(self, image: np.ndarray) -> np.ndarray:
        """The first step, applied as each frame is decoded (full-resolution frames are never kept)."""
        return resize_short_side_bilinear(image, self.resize_side)

    def __call__(self, frames: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """frames: T resized BGR frames (`resize`) -> [T, 3, R, R] float32, normalised RGB."""
        height, width = frames[0].shape[:2]
        left, top, crop_w, crop_h = multiscale_crop_box(height, width, self.resolution, rng, self.scales)
        size = (self.resolution, self.resolution)
        clip = np.stack([cv2.resize(np.ascontiguousarray(f[top:top + crop_h, left:left + crop_w]), size,
                                    interpolation=cv2.INTER_LINEAR) for f in frames])  # [T, R, R, 3] uint8
        if rng.random() < self.flip:
            clip = np.ascontiguousarray(clip[:, :, ::-1])
        if rng.random() < self.color_jitter:
            clip = np.stack([self.jitter(frame, rng) for frame in clip])
        if rng.random() < self.gray_scale:
            clip = np.repeat(np.stack([luma(frame) for frame in clip])[..., None], 3, axis=-1)
        return normalize(clip, self.normalization)  # [T, R, R, 3] BGR uint8 -> [T, 3, R, R] RGB float32
