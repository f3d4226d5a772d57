"""Static int8 with explicit QDQ: ONNX Runtime's quantize_static, calibrated once, re-run per fallback.

Only MatMul/Gemm with a constant weight are quantized (QuantizeLinear/DequantizeLinear pairs on their
activation input, int8 per-channel symmetric weights): residual Adds, LayerNorm, Softmax, GELU and the
attention products of two activations stay float by construction, and each fallback step adds
MatMuls to `exclude_nodes`. The graph stays a plain ONNX graph with QDQ pairs (no ORT contrib op), so
ONNX Runtime fuses it into its integer kernels on CPU and TensorRT parses it as explicit quantization.

The activation ranges (MinMax over the calibration clips) are computed once and cached as JSON next to
the output, so excluding more nodes does not run the calibration again.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from apclip.errors import ApclipError

OP_TYPES = ("MatMul", "Gemm")
QDQ_COMPUTE_OPS = ("MatMul", "Gemm")
# ONNX Runtime's switch for exact integer sums on x86 CPUs without VNNI: MLAS's u8s8 kernels add pairs
# of u8*s8 products in int16 with saturation (vpmaddubsw) there; "1" makes it use u8u8 kernels instead.
# Harmless where VNNI exists (the int32 dot products never saturate).
EXACT_X64_SESSION_CONFIG = {"session.x64quantprecision": "1"}


@dataclass(frozen=True)
class StaticSettings:
    """How an encoder is statically quantized (recorded in the manifest)."""

    method: str = "static-qdq"  # onnxruntime.quantization.quantize_static, QuantFormat.QDQ
    op_types: tuple[str, ...] = OP_TYPES  # only these ops get int8 weights
    per_channel: bool = True  # one weight scale per output channel
    reduce_range: bool = False  # 7-bit weights: no int16 saturation without VNNI, one bit less precision
    weight_type: str = "int8"  # symmetric int8 weights
    activations: str = "int8"  # "int8": symmetric, zero point 0 (what TensorRT takes); "uint8": asymmetric
    calibrate_method: str = "MinMax"  # of the calibration clips' activations
    const_weights_only: bool = True  # MatMulConstBOnly: activation x activation MatMuls stay float
    exclude_nodes: tuple[str, ...] = field(default_factory=tuple)  # MatMuls kept float (the gate's fallback)
    session_config: dict = field(default_factory=lambda: dict(EXACT_X64_SESSION_CONFIG))  # ORT run-time options

    def to_dict(self) -> dict:
        out = asdict(self)
        out["op_types"], out["exclude_nodes"] = list(self.op_types), list(self.exclude_nodes)
        return out


def quantize_qdq(src: Path, dst: Path, feeds: Iterable[dict[str, np.ndarray]] | None, settings: StaticSettings,
                 cache: Path) -> dict[str, int]:
    """Write the QDQ-quantized `src` to `dst`; returns {op type: count} of quantized nodes.

    feeds: input dicts for calibration (only read when `cache` does not exist yet)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self, items):
            self.items = iter(items or ())

        def get_next(self):
            return next(self.items, None)

    if settings.weight_type != "int8" or settings.activations not in ("int8", "uint8"):
        raise ApclipError(f"int8 settings {settings.weight_type}/{settings.activations}: use int8 weights and "
                          "int8 or uint8 activations")
    activation = QuantType.QInt8 if settings.activations == "int8" else QuantType.QUInt8
    from apclip.export.int8.quantize import _quiet_root_logger

    exclude = list(settings.exclude_nodes) + side_nodes(src)  # split.py's float side products stay float
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_root_logger():
        warnings.simplefilter("ignore")
        quantize_static(str(src), str(dst), None if cache.is_file() else Reader(feeds),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=list(settings.op_types),
                        per_channel=settings.per_channel, reduce_range=settings.reduce_range,
                        activation_type=activation, weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude,
                        calibrate_method=getattr(CalibrationMethod, settings.calibrate_method),
                        calibration_cache_path=str(cache),
                        extra_options={"MatMulConstBOnly": settings.const_weights_only,
                                       "ActivationSymmetric": settings.activations == "int8",
                                       "WeightSymmetric": True})
    return qdq_compute_nodes(onnx.load(str(dst), load_external_data=False))


def qdq_compute_nodes(model) -> dict[str, int]:
    """{op type: count} of MatMul/Gemm nodes that read a DequantizeLinear output (i.e. run in int8)."""
    produced_by_dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in QDQ_COMPUTE_OPS and node.input and node.input[0] in produced_by_dq:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def side_nodes(path: Path) -> list[str]:
    """The float side products of outlier channels (export/int8/split.py) in the graph at `path`."""
    import onnx

    from apclip.export.int8.split import is_side_node

    model = onnx.load(str(path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in OP_TYPES and is_side_node(n.name)]


def constant_weight_matmuls(path: Path) -> list[tuple[str, str, str]]:
    """(node name, activation input, weight initializer) of every MatMul/Gemm with a constant weight,
    in graph order: the nodes static int8 quantizes, and what the fallback can keep float."""
    import onnx

    from apclip.export.int8.split import is_side_node

    model = onnx.load(str(path), load_external_data=False)
    constants = {init.name for init in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if is_side_node(n.name):
            continue  # an outlier-channel side product: float by design, not a fallback candidate
        if n.op_type in OP_TYPES and len(n.input) > 1 and n.input[1] in constants and n.input[0] not in constants:
            if not n.name:
                raise ApclipError(f"{path.name} has an unnamed {n.op_type} node; re-export it")
            out.append((n.name, n.input[0], n.input[1]))
    return out
