"""apclip-triton-repo: repositories for NVIDIA's Triton containers.

Every config.pbtxt parses as Triton's ModelConfig (tritonclient's protos, text format) with the
settings asked for. The pytriton-shipped tritonserver has no onnxruntime backend, so the variant
whose vision model runs ONNX Runtime inside the Python backend is loaded into the real server and
its ensemble (vision -> maka) must rank like the Recognizer.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from apclip.errors import ApclipError
from apclip.scale.triton_repo import main as repo_main, write_triton_repo

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")
ROOT = Path(__file__).resolve().parents[1]


def parse(path: Path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def kind_name(config) -> str:
    return model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind)


def test_onnx_repository_configs_parse_with_the_settings_asked_for(tiny_bundle, tmp_path):
    out = tmp_path / "repo"
    assert repo_main([str(tiny_bundle), "--out", str(out), "--max-batch", "48", "--instances", "2",
                      "--max-queue-delay-us", "1500", "--topk", "3"]) == 0
    vision, maka, ensemble = (parse(out / name / "config.pbtxt") for name in ("vision", "maka", "apclip"))
    assert vision.platform == "onnxruntime_onnx" and vision.max_batch_size == 48
    assert vision.dynamic_batching.max_queue_delay_microseconds == 1500
    assert kind_name(vision) == "KIND_GPU"
    assert vision.instance_group[0].count == 2
    assert [i.name for i in vision.input] == ["pixels"] and list(vision.input[0].dims) == [3, 32, 32]
    assert list(vision.output[0].dims) == [64]
    assert (out / "vision" / "1" / "model.onnx").read_bytes() == (tiny_bundle / "vision.onnx").read_bytes()
    assert maka.backend == "python" and maka.parameters["topk"].string_value == "3"
    assert [list(o.dims) for o in maka.output] == [[3], [3], [5]]
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 0
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["vision", "maka"]
    assert steps[0].output_map["embeddings"] == steps[1].input_map["embeddings"]
    labels = json.loads((out / "maka" / "1" / "labels.json").read_text())
    embeddings = np.load(out / "maka" / "1" / "class_embeddings.npy")
    assert len(labels) == embeddings.shape[0] == 5 and embeddings.shape[2] == 64


def _add_engine(bundle: Path, gpu: str, max_batch: int) -> str:
    """List a (fake) vision engine in the manifest the way apclip-build-engine does."""
    from apclip.engine.runners.engine_cache import ENGINES_DIR, EngineKey, GpuIdentity, Profile

    key = EngineKey("vision", "0" * 64, "10.9.0", GpuIdentity(gpu, (9, 0)), "fp16",
                    Profile("pixels", 1, 32, max_batch, (3, 32, 32)))
    (bundle / ENGINES_DIR).mkdir(exist_ok=True)
    (bundle / ENGINES_DIR / key.file_name()).write_bytes(f"serialized engine for {gpu}".encode())
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.setdefault("engines", {})[key.file_name()] = {"key": key.to_dict(), "sha256": "unchecked here"}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return key.file_name()


def test_tensorrt_engine_gives_a_plan_model_and_cpu_kind(tiny_bundle, tmp_path):
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    name = _add_engine(bundle, "NVIDIA H200", max_batch=40)
    out = write_triton_repo(bundle, tmp_path / "repo", gpu=True)  # auto: the engine
    vision = parse(out / "vision" / "config.pbtxt")
    assert vision.platform == "tensorrt_plan" and kind_name(vision) == "KIND_GPU"
    assert vision.max_batch_size == 40  # capped by the engine's profile, not the default 64
    assert (out / "vision" / "1" / "model.plan").read_bytes() == b"serialized engine for NVIDIA H200"
    cpu = write_triton_repo(bundle, tmp_path / "cpu", vision="onnx", gpu=False)
    assert kind_name(parse(cpu / "vision" / "config.pbtxt")) == "KIND_CPU"
    other = _add_engine(bundle, "NVIDIA L4", max_batch=64)
    with pytest.raises(ApclipError, match="--engine"):
        write_triton_repo(bundle, tmp_path / "two")
    chosen = write_triton_repo(bundle, tmp_path / "two", engine=other)
    assert (chosen / "vision" / "1" / "model.plan").read_bytes() == b"serialized engine for NVIDIA L4"
    assert name != other


def test_refusals_leave_nothing_behind(tiny_bundle, tmp_path):
    with pytest.raises(ApclipError, match="no TensorRT engine"):
        write_triton_repo(tiny_bundle, tmp_path / "a", vision="tensorrt")
    with pytest.raises(ApclipError, match="one clip of this bundle is 32 frames"):
        write_triton_repo(tiny_bundle, tmp_path / "b", max_batch=16)
    (tmp_path / "c").mkdir()
    with pytest.raises(ApclipError, match="exists"):
        write_triton_repo(tiny_bundle, tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    assert repo_main([str(tiny_bundle), "--out", str(tmp_path / "c")]) == 1


def test_python_vision_variant_serves_the_ensemble_in_the_real_server(tiny_bundle, tmp_path, videos_for_repo):
    httpclient = pytest.importorskip("tritonclient.http")
    from apclip.scale.triton_server import Ports, ServerUnavailable, TritonServer, find_server

    from apclip.engine.video.clips import load_clip
    from apclip.engine.video.preprocess import flatten_views
    from apclip.engine.recognizer import Recognizer

    try:
        install = find_server(os.environ.get("APCLIP_TRITON_ENV") or str(ROOT / ".venv-serve"))
    except ServerUnavailable as exc:
        pytest.skip(f"no Triton server environment: {exc}")
    repo = write_triton_repo(tiny_bundle, tmp_path / "repo", vision="python", gpu=False, threads=1)
    for name in ("vision", "maka", "apclip"):
        parse(repo / name / "config.pbtxt")
    server = TritonServer(install, repo, tmp_path, Ports.pick(0, 0, 0), log_file=tmp_path / "server.log")
    rec = Recognizer.from_bundle(tiny_bundle, threads=1)
    try:
        server.start()
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            assert all(client.is_model_ready(name) for name in ("vision", "maka", "apclip"))
            for video in videos_for_repo:
                views = flatten_views(load_clip(video, rec.spec).views)  # [V*T, 3, R, R]
                request = httpclient.InferInput("views", list(views.shape), "FP32")
                request.set_data_from_numpy(views)
                result = client.infer("apclip", [request])
                want = rec.predict(video)
                assert [label.decode() for label in result.as_numpy("labels")] == [t.label for t in want.top]
                np.testing.assert_allclose(result.as_numpy("all_scores"), want.scores, atol=1e-5)
        finally:
            client.close()
    finally:
        code = server.stop()
    assert code == 0, (tmp_path / "server.log").read_text()[-3000:]


@pytest.fixture
def videos_for_repo(tmp_path):
    from apclip.testing.videos import write_test_video

    return [write_test_video(tmp_path / f"r{i}.avi", frames=18 + 9 * i, size=(64, 48), fps=25.0) for i in range(2)]


def test_apclip_bundle_triton_repo_subcommand(tiny_bundle, tmp_path, capsys):
    """The writer joins apclip-bundle through the apclip.bundle_commands entry point."""
    from apclip.engine.cli.bundle import main as bundle_main

    assert bundle_main(["triton-repo", str(tiny_bundle), "--out", str(tmp_path / "repo"), "--no-gpu"]) == 0
    assert kind_name(parse(tmp_path / "repo" / "vision" / "config.pbtxt")) == "KIND_CPU"
    assert "wrote the Triton model repository" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["clip", "labels", "maka", "vision_ort"])
def test_every_model_file_gets_the_one_site_dirs_preamble_before_its_imports(name, tmp_path, monkeypatch):
    import ast
    import sys

    from apclip.scale.triton_repo import model_source

    source = model_source(name)
    tree = ast.parse(source)
    assert ast.get_docstring(tree)  # still the module docstring
    assert source.count("APCLIP_SITE_DIRS") == 1 and source.index("APCLIP_SITE_DIRS") < source.index("import numpy")
    # the preamble alone puts the listed folders first on sys.path
    preamble = source[:source.index("import numpy")]
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("APCLIP_SITE_DIRS", str(tmp_path))
    exec(compile(preamble, name, "exec"), {})
    assert sys.path[0] == str(tmp_path)
