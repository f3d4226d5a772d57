"""The native runtime gives the Python engine's answers on the same bundle: the same pixels (exactly where
both call the same OpenCV resize; within one grey level for the `clip` profile's Pillow bicubic port and for
INTER_CUBIC upscaling, where Debian's OpenCV and the pip wheel's may differ), and the same top-5 and scores
(within 1e-5, or 1e-4 where a resize can differ by a grey level), for every profile and both protocols, on
generated videos of odd sizes and lengths (frames smaller than the model's input included).

Every case is a bundle re-bound from the session's tiny export (tests/native_helpers.rebind_bundle): same
encoders, another profile or protocol. Videos are lossless (FFV1) so both sides decode the same frames.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from native_helpers import rebind_bundle, run_cli, write_lossless_video

RESOLUTION = 32  # the tiny preset's input
# name -> (Preprocessing kwargs, Scoring kwargs or None for MAKA, prompts per class)
CASES = {
    "apclip-maka": (dict(profile="apclip", crops=2, frames=8, clips=2), None, None),
    "vificlip-vificlip": (dict(profile="vificlip", crops=3, frames=3, clips=2),
                          dict(protocol="vificlip", logit_scale=100.0, template="a photo of a {}."), 1),
    "vificlip-maka": (dict(profile="vificlip", crops=1, frames=4, clips=3), None, None),
    "clip-maka": (dict(profile="clip", crops=1, frames=5, clips=2), None, None),
    "clip-vificlip": (dict(profile="clip", crops=1, frames=8, clips=1),
                      dict(protocol="vificlip", logit_scale=50.0, template="a photo of a {}."), 1),
}
# name -> (width, height, frames): odd landscape, portrait with fewer frames than T, smaller than the
# model's input (upscaled), and a single frame
VIDEOS = {"odd": (75, 41, 23), "portrait": (41, 67, 7), "small": (24, 18, 13), "one-frame": (33, 35, 1)}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("parity_videos")
    return {name: write_lossless_video(folder / f"{name}.avi", frames=n, size=(w, h))
            for name, (w, h, n) in VIDEOS.items()}


@pytest.fixture(scope="module")
def bundles(tiny_bundle, tmp_path_factory) -> dict[str, Path]:
    from apclip.preprocessing import Preprocessing
    from apclip.scoring_protocol import Scoring

    folder = tmp_path_factory.mktemp("parity_bundles")
    out = {}
    for name, (pre, scoring, prompts) in CASES.items():
        out[name] = rebind_bundle(tiny_bundle, folder / name,
                                  preprocessing=Preprocessing(resolution=RESOLUTION, **pre),
                                  scoring=Scoring(**scoring) if scoring else None, prompts_per_class=prompts)
    return out


def _grey_level_tolerance(case: str, video: str) -> float:
    """Grey levels the native pixels may differ by: 0 where both sides call the same OpenCV resize."""
    profile = CASES[case][0]["profile"]
    upscaled = min(VIDEOS[video][:2]) < RESOLUTION
    return 1.0 if profile == "clip" or (profile == "apclip" and upscaled) else 0.0


def _score_tolerance(case: str, video: str) -> float:
    """1e-5 on equal pixels, 1e-4 where the Pillow port may round a grey level apart. INTER_CUBIC upscaling
    (apclip profile, frames smaller than the input): Debian's OpenCV 4.6 and the pip wheel's differ by one grey
    level on ~5% of the pixels of a 24x18 -> 32 px frame (measured), which moves the tiny random model's
    scores by up to 2e-4: that case is held to 5e-4, and to the same top-5."""
    if CASES[case][0]["profile"] == "apclip" and _grey_level_tolerance(case, video):
        return 5e-4
    return 1e-4 if _grey_level_tolerance(case, video) else 1e-5


@pytest.mark.parametrize("case", [c for c in CASES if c.endswith("maka") or c == "vificlip-vificlip"])
def test_pixels_equal_the_python_profile(native_build, bundles, videos, case, tmp_path):
    from apclip.bundle import read_manifest
    from apclip.engine.video.clips import load_clip

    spec = read_manifest(bundles[case]).preprocessing
    gain = np.array([spec.normalization.scale / s for s in spec.normalization.std], dtype=np.float32)  # per grey level
    for name, video in videos.items():
        dump = tmp_path / f"{name}.npy"
        done = run_cli(native_build, bundles[case], video, "--dump-pixels", dump)
        assert done.returncode == 0, done.stderr
        native = np.load(dump)
        python = load_clip(video, spec).views  # [V, T, 3, R, R]
        assert native.shape == python.shape == (spec.views, spec.frames, 3, RESOLUTION, RESOLUTION)
        grey_levels = np.abs(native - python) / gain[None, None, :, None, None]
        allowed = _grey_level_tolerance(case, name)
        assert grey_levels.max() <= allowed + 1e-3, f"{case} {name}: {grey_levels.max():.3f} grey levels apart"
        if allowed == 0:
            np.testing.assert_array_equal(native, python)  # bit for bit, normalisation rounding included


def _agree(native: dict, python: dict, tolerance: float) -> None:
    for field in ("source", "protocol", "frames", "approximate", "distinct_frames"):
        assert native[field] == python[field], field
    n = {t["label"]: t["score"] for t in native["top"]}
    p = {t["label"]: t["score"] for t in python["top"]}
    assert n.keys() == p.keys()  # the same top-5
    for label in p:
        assert abs(n[label] - p[label]) <= tolerance, (label, n[label], p[label])
    order_n, order_p = [t["label"] for t in native["top"]], [t["label"] for t in python["top"]]
    for a, b in zip(order_n, order_p):  # the same order, except between scores closer than the tolerance
        assert a == b or abs(p[a] - p[b]) <= 2 * tolerance, (order_n, order_p)


@pytest.mark.parametrize("case", list(CASES))
def test_scores_equal_apclip_infer(native_build, bundles, videos, case, tmp_path, capsys):
    from infer_cli_helpers import read_jsonl, run

    sources = list(videos.values())
    native_out, python_out = tmp_path / "native.jsonl", tmp_path / "python.jsonl"
    done = run_cli(native_build, bundles[case], *sources, "--json", native_out, "--topk", "5")
    assert done.returncode == 0, done.stderr
    code, _, err = run(capsys, *sources, "--bundle", bundles[case], "--json", python_out, "--topk", "5",
                       "--backend", "ort", "--scorer", "numpy", "--no-cache", "--quiet")
    assert code == 0, err
    native, python = read_jsonl(native_out), read_jsonl(python_out)
    assert len(native) == len(python) == len(sources)
    for name, n, p in zip(videos, native, python):
        assert n["backend"] == "openvino-cpu" and len(n["top"]) == 5
        _agree(n, p, _score_tolerance(case, name))
    if CASES[case][1]:  # vificlip: per-view probabilities summed over views
        views = CASES[case][0]["clips"] * CASES[case][0]["crops"]
        assert all(abs(sum(t["score"] for t in r["top"]) - views) < 1e-4 for r in native)
