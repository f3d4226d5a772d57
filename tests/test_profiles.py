"""Preprocessing profiles against independent transcriptions of the reference pipelines (reference_pipelines.py)
on frames of several shapes: landscape, portrait, odd, square, smaller than R on one or both sides."""
from __future__ import annotations

import numpy as np
import pytest

from apclip.config import NORMALIZATIONS
from apclip.engine.video.preprocess import crop_views, make_views, preprocess_clip, preprocess_frames, resize_frame
from apclip.preprocessing import Preprocessing, vificlip_crops

from reference_pipelines import frames_bgr, openai_transform, openai_transform_uint8, vificlip_test_pipeline

# (height, width): landscape, portrait, odd x odd, square, smaller than R on both sides, smaller on one.
SIZES = [(240, 320), (320, 240), (97, 131), (50, 50), (20, 28), (17, 45), (45, 17), (361, 641)]


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
    """Through the engine (decode, FrameResizer on a thread pool, assemble_views): the same as the reference."""
    import cv2

    from apclip.engine.video.clips import load_clip

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


def test_engine_load_clip_clip_profile(tmp_path):
    """The clip profile through the engine (decode, FrameResizer threads, assemble_views) equals OpenAI's transform."""
    import cv2

    from apclip.engine.video.clips import load_clip

    folder = tmp_path / "frames"
    folder.mkdir()
    frames = frames_bgr(83, 61, count=5)  # portrait, odd
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:03d}.png"), frame)
    clip = load_clip(folder, Preprocessing(profile="clip", resolution=32, frames=3, clips=2), workers=2, fps=10.0)
    assert clip.views.shape == (2, 3, 3, 32, 32)
    for v, rows in enumerate(clip.frame_indices):
        ref = np.stack([openai_transform(frames[int(i)][..., ::-1].copy(), 32) for i in rows])
        assert float(np.abs(clip.views[v] - ref).max()) <= 1e-5
