"""Resize, crops, normalisation and view order against straightforward numpy."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from apclip.config import NORMALIZATIONS, Normalization
from apclip.engine.video.preprocess import (
    crop_offsets,
    crop_views,
    flatten_views,
    make_views,
    normalize,
    preprocess_frames,
    resize_short_side,
    resized_size,
    unflatten_views,
)


def _reference_view(frame: np.ndarray, top: int, left: int, size: int, norm: Normalization) -> np.ndarray:
    """The obvious float64 computation: crop, BGR -> RGB, scale, subtract mean, divide std, to CHW."""
    crop = frame[top:top + size, left:left + size].astype(np.float64)
    rgb = crop[..., ::-1]
    out = (rgb * norm.scale - np.array(norm.mean)) / np.array(norm.std)
    return out.transpose(2, 0, 1)  # [R, R, 3] -> [3, R, R]


@pytest.mark.parametrize("height,width,expected", [
    (720, 1280, (224, 398)),  # 1280 * 224 / 720 = 398.2
    (1280, 720, (398, 224)),
    (224, 224, (224, 224)),
    (100, 150, (224, 336)),  # upscale
    (480, 854, (224, 399)),  # 398.5 rounds half up
    (4320, 7680, (224, 398)),
])
def test_resized_size(height: int, width: int, expected: tuple[int, int]) -> None:
    assert resized_size(height, width, 224) == expected


def test_resize_uses_area_to_shrink_and_bicubic_to_grow() -> None:
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (90, 160, 3), dtype=np.uint8)
    small = resize_short_side(big, 32)
    assert small.shape == (32, 57, 3)
    np.testing.assert_array_equal(small, cv2.resize(big, (57, 32), interpolation=cv2.INTER_AREA))
    tiny = big[:20, :30]
    grown = resize_short_side(tiny, 32)
    np.testing.assert_array_equal(grown, cv2.resize(tiny, (48, 32), interpolation=cv2.INTER_CUBIC))
    assert resize_short_side(small, 32) is small  # already the right size: untouched


@pytest.mark.parametrize("height,width,crops,expected", [
    (224, 398, 1, [(0, 87)]),
    (224, 398, 2, [(0, 0), (0, 174)]),
    (224, 398, 3, [(0, 0), (0, 87), (0, 174)]),
    (224, 399, 3, [(0, 0), (0, 87), (0, 175)]),  # odd room: the centre rounds down
    (398, 224, 2, [(0, 0), (174, 0)]),  # portrait: along the height
    (224, 224, 3, [(0, 0), (0, 0), (0, 0)]),
])
def test_crop_offsets(height: int, width: int, crops: int, expected: list[tuple[int, int]]) -> None:
    assert crop_offsets(height, width, 224, crops) == expected


def test_crop_offsets_reject_small_frames_and_bad_counts() -> None:
    with pytest.raises(ValueError, match="smaller than"):
        crop_offsets(100, 300, 224, 1)
    with pytest.raises(ValueError, match="crops must be"):
        crop_offsets(224, 300, 224, 4)


@pytest.mark.parametrize("norm_name", sorted(NORMALIZATIONS))
def test_make_views_matches_numpy_reference(norm_name: str) -> None:
    norm = NORMALIZATIONS[norm_name]
    rng = np.random.default_rng(1)
    size, crops, num_clips, num_frames = 16, 3, 2, 3
    clips = [[rng.integers(0, 256, (size, 27, 3), dtype=np.uint8) for _ in range(num_frames)]
             for _ in range(num_clips)]
    views = make_views(clips, size, crops, norm)
    assert views.shape == (num_clips * crops, num_frames, 3, size, size) and views.dtype == np.float32
    offsets = [0, 5, 11]  # (27 - 16) // 2 = 5 and 27 - 16 = 11 along the width
    for j in range(num_clips):
        for c in range(crops):
            for t in range(num_frames):
                expected = _reference_view(clips[j][t], 0, offsets[c], size, norm)
                np.testing.assert_allclose(views[j * crops + c, t], expected, rtol=1e-5, atol=1e-5)


def test_view_order_is_clip_major() -> None:
    # Frames whose left and right halves differ and whose brightness encodes (clip, frame).
    size, crops, num_clips, num_frames = 8, 2, 3, 2
    clips = []
    for j in range(num_clips):
        clip = []
        for t in range(num_frames):
            frame = np.zeros((size, 2 * size, 3), dtype=np.uint8)
            frame[:, :size] = 10 * (j * num_frames + t)  # left crop
            frame[:, size:] = 10 * (j * num_frames + t) + 5  # right crop
            clip.append(frame)
        clips.append(clip)
    views = make_views(clips, size, crops, Normalization("raw", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1.0))
    for v in range(num_clips * crops):
        clip, crop = divmod(v, crops)  # v = clip * crops + crop
        for t in range(num_frames):
            assert np.all(views[v, t] == 10 * (clip * num_frames + t) + 5 * crop), (v, t)


def test_normalize_swaps_channels_and_keeps_leading_axes() -> None:
    pixel = np.zeros((2, 3, 4, 4, 3), dtype=np.uint8)
    pixel[..., 0], pixel[..., 1], pixel[..., 2] = 10, 20, 30  # B, G, R
    out = normalize(pixel, Normalization("raw", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1.0))
    assert out.shape == (2, 3, 3, 4, 4)
    assert (out[:, :, 0] == 30).all() and (out[:, :, 1] == 20).all() and (out[:, :, 2] == 10).all()
    clip_norm = normalize(pixel, NORMALIZATIONS["clip"])
    np.testing.assert_allclose(clip_norm[0, 0, :, 0, 0],
                               (np.array([30, 20, 10]) / 255.0 - np.array(NORMALIZATIONS["clip"].mean))
                               / np.array(NORMALIZATIONS["clip"].std), rtol=1e-6)


def test_frames_of_different_sizes_are_cropped_from_their_own_shape() -> None:
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), rng.integers(0, 256, (80, 40, 3), dtype=np.uint8)]
    views = preprocess_frames(frames, 32, 2, NORMALIZATIONS["clip"])
    assert views.shape == (2, 2, 3, 32, 32)
    portrait = resize_short_side(frames[1], 32)  # [64, 32]
    np.testing.assert_allclose(views[1, 1], _reference_view(portrait, 32, 0, 32, NORMALIZATIONS["clip"]),
                               rtol=1e-5, atol=1e-5)


def test_crop_views_shape_and_content() -> None:
    frame = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    crops = crop_views(frame, 4, 2)
    assert crops.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(crops[1], frame[:, 2:6])


def test_flatten_and_unflatten_are_inverse() -> None:
    views = np.random.default_rng(3).standard_normal((4, 8, 3, 5, 5)).astype(np.float32)
    flat = flatten_views(views)
    assert flat.shape == (32, 3, 5, 5)
    np.testing.assert_array_equal(flat[2 * 8 + 5], views[2, 5])  # view-major, frame-minor
    np.testing.assert_array_equal(unflatten_views(flat, 4), views)
    embeddings = np.arange(32 * 6, dtype=np.float32).reshape(32, 6)
    per_view = unflatten_views(embeddings, 4)
    assert per_view.shape == (4, 8, 6)
    np.testing.assert_array_equal(per_view[3, 7], embeddings[31])
    with pytest.raises(ValueError, match="not a multiple"):
        unflatten_views(embeddings, 5)
