"""TensorRT engines without TensorRT: cache keys and rebuild decisions, profiles from the manifest,
manifest entries, the build plan per TensorRT version, the builder's calls (against a recording fake
of the documented API) and the runner's batching. Real TensorRT calls skip: TensorRT is not installed."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import sys

import numpy as np
import pytest

from apclip.bundle import MANIFEST, read_manifest
from apclip.errors import MissingExtraError
from apclip.engine.runners.encoders import BackendUnavailable
from apclip.engine.runners.engine_cache import (ENGINES_DIR, EngineCacheError, EngineKey, GpuIdentity, engine_entry, engine_key,
                                     find_engine, machine_engines, profile_from_manifest, record_engine)

import fake_tensorrt  # noqa: E402

H200 = GpuIdentity("NVIDIA H200", (9, 0))
ORIN = GpuIdentity("Orin (nvgpu)", (8, 7))
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture()
def bundle(tiny_bundle, tmp_path):
    """A writable copy of the session's tiny bundle (engines are written into it)."""
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)
    return out


def key_for(manifest, version="10.9.0.34", gpu=H200, precision="fp16", graph="vision", **profile):
    return engine_key(manifest, graph, precision, version, gpu, profile_from_manifest(manifest, graph, **profile))


def fake_engine_file(manifest, key, payload=b"serialized engine"):
    path = manifest.path / ENGINES_DIR / key.file_name()
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(payload)
    record_engine(manifest, path.name, engine_entry(key, path, None, "2026-12-02T07:00:00+00:00", 1.0))
    return path


# -- profiles and keys ---------------------------------------------------------------------------
def test_profiles_come_from_the_manifest(tiny_bundle):
    manifest = read_manifest(tiny_bundle)
    pre, io = manifest.preprocessing, manifest.raw["io"]
    vision = profile_from_manifest(manifest, "vision")
    assert (vision.min_batch, vision.opt_batch, vision.max_batch) == (1, pre.frames * pre.views,
                                                                      io["vision"]["batch_max"])
    assert vision.input_name == "pixels" and vision.tail == (3, pre.resolution, pre.resolution)
    assert vision.shapes()[1] == (pre.frames * pre.views, 3, pre.resolution, pre.resolution)
    text = profile_from_manifest(manifest, "text")
    assert (text.input_name, text.tail, text.opt_batch) == ("tokens", (77,), 256)
    assert text.max_batch == min(io["text"]["batch_max"], 4096)
    assert profile_from_manifest(manifest, "vision", opt_batch=10**6).opt_batch == vision.max_batch  # capped
    with pytest.raises(EngineCacheError, match="outside the range"):
        profile_from_manifest(manifest, "vision", max_batch=vision.max_batch + 1)
    with pytest.raises(EngineCacheError, match="unknown graph"):
        profile_from_manifest(manifest, "audio")


def test_key_round_trips_and_every_field_changes_the_file_name(tiny_bundle):
    manifest = read_manifest(tiny_bundle)
    key = key_for(manifest)
    assert EngineKey.from_dict(json.loads(json.dumps(key.to_dict()))) == key
    assert key.file_name().startswith("vision-fp16-sm90-") and key.file_name().endswith(".engine")
    variants = [dataclasses.replace(key, tensorrt="10.3.0"), dataclasses.replace(key, gpu=ORIN),
                dataclasses.replace(key, gpu=GpuIdentity("NVIDIA H100 80GB HBM3", (9, 0))),
                dataclasses.replace(key, precision="int8"), dataclasses.replace(key, onnx_sha256="0" * 64),
                dataclasses.replace(key, profile=dataclasses.replace(key.profile, max_batch=64))]
    names = {v.file_name() for v in variants} | {key.file_name()}
    assert len(names) == len(variants) + 1
    assert key.onnx_sha256 == manifest.files["vision.onnx"]["sha256"]


def test_maka_engine_key_covers_the_class_matrix(tiny_bundle):
    manifest = read_manifest(tiny_bundle)
    profile = profile_from_manifest(manifest, "vision")
    plain = engine_key(manifest, "vision", "fp16", "10.9.0", H200, profile)
    with_maka = engine_key(manifest, "vision+maka", "fp16", "10.9.0", H200, profile)
    assert with_maka.onnx_sha256 != plain.onnx_sha256
    manifest.files["classes.safetensors"] = {"sha256": "f" * 64}
    assert engine_key(manifest, "vision+maka", "fp16", "10.9.0", H200, profile).onnx_sha256 != with_maka.onnx_sha256
    with pytest.raises(EngineCacheError, match="precision"):
        engine_key(manifest, "vision", "fp8", "10.9.0", H200, profile)


