"""Clip-level vision graphs through the pipeline: an Open-VCLIP .pth (patched with its original CLIP)
exported, verified, run by every CPU runner, apclip-bench parity, int8, the Triton repository and the
TensorRT build path (against tests/fake_tensorrt.py); manifest fields; the ensemble scoring protocol."""
from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from apclip.bundle import MANIFEST, BundleError, VisionGraph, read_manifest  # noqa: E402

from test_openvclip import _clip_state, _write_pyslowfast  # noqa: E402

FRAMES = 4


@pytest.fixture(scope="module")
def clip_assets(demo_assets, tmp_path_factory):
    """An Open-VCLIP swa .pth (cfg: 4 frames x 2 views), its 'original CLIP' (fp16, as OpenAI ships it) and
    a verified bundle exported with --patch-ratio 0.5, MAKA over a prompt bank, scorer.onnx and int8."""
    from apclip.export.api import export_bundle

    folder = tmp_path_factory.mktemp("clip_level")
    cfg = f"DATA:\n  NUM_FRAMES: {FRAMES}\nTEST:\n  NUM_ENSEMBLE_VIEWS: 2\n  NUM_SPATIAL_CROPS: 1\n"
    ckpt = _write_pyslowfast(folder / "swa_2_22.pth", _clip_state(11), cfg=cfg)
    base = folder / "ViT-B-16.pt"
    torch.save({k: v.half() for k, v in _clip_state(12).items()}, base)
    out = folder / "bundle"
    log: list[str] = []
    export_bundle(ckpt, out=out, labels=demo_assets["labels"], prompts=demo_assets["bank"], base=base,
                  patch_ratio=0.5, scoring="maka", scorer=True, precisions=("fp32", "int8"), progress=False,
                  log=log.append)
    return {"checkpoint": ckpt, "base": base, "bundle": out, "log": "\n".join(log), "video": demo_assets["video"]}


def test_manifest_says_clip_level_and_patched(clip_assets):
    manifest = read_manifest(clip_assets["bundle"])
    assert manifest.vision_graph == VisionGraph("clip", "frames", FRAMES, "expand_temporal_view")
    vision = manifest.raw["io"]["vision"]
    assert vision["inputs"][0]["shape"] == ["B", FRAMES, 3, 32, 32]
    assert vision["outputs"][0]["shape"] == ["B", FRAMES, 64]
    patching = manifest.raw["patching"]
    assert patching["ratio"] == 0.5 and patching["base"] == "ViT-B-16.pt" and patching["kept_keys"] == 0
    assert manifest.raw["verification"]["ok"]
    # int8 ran on the clip-level graph and was verified on whole clips (random tiny weights may be refused)
    int8 = manifest.raw["precisions"]["int8"]
    assert int8["quantized_nodes"]["vision.int8.onnx"]
    checks = {c["name"] for c in int8["verification"]["vision.int8.onnx"]["checks"]}
    assert "int8 vision, video frames" in checks
    assert int8["files"].get("vision") == "vision.int8.onnx" or "vision.int8.onnx" in int8["refused"]
    from apclip.engine.cli.bundle import bundle_info, format_info

    assert f"clip-level [B, {FRAMES}, 3, R, R]" in format_info(bundle_info(str(clip_assets["bundle"])))
    log = clip_assets["log"]
    assert "patch_ratio  0.5" in log and "clip-level expand_temporal_view" in log
    assert "checkpoint cfg DATA.NUM_FRAMES=4" in log


def test_per_frame_bundles_say_per_frame(tiny_bundle):
    assert read_manifest(tiny_bundle).vision_graph == VisionGraph()


@pytest.mark.parametrize("bad, match", [
    ({"vision_graph": {"level": "clip", "output": "frames", "frames": None, "temporal_attention": None}}, "frames"),
    ({"vision_graph": {"level": "clip", "output": "frames", "frames": 3, "temporal_attention": None}}, "differs"),
    ({"vision_graph": {"level": "video"}}, "level"),
    ({"patching": {"ratio": "half"}}, "patching"),
])
def test_bad_manifest_fields_are_refused(clip_assets, tmp_path, bad, match):
    bundle = tmp_path / "b"
    shutil.copytree(clip_assets["bundle"], bundle)
    raw = json.loads((bundle / MANIFEST).read_text())
    raw.update(bad)
    (bundle / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=match):
        read_manifest(bundle, verify=False)


def test_ort_and_torch_runners_agree_on_a_video(clip_assets):
    from apclip.engine.recognizer import Recognizer

    bundle, video = clip_assets["bundle"], clip_assets["video"]
    ort = Recognizer.from_bundle(bundle, backend="ort", threads=1).predict(video)
    ref = Recognizer.from_bundle(bundle, backend="torch", ckpt=clip_assets["checkpoint"],
                                 base=clip_assets["base"]).predict(video)
    assert ort.frames == ref.frames == FRAMES * 2
    assert [t.label for t in ort.top] == [t.label for t in ref.top]
    assert np.abs(ort.scores - ref.scores).max() <= 1e-4
    if "vision" in read_manifest(bundle).raw["precisions"]["int8"]["files"]:
        int8 = Recognizer.from_bundle(bundle, backend="ort", precision="int8", threads=1).predict(video)
        assert int8.top[0].label == ref.top[0].label


