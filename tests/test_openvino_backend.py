"""The OpenVINO backend (engine/runners/openvino.py): the same embeddings as ONNX Runtime (cosine >= 0.99999
for fp32, DESIGN.md's threshold), the bundle's quantized graph for int8, and a reason where it cannot run."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino", reason="the openvino wheel is not installed (the openvino extra)")


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def video_views(tiny_bundle, tmp_path_factory) -> np.ndarray:
    """[V*T, 3, R, R] encoder input of a generated video, as the engine prepares it."""
    from apclip.bundle import read_manifest
    from apclip.engine.video.clips import load_clip
    from apclip.engine.video.preprocess import flatten_views
    from apclip.testing.videos import write_test_video

    video = write_test_video(tmp_path_factory.mktemp("ov") / "v.avi", frames=30, size=(96, 64))
    return flatten_views(load_clip(video, read_manifest(tiny_bundle).preprocessing).views)


def test_openvino_embeddings_match_onnx_runtime(tiny_bundle, video_views):
    from apclip.bundle import read_manifest
    from apclip.engine.runners.encoders import encode_in_batches, ort_runners
    from apclip.engine.runners.openvino import openvino_runners

    manifest = read_manifest(tiny_bundle)
    vision, text = openvino_runners(manifest, threads=1, batch_size=7)  # batches that do not divide V*T
    reference, reference_text = ort_runners(manifest, cuda=False, threads=1, batch_size=32)
    assert vision.name == "openvino-cpu" and not text.loaded
    got = np.full((len(video_views), manifest.embed_dim), np.nan, np.float32)  # poisoned: every row must be written
    got[:] = encode_in_batches(vision, video_views)
    want = encode_in_batches(reference, video_views)
    assert np.isfinite(got).all() and _cosine(got, want).min() >= 0.99999
    assert np.abs(got - want).max() < 1e-4
    tokens = np.zeros((3, 77), np.int64)
    tokens[:, 0], tokens[:, 1], tokens[:, 2] = 49406, [320, 1125, 3305], 49407  # SOT, a word, EOT
    assert _cosine(text(tokens), reference_text(tokens)).min() >= 0.99999
    assert text.loaded


def _with_int8(bundle: Path, out: Path) -> Path:
    """A copy of `bundle` with the int8 vision graph export's --precision int8 step writes, listed and hashed."""
    from apclip.bundle import MANIFEST, read_manifest, sha256_file
    from apclip.export.int8.quantize import quantize_encoder

    shutil.copytree(bundle, out)
    quantize_encoder(out / "vision.onnx", out / "vision.int8.onnx")
    raw = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    raw["files"]["vision.int8.onnx"] = {"sha256": sha256_file(out / "vision.int8.onnx"),
                                        "bytes": (out / "vision.int8.onnx").stat().st_size}
    (out / MANIFEST).write_text(json.dumps(raw, indent=2), encoding="utf-8")
    read_manifest(out)
    return out


def test_openvino_int8_runs_the_quantized_graph(tiny_bundle, video_views, tmp_path):
    pytest.importorskip("onnxruntime.quantization")
    from apclip.bundle import read_manifest
    from apclip.engine.runners.encoders import BackendUnavailable, encode_in_batches
    from apclip.engine.runners.openvino import openvino_runners
    from apclip.engine.runners.probes import openvino_reason

    plain = read_manifest(tiny_bundle)
    assert "vision.int8.onnx" in openvino_reason(plain, "int8")
    with pytest.raises(BackendUnavailable, match="re-export it with apclip-export --precision fp32,int8"):
        openvino_runners(plain, precision="int8")
    manifest = read_manifest(_with_int8(tiny_bundle, tmp_path / "int8"))
    assert openvino_reason(manifest, "int8") is None
    int8, _ = openvino_runners(manifest, threads=1, precision="int8")
    fp32, _ = openvino_runners(manifest, threads=1)
    assert int8.name == "openvino-cpu-int8"
    a, b = encode_in_batches(int8, video_views), encode_in_batches(fp32, video_views)
    cosine = _cosine(a, b)
    assert cosine.min() >= 0.999  # DESIGN.md's int8 threshold
    assert cosine.max() < 1 - 1e-7  # it really ran the quantized graph, not vision.onnx


def test_openvino_refuses_an_unloadable_graph_in_one_line(tmp_path):
    from apclip.bundle import BundleError
    from apclip.engine.runners.openvino import OpenVinoRunner

    bad = tmp_path / "vision.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(BundleError, match="OpenVINO cannot load .*re-run apclip-export") as info:
        OpenVinoRunner(bad, "pixels")
    assert "\n" not in str(info.value)


def test_apclip_infer_backend_openvino_gives_the_ort_answers(tiny_bundle, video_views, tmp_path, capsys):
    from apclip.testing.videos import write_test_video
    from infer_cli_helpers import read_jsonl, run

    video = write_test_video(tmp_path / "v.avi", frames=40, size=(80, 60))
    out = {}
    for backend in ("openvino", "ort"):
        out[backend] = tmp_path / f"{backend}.jsonl"
        code, _, err = run(capsys, video, "--bundle", tiny_bundle, "--backend", backend, "--json", out[backend],
                           "--no-cache", "--quiet")
        assert code == 0, err
    got, want = read_jsonl(out["openvino"])[0], read_jsonl(out["ort"])[0]
    assert got["backend"] == "openvino-cpu" and want["backend"] == "ort-cpu"
    assert [t["label"] for t in got["top"]] == [t["label"] for t in want["top"]]
    np.testing.assert_allclose([t["score"] for t in got["top"]], [t["score"] for t in want["top"]], atol=1e-5)


def test_backend_table_has_the_openvino_rows(tiny_bundle):
    from apclip.benchmarks.contenders import select
    from apclip.bundle import read_manifest
    from apclip.engine.runners import table

    rows = {row.key: row for row in table.rows()}
    assert {"openvino:fp32", "openvino:int8"} <= rows.keys()
    assert not rows["openvino:fp32"].auto  # ONNX Runtime stays the embedded default
    ctx = table.Context(read_manifest(tiny_bundle))
    assert table.probe(rows["openvino:fp32"], ctx) is None
    assert "no int8 encoders" in table.probe(rows["openvino:int8"], ctx)
    assert [c.name for c in select("openvino")] == ["openvino:fp32", "openvino:int8"]  # apclip-bench contenders
