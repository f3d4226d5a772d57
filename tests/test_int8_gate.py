"""The int8 gate: fallback to float reaches the thresholds on a model with one outlier layer, a model with
outliers everywhere is refused (no silent int8), the static graph is explicit QDQ that ONNX Runtime
loads, --calibrate reads the user's videos, and the manifest says what was done."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from apclip.bundle import INT8_FILES, TEXT_FILE, VISION_FILE, read_manifest
from apclip.export.api import export_bundle

VISION_INT8, TEXT_INT8 = INT8_FILES[VISION_FILE], INT8_FILES[TEXT_FILE]


def _checkpoint(path: Path, edit) -> Path:
    from apclip.checkpoint import save_checkpoint
    from apclip.model import build_preset
    from apclip.testing.assets import LABELS

    model = build_preset("tiny", seed=0).eval()
    edit(model)
    return save_checkpoint(path, model, labels=LABELS,
                           preprocessing={"normalize": "clip", "frames": 8, "clips": 1, "crops": 1})


def _one_outlier_layer(model) -> None:
    """Two outliers in block 0's MLP, each ruining one MatMul's per-tensor int8 input scale:
    - a 1000x LayerNorm gain on one channel of ln_2, undone in c_fc's input column (the float function is
      unchanged);
    - one hidden unit 300x larger (c_fc row), its c_proj column 300x smaller: c_proj's input (after GELU)
      has an outlier no per-channel op can absorb, so the fallback must keep c_proj float."""
    import torch

    with torch.no_grad():
        block = model.visual.transformer.resblocks[0]
        block.ln_2.weight[3] *= 1000.0
        block.ln_2.bias[3] *= 1000.0
        block.mlp.c_fc.weight[:, 3] /= 1000.0
        block.mlp.c_fc.weight[7] *= 300.0
        block.mlp.c_fc.bias[7] = 300.0
        block.mlp.c_proj.weight[:, 7] /= 300.0


@pytest.fixture(scope="module")
def calibration_videos(tmp_path_factory) -> Path:
    from apclip.testing.videos import write_test_video

    folder = tmp_path_factory.mktemp("calibration")
    for i in range(8):
        write_test_video(folder / f"clip{i}.avi", frames=24 + 4 * i, size=(96 + 16 * i, 80 + 8 * i), codec="MJPG")
    return folder


@pytest.fixture(scope="module")
def fallback_bundle(demo_assets, calibration_videos, tmp_path_factory) -> tuple[Path, list[str]]:
    tmp = tmp_path_factory.mktemp("fallback")
    messages: list[str] = []
    export_bundle(_checkpoint(tmp / "best.pt", _one_outlier_layer), out=tmp / "bundle", prompts=demo_assets["bank"],
                  precisions=("fp32", "int8"), calibrate=(str(calibration_videos),), int8_method="static",
                  progress=False, log=messages.append)
    return tmp / "bundle", messages


def test_fallback_keeps_the_outlier_layers_float_and_passes(fallback_bundle):
    import onnx

    bundle, messages = fallback_bundle
    record = read_manifest(bundle).raw["precisions"]["int8"]
    assert record["files"]["vision"] == VISION_INT8 and record["methods"][VISION_INT8] == "static"
    gate = record["gate"][f"{VISION_INT8} (static)"]
    assert gate["all_int8"]["ok"] is False  # the outliers break all-int8 ...
    assert gate["ok"] is True and gate["figures"]["min_cosine"] >= 0.999 and gate["figures"]["top1_agreement"] >= 0.995
    # ... SmoothQuant was measured as the second candidate (it cannot absorb the GELU outlier) ...
    assert any("SmoothQuant all-int8 held-out min cosine by alpha" in m for m in messages)
    # ... and the two most sensitive layers, block 0's c_fc [W, 4W] and c_proj [4W, W], went back to float.
    float_layers = record["fallback_layers"][VISION_INT8]
    assert float_layers == [name for name, _ in gate["sensitivity_worst"][:2]]
    model = onnx.load(str(bundle / VISION_FILE), load_external_data=False)
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    shapes = sorted(dims[n.input[1]] for n in model.graph.node if n.name in float_layers)
    assert shapes == [[128, 512], [512, 128]]
    assert any("layers kept float: " + ", ".join(float_layers) in m and "fp32's speed" in m for m in messages)


def test_static_int8_is_explicit_qdq_that_ort_runs(fallback_bundle):
    import onnx
    import onnxruntime as ort

    bundle, _ = fallback_bundle
    model = onnx.load(str(bundle / VISION_INT8))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "MatMul", "LayerNormalization", "Add", "Softmax"} <= ops
    assert not ops & {"MatMulInteger", "DynamicQuantizeLinear", "QLinearMatMul"}  # no ORT-only int8 operators
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    # Symmetric int8 everywhere (zero points 0): what TensorRT's explicit quantization takes.
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    zero_points = [numpy_helper.to_array(inits[n.input[2]]) for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    # The kept-float layer reads float: no DequantizeLinear feeds it.
    record = read_manifest(bundle).raw["precisions"]["int8"]
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    kept = [n for n in model.graph.node if n.name in record["fallback_layers"][VISION_INT8]]
    assert kept and not any(i in dq_outputs for n in kept for i in n.input)
    session = ort.InferenceSession(str(bundle / VISION_INT8), providers=["CPUExecutionProvider"])
    out = session.run(None, {"pixels": np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)})
    assert out[0].shape == (2, 64) and np.isfinite(out[0]).all()


def test_manifest_records_method_calibration_and_gate(fallback_bundle, calibration_videos):
    from apclip.export.int8.calibrate import calibration_set

    bundle, messages = fallback_bundle
    manifest = read_manifest(bundle)
    record = manifest.raw["precisions"]["int8"]
    calibration = record["calibration"]
    assert calibration["clips"] + calibration["held_out_clips"] == 8 and calibration["held_out_clips"] == 2
    assert "8 video(s) given to --calibrate" in calibration["source"]
    # The hash is of the frames the bundle's own sampler and preprocessing made from those videos.
    again = calibration_set(manifest.preprocessing, [str(calibration_videos)],
                            _prompt_texts(manifest), log=lambda m: None)
    assert again.sha256 == calibration["sha256"] and again.clips[0].shape == (8, 3, 32, 32)
    assert record["quantization"]["method"] == "static-qdq" and record["quantization"]["per_channel"] is True
    for name in record["files"].values():
        figures = record["gate"][f"{name} ({record['methods'][name]})"]["figures"]
        assert figures["ok"] and figures["thresholds"] == {"min_cosine": 0.999, "top1_agreement": 0.995}


def _prompt_texts(manifest) -> list[str]:
    from apclip.class_matrix import load_prompt_texts
    from apclip.scoring_protocol import format_template

    texts = [t for row in load_prompt_texts(manifest.path / "prompts.json", manifest.labels) for t in row]
    return texts + [format_template(manifest.scoring.template, label) for label in manifest.labels]


def test_gate_refuses_a_model_with_outliers_everywhere(demo_assets, calibration_videos, tmp_path):
    """Outlier channels in every block of both towers and plain dynamic int8 (per-tensor ranges, no outlier
    handling): it cannot pass within the float budget, so neither int8 file ships, the reason is recorded,
    and asking for int8 at run time says why."""
    from apclip.testing.outliers import add_outliers

    messages: list[str] = []
    result = export_bundle(_checkpoint(tmp_path / "best.pt", add_outliers), out=tmp_path / "bundle",
                           prompts=demo_assets["bank"], precisions=("fp32", "int8"), int8_method="dynamic",
                           calibrate=(str(calibration_videos),), progress=False, log=messages.append)
    record = result.manifest["precisions"]["int8"]
    assert record["files"] == {} and set(record["refused"]) == {VISION_INT8, TEXT_INT8}
    assert all("misses the gate" in why for why in record["refused"].values())
    assert not (result.path / VISION_INT8).exists() and (result.path / VISION_FILE).exists()
    assert any("int8 vision (dynamic): fallback step 1" in m for m in messages)
    from apclip.engine.recognizer import Recognizer
    from apclip.engine.runners.precision import PrecisionUnavailable

    with pytest.raises(PrecisionUnavailable, match="export refused it: .*misses the gate"):
        Recognizer.from_bundle(result.path, precision="int8")


def test_run_gate_falls_back_worst_first_and_stops_at_the_budget():
    from apclip.export.int8.gate import GateFigures, run_gate

    sensitivity = [(f"n{i}", 1.0 / (i + 1)) for i in range(24)]  # n0 worst; groups of 2

    def figures(cosine, layers):
        return GateFigures(cosine, cosine, 1.0, 4, 0.01, list(layers))

    built: list[list[str]] = []
    passing = run_gate(lambda layers: built.append(list(layers)) or Path("x"),
                       lambda path, layers: figures(0.9995 if "n3" in layers else 0.99, layers),
                       sensitivity, 0.02, log=lambda m: None, what="vision")
    assert passing.ok and passing.steps == 2 and passing.figures.float_layers == ["n0", "n1", "n2", "n3"]
    assert built == [[], ["n0", "n1"], ["n0", "n1", "n2", "n3"]]
    never = run_gate(lambda layers: Path("x"), lambda path, layers: figures(0.99, layers), sensitivity, 0.02,
                     log=lambda m: None, what="text")
    assert not never.ok and len(never.figures.float_layers) == 12  # half the layers, then refused
    assert "even with 12 of 24 layers float" in never.reason


def test_calibrate_refuses_missing_sources_in_one_line(demo_assets, tmp_path):
    from apclip.export.cli import main

    code = main(["--ckpt", str(demo_assets["checkpoint"]), "--out", str(tmp_path / "b"), "--precision", "fp32,int8",
                 "--calibrate", str(tmp_path / "nowhere.mp4")])
    assert code != 0 and not (tmp_path / "b").exists()
    with pytest.raises(Exception, match="add --precision fp32,int8"):
        export_bundle(demo_assets["checkpoint"], out=tmp_path / "c", calibrate=("x.mp4",), progress=False,
                      log=lambda m: None)


@pytest.fixture(scope="module")
def outlier_bundle(demo_assets, calibration_videos, tmp_path_factory) -> tuple[Path, list[str]]:
    from apclip.testing.outliers import add_outliers

    tmp = tmp_path_factory.mktemp("outliers")
    messages: list[str] = []
    export_bundle(_checkpoint(tmp / "best.pt", add_outliers), out=tmp / "bundle", prompts=demo_assets["bank"],
                  precisions=("fp32", "int8"), calibrate=(str(calibration_videos),), progress=False,
                  log=messages.append)
    return tmp / "bundle", messages


def test_auto_keeps_outlier_channels_float_and_passes(outlier_bundle):
    """The same outliers-everywhere model with --int8-method auto: static and plain dynamic miss all-int8, so
    the split candidate (outlier channels in float, SmoothQuant on the rest) is measured and passes."""
    bundle, messages = outlier_bundle
    record = read_manifest(bundle).raw["precisions"]["int8"]
    assert record["files"] == {"vision": VISION_INT8, "text": TEXT_INT8} and record["refused"] == {}
    for name in (VISION_INT8, TEXT_INT8):
        assert record["methods"][name] == "split"
        tried = [c["method"] for c in record["candidates"][name]]
        assert tried[0] == "static" and "dynamic" in tried and tried[-1] == "split"
        # every earlier candidate missed the gate all-int8, or passed it and failed the check against PyTorch
        assert all(not c["all_int8"]["ok"] or c["rejected_by_pytorch_check"] for c in record["candidates"][name][:-1])
        figures = record["gate"][f"{name} (split)"]["figures"]
        assert figures["ok"] and figures["min_cosine"] >= 0.999 and figures["float_layers"] == []
        assert record["outlier_channels"][name]["count"] > 0
    assert any("outlier channels float passes the gate" in m for m in messages)


def test_split_graph_is_exact_in_float_and_its_side_products_stay_float(demo_assets, tmp_path):
    """split_outliers only rewrites: the float graph equals the original (to float rounding), the int8 part's
    inputs lose their outlier channels (the range each int8 MatMul sees shrinks), smoothing never amplifies a
    channel, and quantizing it leaves the side products float."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from apclip.export.api import export_bundle as export
    from apclip.export.int8.quantize import quantize_encoder
    from apclip.export.int8.smooth import activation_absmax
    from apclip.export.int8.split import is_side_node, split_outliers
    from apclip.export.int8.static import constant_weight_matmuls
    from apclip.testing.outliers import add_outliers

    bundle = export(_checkpoint(tmp_path / "best.pt", add_outliers), out=tmp_path / "b", prompts=demo_assets["bank"],
                    progress=False, log=lambda m: None).path
    src = bundle / VISION_FILE
    rng = np.random.default_rng(3)
    feeds = [{"pixels": rng.standard_normal((4, 3, 32, 32)).astype(np.float32)} for _ in range(3)]
    channels = split_outliers(src, tmp_path / "split.onnx", feeds, alpha=0.5)
    assert channels and sum(len(c) for c in channels.values()) > 0
    x = {"pixels": rng.standard_normal((2, 3, 32, 32)).astype(np.float32)}
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, x)[0]
    got = ort.InferenceSession(str(tmp_path / "split.onnx"), providers=["CPUExecutionProvider"]).run(None, x)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    before = {n: a for n, a, _ in constant_weight_matmuls(src)}
    after = {n: a for n, a, _ in constant_weight_matmuls(tmp_path / "split.onnx")}
    assert set(after) == set(before)  # the side products are not fallback candidates
    split = [n for n in channels if channels[n]]
    wide = activation_absmax(src, [before[n] for n in split], feeds)
    narrow = activation_absmax(tmp_path / "split.onnx", [after[n] for n in split], feeds)
    assert all(narrow[after[n]].max() < 0.5 * wide[before[n]].max() for n in split)
    model = onnx.load(str(tmp_path / "split.onnx"))
    masks = [numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("/mask")]
    assert masks and all(m.max() <= 1.0 and m.min() >= 0.0 for m in masks)
    quantize_encoder(tmp_path / "split.onnx", tmp_path / "q.onnx")
    q = onnx.load(str(tmp_path / "q.onnx"))
    side = [n for n in q.graph.node if is_side_node(n.name) and n.op_type == "MatMul"]
    assert len(side) == sum(1 for c in channels.values() if c)
    assert sum(n.op_type == "MatMulInteger" for n in q.graph.node) == len(before)