# -- rebuild decisions ---------------------------------------------------------------------------
def test_cache_decisions_use_only_an_exact_intact_engine(bundle):
    manifest = read_manifest(bundle)
    key = key_for(manifest)
    first = find_engine(manifest, key)
    assert not first.use and "no vision fp16 engine for NVIDIA H200 (sm90)" in first.reason
    path = fake_engine_file(manifest, key)
    manifest = read_manifest(bundle)  # still a valid bundle after the manifest rewrite
    assert find_engine(manifest, key).use
    # another TensorRT version or GPU: rebuilt, and the message says what differs
    newer = find_engine(manifest, key_for(manifest, version="10.13.0.35"))
    assert not newer.use and "TensorRT 10.9.0.34 != 10.13.0.35" in newer.reason
    other_gpu = find_engine(manifest, key_for(manifest, gpu=ORIN))
    assert not other_gpu.use and "sm90 != Orin (nvgpu) sm87" in other_gpu.reason
    # a modified, a missing and a mislisted engine are never used
    path.write_bytes(b"serialized engine, truncated")
    assert "sha256" in find_engine(manifest, key).reason and not find_engine(manifest, key).use
    path.unlink()
    assert "missing" in find_engine(manifest, key).reason
    raw = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    raw["engines"][key.file_name()]["key"]["precision"] = "int8"
    (bundle / MANIFEST).write_text(json.dumps(raw), encoding="utf-8")
    edited = find_engine(read_manifest(bundle), key)
    assert not edited.use and "another key" in edited.reason and "precision int8 != fp16" in edited.reason


def test_record_engine_replaces_the_same_graph_and_keeps_the_rest(bundle):
    manifest = read_manifest(bundle)
    before = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    old = fake_engine_file(manifest, key_for(manifest, version="10.3.0"))
    text = fake_engine_file(manifest, key_for(manifest, graph="text"))
    new = fake_engine_file(manifest, key_for(manifest, version="10.9.0"))
    after = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    assert set(after["engines"]) == {new.name, text.name}  # the 10.3 vision engine is no longer listed
    assert old.is_file()  # but its file is not deleted
    assert {k: v for k, v in after.items() if k != "engines"} == {k: v for k, v in before.items() if k != "engines"}
    entry = after["engines"][new.name]
    assert entry["file"] == f"engines/{new.name}" and entry["bytes"] == len(b"serialized engine")


def test_machine_engines_say_why_each_listed_engine_does_not_fit(bundle):
    manifest = read_manifest(bundle)
    fake_engine_file(manifest, key_for(manifest, gpu=ORIN))
    usable, refused = machine_engines(read_manifest(bundle), "vision", "10.9.0.34", H200, "fp16")
    assert usable == [] and len(refused) == 1 and "sm87" in refused[0]
    fake_engine_file(manifest, key_for(manifest, gpu=H200, precision="int8"))
    usable, _ = machine_engines(read_manifest(bundle), "vision", "10.9.0.34", H200, "int8")
    assert [d.path.name for d in usable] == [key_for(manifest, precision="int8").file_name()]
    assert machine_engines(read_manifest(bundle), "vision", "10.9.0.34", H200, "fp16")[0] == []  # never another precision


