"""Independent transcriptions of the reference preprocessing pipelines, shared by the profile and protocol tests.

vificlip: mmaction2's test pipeline as ViFi-CLIP builds it (datasets/build.py: Resize(scale=(-1, S), keep_ratio)
with mmcv's rescale_size and cv2 bilinear, CenterCrop or ThreeCrop, Normalize via cv2.subtract / cv2.multiply),
fed RGB frames as decord decodes them. clip: OpenAI's `_transform` (torchvision Resize(R, BICUBIC) and
CenterCrop(R) on a PIL image, ToTensor, Normalize). Written from the reference code, not from apclip's.
"""
from __future__ import annotations

import numpy as np

IMAGENET_MEAN = np.array([123.675, 116.28, 103.53])
IMAGENET_STD = np.array([58.395, 57.12, 57.375])
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def frames_bgr(height: int, width: int, count: int = 3, seed: int = 0) -> list[np.ndarray]:
    """Smooth gradients plus noise (full 0-255 range; never constant), as decoded BGR frames."""
    rng = np.random.default_rng(seed + height * 1000 + width)
    y, x = np.mgrid[0:height, 0:width]
    out = []
    for i in range(count):
        base = np.stack([(x * 7 + i * 13) % 256, (y * 5 + x * 3) % 256, (y * 11 + i * 29) % 256], axis=-1)
        noise = rng.integers(-40, 41, size=(height, width, 3))
        out.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return out


# ---- mmaction2 / mmcv, transcribed -------------------------------------------------------------------

def mmcv_rescale_size(old_size, scale):
    """mmcv.rescale_size((w, h), scale) for a tuple scale."""
    w, h = old_size
    max_long_edge, max_short_edge = max(scale), min(scale)
    scale_factor = min(max_long_edge / max(h, w), max_short_edge / min(h, w))
    return int(w * float(scale_factor) + 0.5), int(h * float(scale_factor) + 0.5)


def mmaction_resize(imgs, scale):
    """mmaction Resize(scale=(-1, S), keep_ratio=True, interpolation='bilinear') -> mmcv.imresize (cv2)."""
    import cv2

    long_edge, short_edge = max(scale), min(scale)
    if short_edge == -1:
        scale = (np.inf, long_edge)
    img_h, img_w = imgs[0].shape[:2]
    new_w, new_h = mmcv_rescale_size((img_w, img_h), scale)
    return [cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR) for img in imgs]


def mmaction_center_crop(imgs, crop_size):
    img_h, img_w = imgs[0].shape[:2]
    left, top = (img_w - crop_size) // 2, (img_h - crop_size) // 2
    return [img[top:top + crop_size, left:left + crop_size] for img in imgs]


def mmaction_three_crop(imgs, crop_size):
    img_h, img_w = imgs[0].shape[:2]
    assert crop_size == img_h or crop_size == img_w
    if crop_size == img_h:
        w_step = (img_w - crop_size) // 2
        offsets = [(0, 0), (2 * w_step, 0), (w_step, 0)]
    else:
        h_step = (img_h - crop_size) // 2
        offsets = [(0, 0), (0, 2 * h_step), (0, h_step)]
    cropped = []
    for x_offset, y_offset in offsets:
        cropped.extend(img[y_offset:y_offset + crop_size, x_offset:x_offset + crop_size] for img in imgs)
    return cropped


def mmaction_normalize(imgs):
    """mmaction Normalize(mean, std, to_bgr=False): float32 copy, then mmcv.imnormalize_ with cv2."""
    import cv2

    out = np.empty((len(imgs),) + imgs[0].shape, dtype=np.float32)
    mean = np.float64(IMAGENET_MEAN.reshape(1, -1))
    stdinv = 1 / np.float64(IMAGENET_STD.reshape(1, -1))
    for i, img in enumerate(imgs):
        out[i] = img
        cv2.subtract(out[i], mean, out[i])
        cv2.multiply(out[i], stdinv, out[i])
    return out.transpose(0, 3, 1, 2)  # FormatShape NCHW: [N, H, W, C] -> [N, C, H, W]


def vificlip_test_pipeline(frames_rgb, input_size, num_crop):
    """ViFi-CLIP datasets/build.py val pipeline after decode: [crops * T, 3, R, R] (crop-major)."""
    if num_crop == 3:
        imgs = mmaction_three_crop(mmaction_resize(frames_rgb, (-1, input_size)), input_size)
    else:
        imgs = mmaction_center_crop(mmaction_resize(frames_rgb, (-1, int(256 / 224 * input_size))), input_size)
    return mmaction_normalize(imgs)


# ---- OpenAI CLIP's _transform, transcribed ---------------------------------------------------------

def openai_transform_uint8(image_rgb: np.ndarray, n_px: int) -> np.ndarray:
    """Resize(n_px, BICUBIC) + CenterCrop(n_px) on a PIL image, before ToTensor: [n_px, n_px, 3] uint8."""
    from PIL import Image

    img = Image.fromarray(image_rgb)
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = n_px, int(n_px * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BICUBIC)
    w, h = img.size
    top, left = int(round((h - n_px) / 2.0)), int(round((w - n_px) / 2.0))
    img = img.crop((left, top, left + n_px, top + n_px)).convert("RGB")
    return np.asarray(img)


def openai_transform(image_rgb: np.ndarray, n_px: int) -> np.ndarray:
    """... + ToTensor + Normalize: [3, n_px, n_px] float32."""
    x = openai_transform_uint8(image_rgb, n_px).astype(np.float32) / 255.0
    x = (x - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return x.transpose(2, 0, 1)
