"""Recognizer on generated videos and the session's tiny bundle: clip and stream mode, runners and
scorers against their references, the decode thread, and the torch-free runtime."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from apclip.bundle import MANIFEST, VISION_FILE, BundleError, sha256_file
from apclip.errors import ApclipError

ort = pytest.importorskip("onnxruntime")

from apclip.engine import Recognizer, WindowPrediction  # noqa: E402
from apclip.engine.video.clips import load_clip  # noqa: E402
from apclip.engine.video.preprocess import flatten_views  # noqa: E402
from apclip.engine.scoring.scorers import NumpyScorer, OnnxScorer  # noqa: E402
from apclip.testing.videos import write_test_video  # noqa: E402
from apclip.tokenizer import get_tokenizer  # noqa: E402

FPS = 10.0
SECONDS = 5.0


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("APCLIP_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def rec(tiny_bundle) -> Recognizer:
    return Recognizer.from_bundle(tiny_bundle, backend="ort", scorer="numpy")


@pytest.fixture(scope="module")
def five_seconds(tmp_path_factory) -> Path:
    """50 frames at 10 fps: window starts and ends fall on known seconds."""
    return write_test_video(tmp_path_factory.mktemp("video") / "five.avi", frames=int(FPS * SECONDS),
                            size=(96, 72), fps=FPS)


def unit_rows(shape: tuple[int, ...], seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# -- clip mode ---------------------------------------------------------------------------------------
def test_clip_mode_scores_every_view_frame_and_ranks_all_classes(rec, demo_assets):
    pred = rec.predict(demo_assets["video"])
    pre = rec.manifest.preprocessing
    assert pred.frames == pre.frames * pre.clips * pre.crops == 32
    assert pred.scores.shape == (len(rec.labels),)
    assert [t.label for t in pred.top] == [rec.labels[k] for k in np.argsort(-pred.scores, kind="stable")]
    assert [t.score for t in pred.top] == sorted((t.score for t in pred.top), reverse=True)
    assert (pred.backend, pred.scorer) == ("ort-cpu", "numpy")
    assert pred.label == pred.top[0].label
    assert not pred.approximate
    assert {"decode+preprocess", "encode", "score"} <= set(pred.timings)


def test_clip_scores_are_maka_of_the_encoded_views(rec, demo_assets):
    """The whole pipeline equals encoding the clip's pixels directly and scoring them with the reference."""
    from apclip.scoring import maka_score

    pred = rec.predict(demo_assets["video"])
    clip = load_clip(demo_assets["video"], rec.spec)
    emb = rec.vision(flatten_views(clip.views))  # [V, T, 3, R, R] -> [V*T, 3, R, R] -> [V*T, E]
    expected = maka_score(emb[None].astype(np.float64), rec.classes.embeddings, rec.classes.counts)[0]
    np.testing.assert_allclose(pred.scores, expected, rtol=0, atol=1e-5)


def test_topk_and_explanations(rec, demo_assets):
    pred = rec.predict(demo_assets["video"], topk=2, explain=True)
    assert len(pred.top) == 2
    assert [e.label for e in pred.explanations] == [t.label for t in pred.top]
    prompts = json.loads((rec.manifest.path / "prompts.json").read_text(encoding="utf-8"))
    for e, t in zip(pred.explanations, pred.top):
        assert e.score == pytest.approx(t.score, abs=1e-5)
        assert len(e.frames) == pred.frames
        assert {f.view for f in e.frames} == set(range(rec.spec.views))
        assert all(f.prompt in prompts[e.label] for f in e.frames)
        # MAKA = 1/2 (frame->prompt half + prompt->frame half); the first half is the mean of these
        # best similarities, and no prompt's best frame can beat the best similarity of all.
        sims = [f.similarity for f in e.frames]
        assert 2 * e.score - np.mean(sims) <= max(sims) + 1e-6
    assert len(rec.predict(demo_assets["video"], topk=50).top) == len(rec.labels)


def test_predict_many_equals_predict_one_by_one(rec, demo_assets, five_seconds):
    sources = [demo_assets["video"], five_seconds]
    many = list(rec.predict_many(sources))
    assert [p.source for p in many] == [str(s) for s in sources]
    for pred, source in zip(many, sources):
        np.testing.assert_array_equal(pred.scores, rec.predict(source).scores)


