"""INT8 encoders: ONNX Runtime dynamic quantization of vision.onnx / text.onnx, gated by parity.

Dynamic quantization stores MatMul/Gemm weights as int8 (one scale per output channel) and
quantizes each activation tensor to uint8 at run time (per tensor, from its own min/max), so no
calibration set is needed and the kernels are MLAS's u8s8 GEMMs (VNNI where the CPU has it).
Settings (docs/cpu-precisions.md has the measurements):
- per-channel weights: a larger cosine margin than per-tensor scales (0.99984 vs 0.99977 on ViT-B/16),
  at a speed within the noise of a loaded 2-core machine;
- MatMulConstBOnly: only products with a constant weight are quantized; attention's Q.K^T and
  P.V (two activations) stay fp32, where per-tensor activation scales would hurt most;
- reduce_range off: CPUs without VNNI saturate u8s8 int16 pair sums; instead every int8 file runs with
  ONNX Runtime's session.x64quantprecision=1 (exact u8u8 sums there; export/int8/static.py), which the
  export's gate measured as more accurate than 7-bit weights on the demo model (vision 0.9998 vs 0.9996).
Since issue 25 this is the `dynamic` method of export/int8/export.py, behind the same gate and fallback.
Each int8 file is kept only if it passes the int8 thresholds (export/int8/verify.py) against the
PyTorch fp32 reference; a refused file is not written and the export says why.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from apclip.errors import ApclipError

OP_TYPES = ("MatMul", "Gemm")


@dataclass(frozen=True)
class QuantizationSettings:
    """How an encoder is quantized (recorded in the manifest)."""

    method: str = "onnxruntime.quantization.quantize_dynamic"
    op_types: tuple[str, ...] = OP_TYPES  # only these ops get int8 weights
    per_channel: bool = True  # one weight scale per output channel
    reduce_range: bool = False  # 7-bit weights (for CPUs without VNNI); off: full int8
    weight_type: str = "int8"  # signed int8 weights, uint8 activations (u8s8)
    activations: str = "uint8, per tensor, dynamic"
    const_weights_only: bool = True  # MatMulConstBOnly: activation x activation MatMuls stay fp32
    exclude_nodes: tuple[str, ...] = field(default_factory=tuple)  # nodes kept fp32 (outlier layers)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["op_types"], out["exclude_nodes"] = list(self.op_types), list(self.exclude_nodes)
        return out


def quantize_encoder(src: Path, dst: Path, settings: QuantizationSettings = QuantizationSettings()) -> dict:
    """Write the dynamically quantized `src` to `dst`; returns {op type: count} of quantized nodes."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if settings.weight_type != "int8":
        raise ApclipError(f"weight type {settings.weight_type!r} is not supported; use int8")
    # The quantizer logs a pre-processing hint and prints per-node chatter; our own log says what matters.
    from apclip.export.int8.static import side_nodes

    exclude = list(settings.exclude_nodes) + side_nodes(src)  # split.py's float side products stay float
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_root_logger():
        warnings.simplefilter("ignore")
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(settings.op_types),
                         per_channel=settings.per_channel, reduce_range=settings.reduce_range,
                         weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                         extra_options={"MatMulConstBOnly": settings.const_weights_only})
    model = onnx.load(str(dst))
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "QGemm", "ConvInteger"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    if not counts:
        os.unlink(dst)
        raise ApclipError(f"quantizing {src.name} changed no MatMul/Gemm node; nothing to gain from int8")
    return counts


@contextlib.contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)

