"""Preprocessing profiles against independent transcriptions of the reference pipelines.

vificlip: mmaction2's test pipeline as ViFi-CLIP builds it (Resize(scale=(-1, S), keep_ratio) with mmcv's
rescale_size and cv2 bilinear, CenterCrop or ThreeCrop, Normalize via cv2.subtract / cv2.multiply), fed
RGB frames as decord decodes them. clip: OpenAI's `_transform` (torchvision Resize(R, BICUBIC) and
CenterCrop(R) on a PIL image, ToTensor, Normalize). Frames: landscape, portrait, odd, square, smaller than R.
"""
from __future__ import annotations

import numpy as np
import pytest

from apclip.config import NORMALIZATIONS
from apclip.engine.preprocess import crop_views, make_views, preprocess_clip, preprocess_frames, resize_frame
from apclip.preprocessing import Preprocessing, vificlip_crops

# (height, width): landscape, portrait, odd x odd, square, smaller than R on both sides, smaller on one.
SIZES = [(240, 320), (320, 240), (97, 131), (50, 50), (20, 28), (17, 45), (45, 17), (361, 641)]
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


# ---- the comparisons ---------------------------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("resolution", [32, 224])
@pytest.mark.parametrize("num_crop", [1, 2, 3])
def test_vificlip_profile_matches_mmaction(size, resolution, num_crop):
    frames = frames_bgr(*size)
    spec = Preprocessing(profile="vificlip", resolution=resolution, crops=vificlip_crops(num_crop), frames=3, clips=1)
    got = preprocess_clip(frames, spec)  # [crops, T, 3, R, R]
    ref = vificlip_test_pipeline([f[..., ::-1].copy() for f in frames], resolution, num_crop)  # decord gives RGB
    crops = 3 if num_crop == 3 else 1
    ref = ref.reshape(crops, len(frames), 3, resolution, resolution)  # [C * T, ...] -> [C, T, ...]
    assert got.shape == ref.shape
    assert float(np.abs(got - ref).max()) <= 1e-5
    assert float(np.abs(ref).max()) > 1.0  # not a degenerate (constant) input


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("resolution", [32, 224])
def test_clip_profile_matches_openai_transform(size, resolution):
    frames = frames_bgr(*size)
    spec = Preprocessing(profile="clip", resolution=resolution, frames=3, clips=1)
    for frame in frames:
        pixels = crop_views(resize_frame(frame, spec), resolution, 1, "clip")[0][..., ::-1]  # BGR -> RGB
        ref = openai_transform_uint8(frame[..., ::-1].copy(), resolution)
        assert pixels.shape == ref.shape
        assert int(np.abs(pixels.astype(np.int16) - ref.astype(np.int16)).max()) <= 1  # one grey level
    got = preprocess_clip(frames, spec)[0]  # [T, 3, R, R]
    ref = np.stack([openai_transform(f[..., ::-1].copy(), resolution) for f in frames])
    assert float(np.abs(got - ref).max()) <= 1e-5


def test_profiles_really_differ():
    """The three profiles give different pixels on the same frame (else the comparisons above prove nothing)."""
    frame = frames_bgr(240, 320, count=1)
    views = {p: preprocess_clip(frame, Preprocessing(profile=p, resolution=32, crops=1, frames=1, clips=1,
                                                     normalization="clip" if p != "vificlip" else None))
             for p in ("apclip", "vificlip", "clip")}
    assert np.abs(views["apclip"] - views["clip"]).max() > 0.05
    # vificlip normalises differently; compare its resize alone against clip's through the raw crop
    a = crop_views(resize_frame(frame[0], Preprocessing(profile="vificlip", resolution=32)), 32, 1, "vificlip")
    b = crop_views(resize_frame(frame[0], Preprocessing(profile="clip", resolution=32)), 32, 1, "clip")
    assert np.abs(a.astype(int) - b.astype(int)).max() > 10


def test_apclip_profile_is_the_old_behaviour():
    frames = frames_bgr(97, 131)
    for crops in (1, 2, 3):
        spec = Preprocessing(resolution=32, crops=crops, frames=3, clips=1, normalization="imagenet255")
        np.testing.assert_array_equal(preprocess_clip(frames, spec),
                                      preprocess_frames(frames, 32, crops, NORMALIZATIONS["imagenet255"]))


def test_profile_field_rules():
    assert Preprocessing().profile == "apclip" and Preprocessing().crops == 2
    vifi = Preprocessing(profile="vificlip")
    assert vifi.crops == 1 and vifi.normalization.name == "imagenet255"
    assert Preprocessing(profile="clip").normalization.name == "clip"
    assert [vificlip_crops(n) for n in (1, 2, 3, 4)] == [1, 1, 3, 1]
    with pytest.raises(ValueError, match="vificlip takes crops 1 or 3"):
        Preprocessing(profile="vificlip", crops=2)
    with pytest.raises(ValueError, match="clip takes crops 1"):
        Preprocessing(profile="clip", crops=3)
    with pytest.raises(ValueError, match="normalises with imagenet255"):
        Preprocessing(profile="vificlip", normalization="clip")
    with pytest.raises(ValueError, match="unknown preprocessing profile"):
        Preprocessing(profile="mmaction")
    spec = Preprocessing(profile="vificlip", crops=3, frames=16, clips=4)
    assert Preprocessing.from_dict(spec.to_dict()) == spec
    legacy = spec.to_dict()
    legacy.pop("profile")
    legacy["normalization"] = NORMALIZATIONS["clip"].to_dict()
    legacy["crops"] = 2
    assert Preprocessing.from_dict(legacy).profile == "apclip"  # manifests from before profiles


def test_engine_load_clip_uses_the_profile(tmp_path):
    """Through the engine (decode, FrameResizer on a thread pool, _assemble): the same as the reference."""
    import cv2

    from apclip.engine.clips import load_clip

    folder = tmp_path / "frames"
    folder.mkdir()
    frames = frames_bgr(61, 83, count=6)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:03d}.png"), frame)  # lossless: decoded frames equal these
    spec = Preprocessing(profile="vificlip", resolution=32, crops=3, frames=3, clips=2)
    clip = load_clip(folder, spec, workers=2, fps=10.0)
    for v, rows in enumerate(clip.frame_indices):
        clip_index, crop = divmod(v, 3)
        ref = vificlip_test_pipeline([frames[int(i)][..., ::-1].copy() for i in rows], 32, 3)
        ref = ref.reshape(3, len(rows), 3, 32, 32)[crop]  # [C * T, ...] -> [C, T, ...]
        assert float(np.abs(clip.views[v] - ref).max()) <= 1e-5


def test_make_views_keeps_its_signature():
    """Callers of the apclip profile (benchmarks, older code) still get what they got."""
    frames = [resize_frame(f, Preprocessing(resolution=32)) for f in frames_bgr(40, 64)]
    views = make_views([frames], 32, 2, NORMALIZATIONS["clip"])
    assert views.shape == (2, 3, 3, 32, 32)
