"""The training pipeline against independent transcriptions of ViFi-CLIP's (mmaction2 + torchvision on PIL)."""
from __future__ import annotations

import numpy as np
import pytest

from apclip.config import Normalization
from apclip.train import augment as A

PIL = pytest.importorskip("PIL.Image")
from PIL import Image, ImageEnhance  # noqa: E402

IDENTITY = Normalization("identity", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1.0)


@pytest.fixture
def image_rgb():
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, size=(61, 83, 3), dtype=np.uint8)
    image[0, :4] = [(9, 9, 9), (255, 0, 0), (0, 255, 0), (0, 0, 255)]  # grey and pure hues
    return image


def test_colour_ops_match_pil_pixel_for_pixel(image_rgb):
    pil = Image.fromarray(image_rgb)
    bgr = np.ascontiguousarray(image_rgb[..., ::-1])
    assert np.array_equal(A.luma(bgr), np.asarray(pil.convert("L")))
    assert np.array_equal(A.rgb_to_hsv_pil(image_rgb), np.asarray(pil.convert("HSV")))
    hsv = np.random.default_rng(1).integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
    assert np.array_equal(A.hsv_to_rgb_pil(hsv), np.asarray(Image.fromarray(hsv, "HSV").convert("RGB")))
    for factor in (0.6, 0.77, 1.0, 1.31, 1.4):
        for ours, theirs in ((A.adjust_brightness, ImageEnhance.Brightness), (A.adjust_contrast, ImageEnhance.Contrast),
                             (A.adjust_saturation, ImageEnhance.Color)):
            expected = np.asarray(theirs(pil).enhance(factor))
            assert np.array_equal(ours(bgr, factor)[..., ::-1], expected), (ours.__name__, factor)


def _torchvision_adjust_hue_pil(pil, factor):
    """torchvision.transforms.functional_pil.adjust_hue, transcribed."""
    h, s, v = pil.convert("HSV").split()
    np_h = np.array(h, dtype=np.uint8)
    np_h = ((np_h.astype(np.int64) + int(factor * 255)) % 256).astype(np.uint8)  # uint8 addition wraps
    return np.asarray(Image.merge("HSV", (Image.fromarray(np_h, "L"), s, v)).convert("RGB"))


@pytest.mark.parametrize("factor", [-0.1, -0.042, 0.0, 0.03, 0.1])
def test_hue_matches_torchvision_on_pil(image_rgb, factor):
    bgr = np.ascontiguousarray(image_rgb[..., ::-1])
    assert np.array_equal(A.adjust_hue(bgr, factor)[..., ::-1], _torchvision_adjust_hue_pil(Image.fromarray(image_rgb),
                                                                                              factor))


def test_resize_follows_mmcv_rescale_size():
    # mmcv.rescale_size((w, h), (inf, S)): factor = S / min(h, w); size = int(w * f + 0.5), int(h * f + 0.5)
    for h, w, short in ((240, 320, 256), (256, 340, 256), (720, 1280, 256), (481, 367, 36), (48, 64, 36)):
        f = short / min(h, w)
        assert A.rescaled_size(h, w, short) == (int(h * f + 0.5), int(w * f + 0.5))
    assert A.train_resize_side(224) == 256 and A.train_resize_side(32) == 36
    out = A.resize_short_side_bilinear(np.zeros((240, 320, 3), np.uint8), 256)
    assert out.shape == (256, 341, 3)


class _Replay:
    """A stand-in Generator whose integers() returns the given choices in turn."""

    def __init__(self, *choices):
        self.choices = list(choices)

    def integers(self, n):
        value = self.choices.pop(0)
        assert 0 <= value < n
        return value


def _mmaction_multiscale_crop(h, w, size, scales, size_choice, offset_choice):
    """mmaction2 MultiScaleCrop(random_crop=False, max_wh_scale_gap=1, num_fixed_crops=5), transcribed."""
    base_size = min(h, w)
    crop_sizes = [int(base_size * s) for s in scales]
    candidate_sizes = []
    for i, ch in enumerate(crop_sizes):
        for j, cw in enumerate(crop_sizes):
            if abs(i - j) <= 1:
                candidate_sizes.append([cw, ch])
    crop_size = candidate_sizes[size_choice]
    for i in range(2):
        if abs(crop_size[i] - size) < 3:
            crop_size[i] = size
    crop_w, crop_h = crop_size
    w_step, h_step = (w - crop_w) // 4, (h - crop_h) // 4
    offsets = [(0, 0), (4 * w_step, 0), (0, 4 * h_step), (4 * w_step, 4 * h_step), (2 * w_step, 2 * h_step)]
    x, y = offsets[offset_choice]
    return x, y, crop_w, crop_h


@pytest.mark.parametrize("h, w, size", [(256, 341, 224), (256, 256, 224), (36, 48, 32), (455, 256, 224)])
def test_multiscale_crop_matches_mmaction(h, w, size):
    for size_choice in range(10):  # 4 scales with |i - j| <= 1: 4 + 3 + 3 candidates
        for offset_choice in range(5):
            ours = A.multiscale_crop_box(h, w, size, _Replay(size_choice, offset_choice))
            assert ours == _mmaction_multiscale_crop(h, w, size, A.MULTISCALE_SCALES, size_choice, offset_choice)


def _frames(t=4, h=36, w=48):
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for _ in range(t)]


def test_train_augment_shapes_determinism_flip_and_gray():
    frames = _frames()
    plain = A.TrainAugment(32, IDENTITY, flip=0.0, color_jitter=0.0, gray_scale=0.0)
    clip = plain(frames, np.random.default_rng(5))
    assert clip.shape == (4, 3, 32, 32) and clip.dtype == np.float32
    assert np.array_equal(clip, plain(frames, np.random.default_rng(5)))
    flipped = A.TrainAugment(32, IDENTITY, flip=1.0, color_jitter=0.0, gray_scale=0.0)(frames, np.random.default_rng(5))
    assert np.array_equal(flipped, clip[..., ::-1])  # same draws for the crop, then a horizontal flip
    gray = A.TrainAugment(32, IDENTITY, flip=0.0, color_jitter=0.0, gray_scale=1.0)(frames, np.random.default_rng(5))
    assert np.array_equal(gray[:, 0], gray[:, 1]) and np.array_equal(gray[:, 1], gray[:, 2])
    jittered = A.TrainAugment(32, IDENTITY, flip=0.0, color_jitter=1.0, gray_scale=0.0)(frames, np.random.default_rng(5))
    assert not np.array_equal(jittered, clip)
    # Each frame draws its own jitter (ViFi-CLIP calls torchvision's ColorJitter once per frame).
    ratios = [float(np.mean(jittered[t]) / np.mean(clip[t])) for t in range(4)]
    assert len({round(r, 3) for r in ratios}) > 1


def test_epoch_sampler_is_seeded_and_skips():
    pytest.importorskip("torch")
    from apclip.train.data import EpochSampler

    a, b = EpochSampler(20, seed=1), EpochSampler(20, seed=1)
    a.set_epoch(3)
    b.set_epoch(3, skip=7)
    full, rest = list(a), list(b)
    assert sorted(i for _, i in full) == list(range(20)) and all(e == 3 for e, _ in full)
    assert rest == full[7:] and len(b) == 13
    a.set_epoch(4)
    assert list(a) != full