# -- build plan and the builder's TensorRT calls ----------------------------------------------------
def test_build_plan_per_tensorrt_version():
    from apclip.export.tensorrt.build import build_plan

    strong = build_plan("fp16", "10.13.0", modelopt=True)
    assert strong.strongly_typed and strong.onnx_step == "autocast-fp16" and not strong.builder_flags
    weak = build_plan("fp16", "10.8.0", modelopt=False)
    assert not weak.strongly_typed and weak.builder_flags == ("FP16", "OBEY_PRECISION_CONSTRAINTS")
    assert "NORMALIZATION" in weak.fp32_layers and "deprecated" in weak.note
    with pytest.raises(MissingExtraError, match="strongly typed.*nvidia-modelopt"):
        build_plan("fp16", "11.4.0", modelopt=False)
    with pytest.raises(MissingExtraError, match="implicit calibrator is deprecated"):
        build_plan("int8", "10.9.0", modelopt=False)
    int8 = build_plan("int8", "11.4.0", modelopt=True)
    assert int8.strongly_typed and int8.onnx_step == "qdq-int8" and not int8.builder_flags
    for version, modelopt in (("10.9.0", False), ("11.4.0", True)):  # the export's gated QDQ comes first
        own = build_plan("int8", version, modelopt=modelopt, bundle_qdq=True)
        assert own.strongly_typed and own.onnx_step == "bundle-qdq-int8" and not own.builder_flags


def test_int8_build_parses_the_bundles_gated_qdq_graph(bundle, fake_trt):
    """A bundle with the export's static QDQ vision.int8.onnx: TensorRT parses that file, strongly typed,
    without ModelOpt (fake_trt has none); a dynamic-int8 bundle still needs ModelOpt."""
    from apclip.bundle import sha256_file
    from apclip.export.tensorrt.build import BuildRequest, build_engine
    from apclip.errors import MissingExtraError

    raw = json.loads((bundle / "manifest.json").read_text())
    shutil.copy(bundle / "vision.onnx", bundle / "vision.int8.onnx")  # stands in for the QDQ file
    raw["files"]["vision.int8.onnx"] = {"sha256": sha256_file(bundle / "vision.int8.onnx"),
                                        "bytes": (bundle / "vision.int8.onnx").stat().st_size}
    raw["precisions"]["int8"] = {"files": {"vision": "vision.int8.onnx"}, "methods": {"vision.int8.onnx": "dynamic"}}
    (bundle / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(MissingExtraError, match="nvidia-modelopt"):
        build_engine(BuildRequest(bundle, precision="int8"), log=lambda m: None)
    raw["precisions"]["int8"]["methods"]["vision.int8.onnx"] = "static"
    (bundle / "manifest.json").write_text(json.dumps(raw))
    messages: list[str] = []
    build_engine(BuildRequest(bundle, precision="int8", calibration=("clip.mp4",)), log=messages.append)
    (build,) = fake_tensorrt.Builder.builds
    assert build["onnx"] == str(bundle / "vision.int8.onnx") and build["strongly_typed"] and not build["flags"]
    assert any("bundle's gated QDQ" in m for m in messages) and any("--calibration ignored" in m for m in messages)


@pytest.fixture()
def fake_trt(monkeypatch):
    import apclip.engine.runners.tensorrt as trt_runner
    import apclip.export.tensorrt.build as trt_build

    module = fake_tensorrt.module("10.9.0.34")
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    monkeypatch.setattr(trt_runner, "current_gpu", lambda: H200)
    from apclip.engine.runners import probes

    monkeypatch.setattr(probes, "nvidia_gpu_may_be_present", lambda root=None: True)  # the fake GPU has a driver too
    monkeypatch.setattr(trt_build, "_modelopt_available", lambda: False)
    fake_tensorrt.Builder.builds.clear()
    return module


def test_builder_makes_the_documented_calls_then_reuses_the_cache(bundle, fake_trt, monkeypatch):
    from apclip.export.tensorrt.build import BuildRequest, build_engine

    messages: list[str] = []
    path = build_engine(BuildRequest(bundle, workspace_gb=2), log=messages.append)
    manifest = read_manifest(bundle)
    (build,) = fake_tensorrt.Builder.builds
    profile = profile_from_manifest(manifest, "vision")
    assert build["onnx"] == str(bundle / "vision.onnx")
    assert build["profiles"] == [{"pixels": [list(s) for s in profile.shapes()]}]
    assert build["workspace"] == 2 << 30
    assert build["flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"] and not build["strongly_typed"]
    assert set(build["fp32_layers"]) == {"NORMALIZATION", "REDUCE", "UNARY"}
    assert json.loads(path.read_bytes()) == build
    cache = path.with_name("sm90-trt10.9.0.34.timing.cache")
    assert cache.read_bytes() == b"+tuned"
    entry = manifest.raw["engines"][path.name]
    assert entry["timing_cache"] == f"engines/{cache.name}" and EngineKey.from_dict(entry["key"]).gpu == H200
    assert any("no vision fp16 engine" in m for m in messages)
    # second run: kept, nothing built
    messages.clear()
    assert build_engine(BuildRequest(bundle), log=messages.append) == path
    assert len(fake_tensorrt.Builder.builds) == 1 and any("kept" in m for m in messages)
    # a corrupted engine is rebuilt with a message, and the timing cache is read back in
    path.write_bytes(b"garbage")
    messages.clear()
    build_engine(BuildRequest(bundle), log=messages.append)
    assert any("sha256" in m for m in messages) and fake_tensorrt.Builder.builds[-1]["timing_cache_in"] == "+tuned"
    # a newer TensorRT on the same GPU: rebuilt, saying why
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt.module("10.13.0.35"))
    messages.clear()
    newer = build_engine(BuildRequest(bundle), log=messages.append)
    assert newer != path and any("10.9.0.34 != 10.13.0.35" in m for m in messages)
    assert list(read_manifest(bundle).raw["engines"]) == [newer.name]