# -- stream mode ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("window, stride, starts", [
    (2.0, 1.0, [0.0, 1.0, 2.0, 3.0]),  # window k needs its last frame at k + 2 * 7.5/8 s < 5 s
    (3.0, 2.0, [0.0, 2.0]),
    (1.0, 1.0, [0.0, 1.0, 2.0, 3.0, 4.0]),
])
def test_stream_windows_and_timestamps(rec, five_seconds, window, stride, starts):
    windows = list(rec.stream(five_seconds, window=window, stride=stride, explain=True, topk=3))
    assert all(isinstance(w, WindowPrediction) for w in windows)
    assert [w.index for w in windows] == list(range(len(starts)))
    assert [w.start for w in windows] == pytest.approx(starts)
    assert [w.end for w in windows] == pytest.approx([s + window for s in starts])
    pre = rec.manifest.preprocessing
    for w in windows:
        assert w.frames == pre.frames * pre.crops  # one temporal clip per window
        assert len(w.top) == 3
        # every sampled frame is the one on screen at its segment centre inside the window
        centres = w.start + (np.arange(pre.frames) + 0.5) * window / pre.frames
        expected = np.floor(centres * FPS + 1e-9).astype(int)
        for crop in range(pre.crops):
            frames = [f.frame for f in w.explanations[0].frames if f.view == crop]
            assert frames == expected.tolist()
        assert all(w.start <= f.time < w.end for f in w.explanations[0].frames)


def test_stream_window_scores_equal_clip_mode_on_the_same_frames(rec, five_seconds):
    """Window k of span 5 s is the whole video: its one temporal clip is load_clip's with clips=1."""

    [window] = rec.stream(five_seconds, window=SECONDS, stride=SECONDS)
    clip = load_clip(five_seconds, rec.manifest.preprocessing.with_clips(1))
    np.testing.assert_allclose(window.scores, rec.score(rec.encode_clip(clip)), rtol=0, atol=1e-6)


def test_stream_stops_its_decode_thread_when_the_consumer_stops(rec, five_seconds):
    stream = rec.stream(five_seconds, window=1.0, stride=0.5)
    first = next(stream)
    assert first.index == 0
    stream.close()
    assert not [t for t in threading.enumerate() if t.name == "apclip-decode" and t.is_alive()]


def test_stream_too_short_raises_the_decoders_error(rec, demo_assets):
    from apclip.engine import NoFramesError

    with pytest.raises(NoFramesError, match="before its first window"):
        list(rec.stream(demo_assets["video"], window=10.0, stride=1.0))
    assert not [t for t in threading.enumerate() if t.name == "apclip-decode" and t.is_alive()]


# -- runners and scorers against their references ------------------------------------------------------------
def test_ort_runner_matches_torch_runner(tiny_bundle, demo_assets):
    pytest.importorskip("torch")
    ort_rec = Recognizer.from_bundle(tiny_bundle, backend="ort", scorer="numpy")
    torch_rec = Recognizer.from_bundle(tiny_bundle, backend="torch", ckpt=demo_assets["checkpoint"], scorer="numpy")
    assert torch_rec.backend == "torch-cpu"
    pixels = flatten_views(load_clip(demo_assets["video"], ort_rec.spec).views)
    tokens = get_tokenizer().tokenize(["a video of juggling balls.", "a video of a cat surfing a wave."])
    for name, ort_out, ref in (("vision", ort_rec.vision(pixels), torch_rec.vision(pixels)),
                               ("text", ort_rec.text(tokens), torch_rec.text(tokens))):
        cosine = (ort_out * ref).sum(-1) / np.linalg.norm(ort_out, axis=-1) / np.linalg.norm(ref, axis=-1)
        assert cosine.min() >= 0.99999, name
        assert np.abs(ort_out - ref).max() <= 1e-4, name
    ort_pred, torch_pred = ort_rec.predict(demo_assets["video"]), torch_rec.predict(demo_assets["video"])
    assert ort_pred.label == torch_pred.label
    np.testing.assert_allclose(ort_pred.scores, torch_pred.scores, rtol=0, atol=1e-4)


def test_torch_backend_refuses_another_checkpoint(tiny_bundle, demo_assets, tmp_path):
    pytest.importorskip("torch")
    other = tmp_path / "other.pt"
    other.write_bytes(Path(demo_assets["checkpoint"]).read_bytes() + b"\0")
    with pytest.raises(ApclipError, match="sha256 differs"):
        Recognizer.from_bundle(tiny_bundle, backend="torch", ckpt=other)


def test_numpy_and_onnx_scorers_agree(rec):
    frames = unit_rows((3, 32, rec.manifest.embed_dim), seed=1)
    onnx = OnnxScorer(rec.manifest)
    np.testing.assert_allclose(onnx(frames, rec.classes), NumpyScorer()(frames, rec.classes), rtol=0, atol=1e-4)
    # a matrix of another shape (run-time labels: other K and P) goes through the same scorer.onnx
    other = type(rec.classes)(unit_rows((7, 9, rec.manifest.embed_dim), seed=2),
                              np.array([1, 9, 3, 2, 9, 5, 4], np.int32), [str(i) for i in range(7)], [])
    other.embeddings[np.arange(9)[None] >= other.counts[:, None]] = 0  # zero padding beyond each count
    np.testing.assert_allclose(onnx(frames, other), NumpyScorer()(frames, other), rtol=0, atol=1e-4)


