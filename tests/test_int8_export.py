"""apclip-export --precision fp32,int8: int8 files listed and verified, the parity gate refuses bad
ones (fp32 still ships), and inference --precision int8 runs them or says which flag is missing."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from apclip.bundle import INT8_FILES, MANIFEST, TEXT_FILE, VISION_FILE, read_manifest, sha256_file
from apclip.export.api import export_bundle
from apclip.export.errors import ExportError

import apclip.export.int8.export as int8_export
import apclip.export.onnx_export as onnx_export

QUIET = dict(progress=False, log=lambda message: None)
VISION_INT8, TEXT_INT8 = INT8_FILES[VISION_FILE], INT8_FILES[TEXT_FILE]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("APCLIP_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def reuse_session_onnx(monkeypatch, tiny_bundle):
    """The session bundle's fp32 ONNX files instead of a new torch export (same demo weights)."""
    monkeypatch.setattr(onnx_export, "export_vision", lambda m, path, *a: shutil.copy(tiny_bundle / VISION_FILE, path))
    monkeypatch.setattr(onnx_export, "export_text", lambda m, path, *a: shutil.copy(tiny_bundle / TEXT_FILE, path))


@pytest.fixture(scope="module")
def int8_bundle(demo_assets, tiny_bundle, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "bundle"
    with pytest.MonkeyPatch.context() as patch:  # the torch export itself is tested in test_export.py
        patch.setattr(onnx_export, "export_vision", lambda m, path, *a: shutil.copy(tiny_bundle / VISION_FILE, path))
        patch.setattr(onnx_export, "export_text", lambda m, path, *a: shutil.copy(tiny_bundle / TEXT_FILE, path))
        export_bundle(demo_assets["checkpoint"], out=out, labels=demo_assets["labels"], prompts=demo_assets["bank"],
                      precisions=("fp32", "int8"), **QUIET)
    return out


def test_int8_files_are_listed_verified_and_hashed(int8_bundle):
    manifest = read_manifest(int8_bundle)  # every sha256, int8 files included
    assert {VISION_INT8, TEXT_INT8} <= set(manifest.files)
    for name in (VISION_INT8, TEXT_INT8):
        assert manifest.files[name]["sha256"] == sha256_file(int8_bundle / name)
    record = manifest.raw["precisions"]["int8"]
    assert record["files"] == {"vision": VISION_INT8, "text": TEXT_INT8}
    assert record["refused"] == {}
    assert record["quantization"]["per_channel"] is True and record["quantization"]["op_types"] == ["MatMul", "Gemm"]
    assert record["quantized_nodes"][VISION_INT8]  # e.g. {"MatMul": 13} (QDQ) or {"MatMulInteger": 9} (dynamic)
    assert record["session_config"] == {"session.x64quantprecision": "1"}  # exact sums without VNNI
    for name in (VISION_INT8, TEXT_INT8):
        report = record["verification"][name]
        assert report["ok"] is True
        cosines = [c for c in report["checks"] if c["metric"] == "min cosine"]
        assert cosines and all(0.999 <= c["value"] < 1.0 for c in cosines)  # int8 really moved the values
    names = {c["name"] for c in record["verification"][VISION_INT8]["checks"]}
    assert {"int8 vision, random pixels", "int8 vision, video frames", "int8 MAKA top-1, video frames"} <= names
    assert manifest.raw["io"]["vision_int8"]["file"] == VISION_INT8
    assert manifest.raw["io"]["text_int8"]["inputs"][0]["shape"] == ["M", "L"]
    assert manifest.raw["verification"]["ok"] is True  # the fp32 rows are still there
    # int8 weights are really int8: the vision file is much smaller than its fp32 source.
    assert (int8_bundle / VISION_INT8).stat().st_size < 0.6 * (int8_bundle / VISION_FILE).stat().st_size


def test_int8_inference_agrees_with_fp32(int8_bundle, demo_assets):
    from apclip.engine.recognizer import Recognizer

    labels = read_manifest(int8_bundle).labels + ["a brand new action"]
    fp32 = Recognizer.from_bundle(int8_bundle, "auto", labels, use_cache=False)
    int8 = Recognizer.from_bundle(int8_bundle, "auto", labels, precision="int8", use_cache=False)
    assert int8.backend == "ort-cpu-int8" and fp32.backend == "ort-cpu"
    assert int8.text.cache_identity.source == TEXT_INT8
    a, b = fp32.predict(demo_assets["video"]), int8.predict(demo_assets["video"])
    assert a.top[0].label == b.top[0].label
    assert not np.array_equal(a.scores, b.scores)  # the int8 graph did run
    np.testing.assert_allclose(a.scores, b.scores, atol=2e-2)
    # The run-time label (encoded by text.int8.onnx) stays close to its fp32 row.
    new_fp32, new_int8 = fp32.classes.embeddings[-1, 0], int8.classes.embeddings[-1, 0]
    assert float(new_fp32 @ new_int8) >= 0.995  # tiny preset (128 wide); the gate checks its own prompts


def test_infer_cli_precision_int8(int8_bundle, demo_assets, capsys):
    from apclip.engine.cli.infer import main

    code = main([str(demo_assets["video"]), "--bundle", str(int8_bundle), "--precision", "int8", "--json",
                 str(Path(demo_assets["video"]).parent / "int8.jsonl")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "ort-cpu-int8" in out


def test_int8_asked_of_an_fp32_bundle_names_the_export_flag(tiny_bundle, demo_assets, capsys):
    from apclip.engine.cli.infer import main
    from apclip.engine.runners.precision import PrecisionUnavailable
    from apclip.engine.recognizer import Recognizer

    with pytest.raises(PrecisionUnavailable, match=r"apclip-export --precision fp32,int8"):
        Recognizer.from_bundle(tiny_bundle, precision="int8")
    code = main([str(demo_assets["video"]), "--bundle", str(tiny_bundle), "--precision", "int8"])
    err = capsys.readouterr().err
    assert code == 1 and "--precision fp32,int8" in err and len(err.strip().splitlines()) == 1


def test_int8_is_an_ort_precision(int8_bundle, demo_assets):
    from apclip.engine.runners.precision import PrecisionUnavailable
    from apclip.engine.recognizer import Recognizer

    with pytest.raises(PrecisionUnavailable, match="--backend ort"):
        Recognizer.from_bundle(int8_bundle, "torch", precision="int8", ckpt=demo_assets["checkpoint"])


def test_gate_refuses_int8_files_below_the_threshold(demo_assets, tmp_path, reuse_session_onnx, monkeypatch):
    """A threshold int8 cannot meet: both int8 files refused and absent, the fp32 bundle exported."""
    import apclip.export.int8.verify as verify_int8

    monkeypatch.setattr(verify_int8, "INT8_MIN_COSINE", 0.9999999)
    messages: list[str] = []
    result = export_bundle(demo_assets["checkpoint"], out=tmp_path / "b", labels=demo_assets["labels"],
                           prompts=demo_assets["bank"], precisions=("fp32", "int8"), progress=False,
                           log=messages.append)
    files = set(read_manifest(result.path).files)
    assert {VISION_FILE, TEXT_FILE} <= files and not {VISION_INT8, TEXT_INT8} & files
    assert not (result.path / VISION_INT8).exists() and not (result.path / TEXT_INT8).exists()
    record = result.manifest["precisions"]["int8"]
    assert record["files"] == {} and set(record["refused"]) == {VISION_INT8, TEXT_INT8}
    assert all("failed the int8 parity thresholds" in why for why in record["refused"].values())
    assert record["verification"][VISION_INT8]["ok"] is False
    assert any(f"{VISION_INT8} not written" in m and "fp32 bundle is still exported" in m for m in messages)
    from apclip.engine.runners.precision import PrecisionUnavailable
    from apclip.engine.recognizer import Recognizer

    with pytest.raises(PrecisionUnavailable, match="export refused it"):
        Recognizer.from_bundle(result.path, precision="int8")


def _corrupt_int8_weights(path: Path) -> None:
    """Shuffle every int8 weight matrix (a quantizer bug the gate must catch; a sign flip would not do:
    flipped q/k/v and out_proj weights cancel each other)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.INT8 and len(init.dims) == 2:
            values = numpy_helper.to_array(init)
            shuffled = np.random.default_rng(0).permutation(values.ravel()).reshape(values.shape)
            init.CopyFrom(numpy_helper.from_array(shuffled, init.name))
    onnx.save(model, str(path))


def test_gate_catches_a_corrupt_vision_file_and_keeps_text(demo_assets, tmp_path, reuse_session_onnx, monkeypatch):
    """Every int8 weight of vision flipped (a quantizer bug): no fallback within budget passes, so the
    gate refuses vision (static and dynamic); text is kept."""
    def corrupting(real):
        def quantize(src, dst, *args):
            counts = real(src, dst, *args)
            if dst.name == VISION_INT8:  # every vision graph built (plain or smoothed, any fallback)
                _corrupt_int8_weights(dst)
            return counts
        return quantize

    monkeypatch.setattr(int8_export, "quantize_encoder", corrupting(int8_export.quantize_encoder))
    monkeypatch.setattr(int8_export, "quantize_qdq", corrupting(int8_export.quantize_qdq))
    result = export_bundle(demo_assets["checkpoint"], out=tmp_path / "b", labels=demo_assets["labels"],
                           prompts=demo_assets["bank"], precisions=("fp32", "int8"), **QUIET)
    record = result.manifest["precisions"]["int8"]
    assert record["files"] == {"text": TEXT_INT8} and list(record["refused"]) == [VISION_INT8]
    assert (result.path / TEXT_INT8).exists() and not (result.path / VISION_INT8).exists()
    assert "misses the gate" in record["refused"][VISION_INT8]
    candidates = record["candidates"][VISION_INT8]
    assert {"static", "dynamic", "split"} <= {c["method"] for c in candidates}
    assert all(c["all_int8"]["ok"] is False and c["all_int8"]["min_cosine"] < 0.99 for c in candidates)
    assert any(key.startswith(VISION_INT8) and not gate["ok"] for key, gate in record["gate"].items())


def test_quantizer_failure_is_reported_not_fatal(demo_assets, tmp_path, reuse_session_onnx, monkeypatch):
    def broken(src, dst, *args):
        raise RuntimeError("simulated quantizer crash\nsecond line")

    monkeypatch.setattr(int8_export, "quantize_encoder", broken)
    monkeypatch.setattr(int8_export, "quantize_qdq", broken)
    result = export_bundle(demo_assets["checkpoint"], out=tmp_path / "b", labels=demo_assets["labels"],
                           precisions=("fp32", "int8"), **QUIET)
    record = result.manifest["precisions"]["int8"]
    # every candidate was tried, and the one line says what failed for which
    assert record["refused"][VISION_INT8] == "quantization failed: simulated quantizer crash (static, dynamic, split)"
    assert read_manifest(result.path).raw["verification"]["ok"] is True


def test_unknown_precision_is_refused_before_loading(demo_assets, tmp_path, capsys):
    from apclip.export.cli import main

    with pytest.raises(ExportError, match="choose from fp32, int8"):
        export_bundle(demo_assets["checkpoint"], out=tmp_path / "b", precisions=("fp16",), **QUIET)
    with pytest.raises(SystemExit) as exit_info:
        main(["--ckpt", str(demo_assets["checkpoint"]), "--out", str(tmp_path / "c"), "--precision", "fp32,fp16"])
    assert exit_info.value.code == 2 and "fp32,fp16" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_export_summary_prints_the_int8_rows(int8_bundle):
    from apclip.export.cli import _int8_summary

    record = json.loads((int8_bundle / MANIFEST).read_text())["precisions"]["int8"]
    lines = "\n".join(_int8_summary(record))
    assert "int8 parity" in lines and "int8 MAKA top-1, video frames" in lines and "FAILED" not in lines
    assert f"int8 gate: {VISION_INT8}" in lines and "float layers:" in lines and "x fp32 here" in lines


def test_int8_is_a_precision_of_the_ort_constructor(int8_bundle):
    """How a harness lists the int8 contender: the ort backend's constructor with precision="int8"."""
    from apclip.engine.runners.table import Context, build, find

    vision, text = build(find("ort", "int8"), Context(read_manifest(int8_bundle), batch_size=8))
    assert vision.name == "ort-cpu-int8" and text.cache_identity.source == TEXT_INT8
    fp32_vision, _ = build(find("ort", "fp32"), Context(read_manifest(int8_bundle), batch_size=8))
    assert fp32_vision.name == "ort-cpu"