def test_builder_cli_exit_codes(bundle, fake_trt, capsys):
    from apclip.export.tensorrt.build import main

    assert main([str(bundle), "--precision", "int8"]) == 2  # needs ModelOpt: a missing optional package
    assert "nvidia-modelopt" in capsys.readouterr().err
    assert main([str(bundle / "absent")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main([str(bundle), "--max-batch", "100000"]) == 1
    assert main([str(bundle), "--graph", "text", "--precision", "int8"]) == 1
    assert "vision encoder" in capsys.readouterr().err
    assert main([str(bundle), "--graph", "text"]) == 0


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed: the missing-package message cannot be checked")
def test_builder_without_tensorrt_says_how_to_install(bundle, capsys):
    from apclip.export.tensorrt.build import main

    assert main([str(bundle)]) == 2
    assert '-e ".[trt]"' in capsys.readouterr().err


def test_calibration_frames(tiny_bundle, tmp_path):
    from apclip.export.tensorrt.build import EngineBuildError, calibration_pixels

    manifest = read_manifest(tiny_bundle)
    r = manifest.preprocessing.resolution
    default = calibration_pixels(manifest, ())
    assert default.shape[1:] == (3, r, r) and np.isfinite(default).all() and default.std() > 0.1
    good = tmp_path / "calib.npy"
    np.save(good, np.ones((4, 3, r, r), np.float32))
    assert calibration_pixels(manifest, [str(good)]).shape == (4, 3, r, r)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.ones((4, r, r), np.float32))
    with pytest.raises(EngineBuildError, match="expected"):
        calibration_pixels(manifest, [str(bad)])


def test_maka_profile_takes_whole_videos(tiny_bundle):
    from apclip.export.tensorrt.build import maka_profile

    manifest = read_manifest(tiny_bundle)
    frames = manifest.preprocessing.frames * manifest.preprocessing.views
    profile = maka_profile(manifest)
    assert profile.min_batch == profile.opt_batch == frames and profile.max_batch % frames == 0
    assert profile.max_batch <= manifest.raw["io"]["vision"]["batch_max"] < profile.max_batch + frames


# -- runner ------------------------------------------------------------------------------------------
def make_runner(batch_size=32, profile=(1, 8, 16)):
    from apclip.engine.runners.tensorrt import TrtRunner

    engine = fake_tensorrt.FakeEngine(profile=profile)
    memory = fake_tensorrt.FakeMemory()
    engine_context = engine.create_execution_context
    engine.create_execution_context = lambda: _with_memory(engine_context(), memory)
    return TrtRunner(engine, memory, batch_size=batch_size), engine


def _with_memory(context, memory):
    context.memory = memory
    return context


def test_runner_splits_to_the_profile_and_returns_every_row():
    runner, engine = make_runner(batch_size=32, profile=(1, 8, 16))
    assert runner.batch_size == 16  # never above the profile's max
    batch = np.random.default_rng(0).standard_normal((37, 3, 4, 4)).astype(np.float32)
    out = runner(batch)
    assert out.shape == (37, 5) and out.dtype == np.float32
    assert np.array_equal(out, batch.reshape(37, -1)[:, :5])
    assert engine.contexts[0].shapes == [(16, 3, 4, 4), (16, 3, 4, 4), (5, 3, 4, 4)]
    with pytest.raises(ValueError, match="takes"):
        runner(batch[:, :2])


def test_runner_pads_below_the_profile_minimum():
    runner, engine = make_runner(profile=(4, 8, 8))
    batch = np.arange(2 * 48, dtype=np.float32).reshape(2, 3, 4, 4)
    out = runner(batch)
    assert out.shape == (2, 5) and engine.contexts[0].shapes == [(4, 3, 4, 4)]
    assert np.array_equal(out, batch.reshape(2, -1)[:, :5])


def test_trt_runners_refuse_what_they_cannot_use(bundle, fake_trt):
    from apclip.engine.runners.tensorrt import trt_runners

    with pytest.raises(BackendUnavailable, match="no usable TensorRT fp16 vision engine.*apclip-build-engine"):
        trt_runners(read_manifest(bundle))
    manifest = read_manifest(bundle)
    fake_engine_file(manifest, key_for(manifest, version="10.9.0.34"))
    fake_trt.Runtime = lambda logger: type("R", (), {"deserialize_cuda_engine": lambda self, data: None})()
    with pytest.raises(BackendUnavailable, match="cannot deserialise"):
        trt_runners(read_manifest(bundle))


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed")
def test_trt_backend_without_tensorrt_names_the_fix(tiny_bundle, monkeypatch):
    from apclip.engine.runners import probes
    from apclip.engine.runners.tensorrt import trt_runners

    monkeypatch.setattr(probes, "nvidia_gpu_may_be_present", lambda root=None: True)  # a GPU machine without TensorRT

    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        trt_runners(read_manifest(tiny_bundle))


@pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT is not installed")
def test_real_tensorrt_builds_and_runs_the_tiny_bundle(bundle):  # pragma: no cover - needs TensorRT and a GPU
    from apclip.engine.runners.encoders import ort_runners
    from apclip.engine.runners.tensorrt import trt_runners
    from apclip.export.tensorrt.build import BuildRequest, build_engine
    from apclip.export.verify import generated_video_pixels

    build_engine(BuildRequest(bundle), log=lambda m: None)
    manifest = read_manifest(bundle)
    vision, _ = trt_runners(manifest)
    pixels = generated_video_pixels(manifest.preprocessing)
    ref = ort_runners(manifest, cuda=False, threads=1, batch_size=32)[0](pixels)
    got = vision(pixels)
    assert ((got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)).min() >= 0.999


class _TaggedRuntime:
    """A TensorRT Runtime whose engines remember the bytes they were read from."""

    def __init__(self, logger):
        pass

    def deserialize_cuda_engine(self, data):
        engine = fake_tensorrt.FakeEngine(tail=(3, 32, 32))
        engine.payload = bytes(data)
        return engine


def test_each_trt_precision_runs_its_own_engine(bundle, fake_trt, monkeypatch):
    """trt:fp16 and trt:int8 used to run the same (newest) engine: the precision was dropped on the way."""
    import apclip.engine.runners.tensorrt as trt_runner

    manifest = read_manifest(bundle)
    for precision, built in (("int8", "2026-12-01T07:00:00+00:00"), ("fp16", "2026-12-02T07:00:00+00:00")):
        key = key_for(manifest, precision=precision)
        path = manifest.path / ENGINES_DIR / key.file_name()
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(f"{precision} engine".encode())
        record_engine(manifest, path.name, engine_entry(key, path, None, built, 1.0))
    fake_trt.Runtime = _TaggedRuntime
    monkeypatch.setattr(trt_runner, "device_memory", fake_tensorrt.FakeMemory)
    for precision in ("int8", "fp16"):
        vision, _ = trt_runner.trt_runners(read_manifest(bundle), precision=precision)
        assert vision.engine.payload == f"{precision} engine".encode(), precision
        assert vision.name == f"trt-{precision}"
    only_fp16 = read_manifest(bundle)
    only_fp16.raw["engines"] = {k: v for k, v in only_fp16.raw["engines"].items() if "int8" not in k}
    with pytest.raises(BackendUnavailable, match="no usable TensorRT int8 vision engine"):
        trt_runner.trt_runners(only_fp16, precision="int8")