def test_torch_reference_needs_the_patching_base(clip_assets):
    from apclip.engine.recognizer import Recognizer
    from apclip.errors import ApclipError

    with pytest.raises(ApclipError, match="patched with the original CLIP ViT-B-16.pt"):
        Recognizer.from_bundle(clip_assets["bundle"], backend="torch", ckpt=clip_assets["checkpoint"])


def test_bench_parity_passes_for_the_clip_level_bundle(clip_assets, tmp_path):
    from apclip.benchmarks.parity import run_parity
    from apclip.testing.videos import write_varied_videos

    videos = write_varied_videos(tmp_path, count=2, frames=24)
    report = run_parity(clip_assets["bundle"], clip_assets["checkpoint"], videos, base=clip_assets["base"],
                        backends="ort-cpu,numpy,onnx", threads=1)
    ran = {row.contender: row.status for row in report.rows if row.status not in ("unavailable", "reference")}
    assert set(ran.values()) == {"pass"}, report.rows
    assert {"ort:fp32", "numpy:fp32", "onnx:fp32"} <= set(ran), report.rows  # int8 too if the export kept it


def test_clip_runner_takes_whole_clips_only():
    from apclip.engine.runners.clip_level import ClipLevelRunner
    from apclip.errors import ApclipError

    class Inner:
        name, batch_size = "fake", 3
        seen: list = []

        def __call__(self, batch):  # [B, T, 3, R, R] -> [B, T, E]: frame t of clip b -> value 10*b + t
            self.seen.append(batch.shape)
            return batch[:, :, 0, 0, :2].copy()

    runner = ClipLevelRunner(Inner(), VisionGraph("clip", "frames", 2, "expand_temporal_view"))
    assert runner.batch_size == 6  # frames, whole clips only
    frames = np.arange(6, dtype=np.float32)[:, None, None, None] * np.ones((6, 3, 1, 2), np.float32)
    out = runner(frames)
    assert Inner.seen == [(3, 2, 3, 1, 2)] and np.array_equal(out[:, 0], np.arange(6))
    with pytest.raises(ApclipError, match="whole clips of 2"):
        runner(frames[:5])


def test_triton_repository_takes_clips(clip_assets, tmp_path):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    text_format = pytest.importorskip("google.protobuf.text_format")
    from apclip.scale.triton_repo import write_triton_repo

    repo = write_triton_repo(clip_assets["bundle"], tmp_path / "repo", max_batch=64)
    vision, maka, ensemble = (text_format.Parse((repo / n / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
                              for n in ("vision", "maka", "apclip"))
    assert list(vision.input[0].dims) == [FRAMES, 3, 32, 32] and list(vision.output[0].dims) == [FRAMES, 64]
    assert vision.max_batch_size == 64 // FRAMES
    assert list(maka.input[0].dims) == [-1, FRAMES, 64]
    assert list(ensemble.input[0].dims) == [-1, FRAMES, 3, 32, 32]


def test_maka_triton_model_flattens_clip_outputs(monkeypatch, tmp_path):
    """scale/triton_models/maka.py pools a clip-level [V, T, E] into one set, as the Recognizer does."""
    import types

    from apclip.scale.triton_repo import model_source
    from apclip.scoring import maka_score

    rng = np.random.default_rng(0)
    classes = rng.standard_normal((3, 2, 8)).astype(np.float32)
    classes /= np.linalg.norm(classes, axis=-1, keepdims=True)
    np.save(tmp_path / "class_embeddings.npy", classes)
    np.save(tmp_path / "class_counts.npy", np.array([2, 1, 2], np.int32))
    (tmp_path / "labels.json").write_text(json.dumps(["a", "b", "c"]))
    (tmp_path / "model.py").write_text(model_source("maka"))

    class Tensor:
        def __init__(self, name, value):
            self.name, self.value = name, value

        def as_numpy(self):
            return self.value

    stub = types.SimpleNamespace(
        Tensor=Tensor, TritonError=lambda message: message,
        InferenceResponse=lambda tensors=None, error=None: types.SimpleNamespace(tensors=tensors, error=error),
        get_input_tensor_by_name=lambda request, name: request[name])
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stub)
    spec = __import__("importlib.util").util.spec_from_file_location("maka_model", tmp_path / "model.py")
    module = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps({"parameters": {"topk": {"string_value": "3"}}})})
    frames = rng.standard_normal((2, 3, 8)).astype(np.float32)  # [V, T, E]
    frames /= np.linalg.norm(frames, axis=-1, keepdims=True)
    (response,) = model.execute([{"embeddings": Tensor("embeddings", frames)}])
    assert response.error is None
    all_scores = {t.name: t.value for t in response.tensors}["all_scores"]
    want = maka_score(frames.reshape(1, 6, 8).astype(np.float64), classes.astype(np.float64), np.array([2, 1, 2]))[0]
    np.testing.assert_allclose(all_scores, want, atol=1e-5)


