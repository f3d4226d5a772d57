"""Spatial views and normalisation: decoded BGR frames -> float32 [V, T, 3, R, R].

What happens to the pixels is the preprocessing profile's (apclip.preprocessing): `resize_frame` and
`crop_boxes` dispatch on it.

vificlip (ViFi-CLIP's mmaction test pipeline, reproduced call for call):
  resize the short side to S = int(256 / 224 * R) (S = R when crops = 3) with cv2.INTER_LINEAR, the
  size rounded as mmcv's rescale_size does (int(side * S / short + 0.5)); then mmaction's CenterCrop
  (top = (h - R) // 2, left = (w - R) // 2), or with 3 crops ThreeCrop (offsets 0, 2 * step, step
  along the long side, step = (L - R) // 2, in that order).
clip (OpenAI CLIP's `_transform`): PIL bicubic resize (antialiased) of the short side to R, the long
  side int(R * long / short) as torchvision computes it; torchvision's CenterCrop
  (top = round((h - R) / 2), Python's round).

apclip (bundles made before profiles), per frame, as soon as it is decoded (so that 8K frames never pile up at full resolution):
  resize the short side to R, the long side to round(long * R / short) (mmcv's rounding).
  Downscaling uses cv2.INTER_AREA and upscaling cv2.INTER_CUBIC: CLIP resizes with PIL's bicubic,
  which low-pass filters when it shrinks; INTER_AREA comes closest to it (about 48 dB PSNR against
  an antialiased bicubic on 720p -> 224, where cv2's plain INTER_CUBIC aliases, about 32 dB).

Per clip:
  crops of R x R along the long side (the short side is R already), offsets 0, (L - R) // 2, L - R:
    1 crop: centre;  2 crops: the two ends (the paper's default);  3 crops: start, centre, end
    (ViFi-CLIP's ThreeCrop, which places its last crop at 2 * ((L - R) // 2): one pixel apart when
    L - R is odd). "Start" is the left of a landscape frame, the top of a portrait one.
  BGR -> RGB, (pixel * scale - mean) / std with an apclip.config.Normalization, channels first.

View order is clip-major: view v = clip * crops + crop, so views [0, crops) are temporal clip 0.
`flatten_views` gives the encoder [V * T, 3, R, R]; `unflatten_views` restores [V, T, ...] from any
per-image output (images or embeddings).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from apclip.config import CROP_COUNTS, Normalization
from apclip.preprocessing import Preprocessing


def resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) with the short side = short_side and the aspect ratio kept (rounded half up)."""
    if height <= width:
        return short_side, max(short_side, int(width * short_side / height + 0.5))
    return max(short_side, int(height * short_side / width + 0.5)), short_side


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    """[H, W, C] -> [h, w, C] with min(h, w) = short_side; area filter down, bicubic up."""
    height, width = image.shape[:2]
    new_height, new_width = resized_size(height, width, short_side)
    if (new_height, new_width) == (height, width):
        return image
    shrinking = new_height * new_width < height * width
    return cv2.resize(image, (new_width, new_height),
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def crop_offsets(height: int, width: int, size: int, crops: int) -> list[tuple[int, int]]:
    """(top, left) of each size x size crop of a frame whose short side is `size`, in view order."""
    if crops not in CROP_COUNTS:
        raise ValueError(f"crops must be one of {CROP_COUNTS}, got {crops}")
    if min(height, width) < size:
        raise ValueError(f"frame {height}x{width} is smaller than the {size} px crop")
    extra = max(height, width) - size  # room along the long side
    along = {1: [extra // 2], 2: [0, extra], 3: [0, extra // 2, extra]}[crops]
    top_margin, left_margin = (height - size) // 2, (width - size) // 2  # centre the short side
    if width >= height:
        return [(top_margin, x) for x in along]
    return [(y, left_margin) for y in along]


def vificlip_short_side(resolution: int, crops: int) -> int:
    """ViFi-CLIP's test resize: int(256 / 224 * R) before one centre crop, R before ThreeCrop."""
    return resolution if crops == 3 else int(256 / 224 * resolution)


def mmcv_rescaled_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) of mmcv.rescale_size((w, h), (inf, short_side)): keep ratio, round half up."""
    scale = short_side / min(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def torchvision_resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) of torchvision's Resize(short_side): the long side truncated, not rounded."""
    if width <= height:
        return int(short_side * height / width), short_side
    return short_side, int(short_side * width / height)


def resize_pil_bicubic(image: np.ndarray, height: int, width: int, resample: str = "bicubic") -> np.ndarray:
    """[H, W, 3] uint8 -> [height, width, 3] uint8 with PIL's antialiased bicubic filter (CLIP's resize).

    Channels are resampled independently, so the BGR order can stay as it is."""
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image  # PIL returns an unchanged copy for the same size
    filter_ = Image.BILINEAR if resample == "bilinear" else Image.BICUBIC  # bilinear: X-CLIP's processor
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((width, height), filter_)
    return np.asarray(resized)


def resize_frame(image: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """A decoded [H, W, 3] uint8 frame resized as spec.profile says, ready for crop_boxes."""
    height, width = image.shape[:2]
    r = spec.resolution
    if spec.profile == "vificlip":
        new_height, new_width = mmcv_rescaled_size(height, width, vificlip_short_side(r, spec.crops))
        return cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_LINEAR)  # mmcv's 'bilinear'
    if spec.profile == "clip":
        return resize_pil_bicubic(image, *torchvision_resized_size(height, width, r))
    if spec.profile == "xclip":  # transformers' resize: shortest_edge, long side truncated, PIL bilinear
        return resize_pil_bicubic(image, *torchvision_resized_size(height, width, r), resample="bilinear")
    return resize_short_side(image, r)


def crop_boxes(height: int, width: int, size: int, crops: int, profile: str = "apclip") -> list[tuple[int, int]]:
    """(top, left) of each size x size crop of a frame resized by `profile`'s rule, in view order."""
    if profile == "vificlip":
        if crops == 3:  # mmaction ThreeCrop: left/top, right/bottom, middle
            if height == size:
                step = (width - size) // 2
                return [(0, 0), (0, 2 * step), (0, step)]
            if width == size:
                step = (height - size) // 2
                return [(0, 0), (2 * step, 0), (step, 0)]
            raise ValueError(f"ThreeCrop needs a frame with one side {size}, got {height}x{width}")
        return [((height - size) // 2, (width - size) // 2)]  # mmaction CenterCrop
    if profile == "xclip":  # transformers' center_crop: floor offsets
        return [((height - size) // 2, (width - size) // 2)]
    if profile == "clip":
        return [(int(round((height - size) / 2.0)), int(round((width - size) / 2.0)))]  # torchvision CenterCrop
    return crop_offsets(height, width, size, crops)


def crop_views(image: np.ndarray, size: int, crops: int, profile: str = "apclip") -> np.ndarray:
    """[h, w, 3] resized frame -> [crops, size, size, 3], same dtype."""
    return np.stack([image[y:y + size, x:x + size] for y, x in crop_boxes(*image.shape[:2], size, crops, profile)])


def normalize(images_bgr: np.ndarray, norm: Normalization) -> np.ndarray:
    """[..., H, W, 3] uint8 BGR -> [..., 3, H, W] float32 RGB, (pixel * scale - mean) / std."""
    mean = np.asarray(norm.mean, dtype=np.float64)
    std = np.asarray(norm.std, dtype=np.float64)
    gain = (norm.scale / std).astype(np.float32)  # folded into one multiply-add per pixel
    bias = (-mean / std).astype(np.float32)
    out = np.empty(images_bgr.shape[:-3] + (3,) + images_bgr.shape[-3:-1], dtype=np.float32)
    for rgb in range(3):
        plane = out[..., rgb, :, :]  # [..., H, W]
        np.multiply(images_bgr[..., 2 - rgb], gain[rgb], out=plane)  # BGR channel 2 - c is RGB channel c
        plane += bias[rgb]
    return out


def make_views(clips: Sequence[Sequence[np.ndarray]], size: int, crops: int, norm: Normalization,
               profile: str = "apclip") -> np.ndarray:
    """N clips of T resized frames ([h, w, 3] uint8 BGR) -> [N * crops, T, 3, R, R] float32, clip-major.

    Frames may differ in size (image folders); each is cropped from its own shape.
    """
    num_clips, num_frames = len(clips), len(clips[0])
    views = np.empty((num_clips, crops, num_frames, size, size, 3), dtype=np.uint8)
    for j, clip in enumerate(clips):
        if len(clip) != num_frames:
            raise ValueError(f"clip {j} has {len(clip)} frames, clip 0 has {num_frames}")
        for t, frame in enumerate(clip):
            views[j, :, t] = crop_views(frame, size, crops, profile)  # [crops, R, R, 3]
    # [N, C, T, R, R, 3] -> [V = N * C, T, R, R, 3]: clip-major view order
    views = views.reshape(num_clips * crops, num_frames, size, size, 3)
    return normalize(views, norm)  # [V, T, 3, R, R]


def preprocess_frames(frames: Sequence[np.ndarray], size: int, crops: int, norm: Normalization) -> np.ndarray:
    """One clip of decoded BGR frames (any size) -> [crops, T, 3, R, R]: resize, crop, normalise (apclip profile)."""
    return make_views([[resize_short_side(f, size) for f in frames]], size, crops, norm)


def spec_views(clips: Sequence[Sequence[np.ndarray]], spec: Preprocessing) -> np.ndarray:
    """N clips of T frames already through resize_frame -> [N * crops, T, 3, R, R] for spec."""
    return make_views(clips, spec.resolution, spec.crops, spec.normalization, spec.profile)


def preprocess_clip(frames: Sequence[np.ndarray], spec: Preprocessing) -> np.ndarray:
    """One clip of decoded BGR frames (any size) -> [crops, T, 3, R, R] as spec's profile prepares them."""
    return spec_views([[resize_frame(f, spec) for f in frames]], spec)


def flatten_views(views: np.ndarray) -> np.ndarray:
    """[V, T, ...] -> [V * T, ...]: the encoder's batch (view-major, frame-minor)."""
    return views.reshape((views.shape[0] * views.shape[1],) + views.shape[2:])


def unflatten_views(batch: np.ndarray, views: int) -> np.ndarray:
    """[V * T, ...] -> [V, T, ...]; inverse of flatten_views for images or per-image embeddings."""
    if batch.shape[0] % views:
        raise ValueError(f"batch of {batch.shape[0]} is not a multiple of {views} views")
    return batch.reshape((views, batch.shape[0] // views) + batch.shape[1:])