def test_onnx_scorer_in_the_pipeline(tiny_bundle, rec, demo_assets):
    with_onnx = Recognizer.from_bundle(tiny_bundle, backend="ort", scorer="onnx")
    pred = with_onnx.predict(demo_assets["video"])
    assert pred.scorer == "onnx"
    np.testing.assert_allclose(pred.scores, rec.predict(demo_assets["video"]).scores, rtol=0, atol=1e-4)


TRITON_CHECK = """
import json, sys
import numpy as np
from apclip.bundle import read_manifest
from apclip.engine.scoring.scorers import NumpyScorer, make_scorer
from apclip.engine.scoring.vocabulary import bundle_class_matrix
manifest = read_manifest(sys.argv[1])
classes = bundle_class_matrix(manifest)
x = np.random.default_rng(3).standard_normal((2, 32, manifest.embed_dim)).astype(np.float32)
x /= np.linalg.norm(x, axis=-1, keepdims=True)
scorer = make_scorer("triton", manifest)
out, ref = scorer(x, classes), NumpyScorer()(x, classes)
print(json.dumps({"device": scorer.device, "max_diff": float(np.abs(out - ref).max()),
                  "finite": bool(np.isfinite(out).all()), "shape": list(out.shape)}))
"""


def test_triton_scorer_matches_numpy_under_the_interpreter(tiny_bundle):
    """fp16 kernel vs float reference (DESIGN.md fp16 tolerance); on CPU only via TRITON_INTERPRET=1,
    which must be set before triton is imported, hence a fresh interpreter."""
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", TRITON_CHECK, str(tiny_bundle)], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["finite"] and report["shape"] == [2, 5]
    assert report["max_diff"] <= 2e-3, report


def test_runtime_without_torch_auto_picks_ort_and_numpy(tiny_bundle, demo_assets):
    if os.path.exists("/dev/nvidiactl"):
        pytest.skip("a GPU machine: auto picks the Triton scorer there")
    code = f"""
import sys
class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, BlockTorch())
from apclip.engine import Recognizer
rec = Recognizer.from_bundle({str(tiny_bundle)!r})
pred = rec.predict({str(demo_assets["video"])!r})
print(pred.scorer, pred.backend, rec.text.loaded, "torch" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["numpy", "ort-cpu", "False", "False"]


# -- bundle and backend errors -----------------------------------------------------------------------------
def test_bundle_labels_do_not_load_the_text_encoder(rec):
    assert rec.class_stats == {"reused": 5, "encoded": 0, "cached": 0}
    assert rec.text.loaded is False


def test_auto_backend_says_which(tiny_bundle):
    messages: list[str] = []
    Recognizer.from_bundle(tiny_bundle, log=messages.append)
    assert "backend auto -> ort-cpu" in messages


def test_auto_backend_falls_back_when_tensorrt_engines_cannot_run(tiny_bundle, tmp_path, monkeypatch):
    """A bundle with engines on a machine with tensorrt still runs (ORT), and says why."""
    import apclip.engine.runners.probes as probes

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    from apclip.engine.runners.engine_cache import EngineKey, GpuIdentity, Profile

    key = EngineKey("vision", "0" * 64, "10.9.0", GpuIdentity("NVIDIA H200", (9, 0)), "fp16",
                    Profile("pixels", 1, 32, 64, (3, 32, 32)))
    manifest["engines"] = {key.file_name(): {"key": key.to_dict(), "sha256": "unchecked here"}}
    (bundle / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    importable = probes._importable
    monkeypatch.setattr(probes, "_importable", lambda module: module == "tensorrt" or importable(module))
    monkeypatch.setattr(probes, "nvidia_gpu_may_be_present", lambda root=None: True)
    messages: list[str] = []
    rec = Recognizer.from_bundle(bundle, log=messages.append)
    assert rec.backend == "ort-cpu"
    assert any("TensorRT" in m and "falling back" in m for m in messages)
    with pytest.raises(ApclipError, match="TensorRT"):
        Recognizer.from_bundle(bundle, backend="trt")


@pytest.mark.parametrize("labels, match", [([], "empty"), (["surfing water", "surfing water"], "more than once")])
def test_bad_label_lists(tiny_bundle, labels, match):
    with pytest.raises(ApclipError, match=match):
        Recognizer.from_bundle(tiny_bundle, labels=labels)


def test_unloadable_onnx_with_matching_hash_is_a_bundle_error(tiny_bundle, tmp_path):
    """A vision.onnx that matches its (re-written) hash but is not a model: one error naming the file."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / VISION_FILE).write_bytes(b"not an onnx model")
    manifest = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    manifest["files"][VISION_FILE]["sha256"] = sha256_file(bundle / VISION_FILE)
    (bundle / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(BundleError, match="vision.onnx") as info:
        Recognizer.from_bundle(bundle, backend="ort")
    assert "\n" not in str(info.value)


def test_bad_thread_count_from_the_environment(tiny_bundle, monkeypatch):
    monkeypatch.setenv("APCLIP_THREADS", "many")
    with pytest.raises(ApclipError, match="APCLIP_THREADS"):
        Recognizer.from_bundle(tiny_bundle, backend="ort")