def test_tensorrt_build_path_takes_clips(clip_assets, tmp_path, monkeypatch):
    import fake_tensorrt

    import apclip.engine.runners.tensorrt as trt_runner
    import apclip.export.tensorrt.build as trt_build
    from apclip.engine.runners.clip_level import ClipLevelRunner
    from apclip.engine.runners.engine_cache import GpuIdentity, profile_from_manifest
    from apclip.export.tensorrt.build import BuildRequest, EngineBuildError, build_engine, calibration_pixels, maka_profile

    bundle = tmp_path / "bundle"
    shutil.copytree(clip_assets["bundle"], bundle)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt.module("10.9.0.34"))
    monkeypatch.setattr(trt_runner, "current_gpu", lambda: GpuIdentity("NVIDIA H200", (9, 0)))
    monkeypatch.setattr(trt_build, "_modelopt_available", lambda: False)
    fake_tensorrt.Builder.builds.clear()
    manifest = read_manifest(bundle)
    profile = profile_from_manifest(manifest, "vision")
    assert profile.tail == (FRAMES, 3, 32, 32) and profile.opt_batch == 2  # one video: 2 views of a clip each
    build_engine(BuildRequest(bundle, workspace_gb=1), log=lambda m: None)
    (build,) = fake_tensorrt.Builder.builds
    assert build["profiles"] == [{"pixels": [list(s) for s in profile.shapes()]}]
    with pytest.raises(EngineBuildError, match="clip-level"):
        maka_profile(manifest)
    assert calibration_pixels(manifest, []).shape[1:] == (FRAMES, 3, 32, 32)
    # The runner over a clip engine (fake: one embedding per clip, [B, E] out) behind the frame interface.
    engine = fake_tensorrt.FakeEngine(tail=(FRAMES, 3, 4, 4), profile=(1, 2, 4))
    memory = fake_tensorrt.FakeMemory()
    make_context = engine.create_execution_context

    def context():
        ctx = make_context()
        ctx.memory = memory
        return ctx

    engine.create_execution_context = context
    runner = ClipLevelRunner(trt_runner.TrtRunner(engine, memory, batch_size=4),
                             VisionGraph("clip", "video", FRAMES, None))
    frames = np.random.default_rng(1).standard_normal((3 * FRAMES, 3, 4, 4)).astype(np.float32)
    out = runner(frames)
    assert out.shape == (3, 5)
    assert np.array_equal(out, frames.reshape(3, -1)[:, :5])


def test_ensemble_protocol_scores_and_onnx_graph(tmp_path):
    from apclip.class_matrix import ClassMatrix
    from apclip.engine.scoring.scorers import EnsembleScorer
    from apclip.export.onnx_export import EnsembleScorer as EnsembleGraph, export_scorer
    from apclip.export.verify import ort_session
    from apclip.scoring import maka_score

    rng = np.random.default_rng(3)
    emb = rng.standard_normal((3, 4, 16))
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    emb[1, 3] = 0.0  # class 1 has 3 prompts (zero padding)
    counts = np.array([4, 3, 4], np.int32)
    frames = rng.standard_normal((2, 6, 16)).astype(np.float32)
    frames /= np.linalg.norm(frames, axis=-1, keepdims=True)
    # By hand: mean prompt per class, normalised; mean frame, normalised; cosine.
    cls = np.stack([emb[k, :counts[k]].mean(0) for k in range(3)])
    cls /= np.linalg.norm(cls, axis=-1, keepdims=True)
    video = frames.mean(1) / np.linalg.norm(frames.mean(1), axis=-1, keepdims=True)
    want = video @ cls.T
    matrix = ClassMatrix(emb.astype(np.float32), counts, ["a", "b", "c"], [])
    np.testing.assert_allclose(EnsembleScorer()(frames, matrix), want, atol=1e-6)
    export_scorer(tmp_path / "scorer.onnx", 16, 17, EnsembleGraph())
    got = ort_session(tmp_path / "scorer.onnx").run(None, {"frames": frames, "classes": emb.astype(np.float32),
                                                           "counts": counts.astype(np.int64)})[0]
    np.testing.assert_allclose(got, want, atol=1e-5)
    # A set of one video embedding is a valid MAKA input: 1/2 (best prompt's cosine + mean prompt cosine).
    one = video[:1, None].astype(np.float64)  # [1, 1, E]
    sims = [emb[k, :counts[k]] @ one[0, 0] for k in range(3)]
    np.testing.assert_allclose(maka_score(one, emb, counts)[0], [(s.max() + s.mean()) / 2 for s in sims], atol=1e-9)


def test_export_refuses_a_patch_ratio_without_its_base(clip_assets, tmp_path, capsys):
    from apclip.export.cli import main

    code = main(["--ckpt", str(clip_assets["checkpoint"]), "--out", str(tmp_path / "b"), "--patch-ratio", "0.5"])
    assert code != 0 and "--base" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
