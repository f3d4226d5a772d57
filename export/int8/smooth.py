"""SmoothQuant-style scale migration on an ONNX graph: LayerNorm -> MatMul pairs trade activation outliers
for weight range (Xiao et al. 2023, "SmoothQuant", eq. 4).

For a LayerNormalization whose output feeds only MatMuls with constant weights W [K, N], channel j of
the activation X is divided by s_j and row j of every W multiplied by s_j, with
    s_j = max|X_j| ^ alpha / max|W_j,:| ^ (1 - alpha)
folded into the LayerNorm's gain and bias, so the float function is unchanged (to rounding) while the
int8 MatMul input loses its outlier channels. max|X_j| comes from the calibration clips; alpha is chosen
on them by the summed local int8 error of the affected layers (export/int8/gate.py layer_sensitivity).
Other MatMul inputs (attention output, GELU output) have no per-channel op to fold into: the gate's
fallback handles those.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

ALPHAS = (0.5, 0.65, 0.8)  # SmoothQuant's range; 0.5 is the paper's default for most models


def smoothable_pairs(model) -> list[tuple[object, list[object]]]:
    """(LayerNormalization node, [MatMul nodes reading it]) where every reader is a constant-weight MatMul."""
    inits = {i.name for i in model.graph.initializer}
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    pairs = []
    for node in model.graph.node:
        if node.op_type != "LayerNormalization" or len(node.input) < 3:
            continue
        consumers = readers.get(node.output[0], [])
        if not consumers or any(c.op_type != "MatMul" or c.input[1] not in inits or c.input[0] != node.output[0]
                                for c in consumers):
            continue
        if node.input[1] in inits and node.input[2] in inits:
            pairs.append((node, consumers))
    return pairs


def activation_absmax(fp32_path: Path, names: Sequence[str], feeds: Sequence[dict]) -> dict[str, np.ndarray]:
    """Per-channel max |x| of each tensor in `names` over `feeds` (last axis = channels)."""
    import onnx

    from apclip.export.int8.gate import _temp_model
    from apclip.export.verify import ort_session

    model = onnx.load(str(fp32_path))
    known = {o.name for o in model.graph.output}
    for name in names:
        if name not in known:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    out: dict[str, np.ndarray] = {}
    with _temp_model(model) as path:
        session = ort_session(path)
        for feed in feeds:
            for name, value in zip(names, session.run(list(names), feed)):
                m = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
                out[name] = np.maximum(out[name], m) if name in out else m
    return out


def smooth(fp32_path: Path, dst: Path, feeds: Sequence[dict], alpha: float) -> int:
    """Write the smoothed graph of `fp32_path` to `dst`; returns how many LayerNorm -> MatMul pairs moved."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(fp32_path))
    pairs = smoothable_pairs(model)
    absmax = activation_absmax(fp32_path, [ln.output[0] for ln, _ in pairs], feeds)
    inits = {i.name: i for i in model.graph.initializer}

    values = {name: numpy_helper.to_array(init) for name, init in inits.items()}

    def replace(node, slot: int, value: np.ndarray) -> None:
        # A private initializer per node: the exporter shares equal constants (e.g. every zero LayerNorm bias).
        name = f"{node.input[slot]}.smoothed.{node.name}"
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
        node.input[slot] = name

    for ln, matmuls in pairs:
        weights = [values[m.input[1]] for m in matmuls]  # [K, N] each
        w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)  # [K]
        x_max = absmax[ln.output[0]]
        s = np.power(np.maximum(x_max, 1e-5), alpha) / np.power(np.maximum(w_max, 1e-5), 1.0 - alpha)
        s = np.clip(s, 1e-3, 1e3)
        replace(ln, 1, values[ln.input[1]] / s)
        replace(ln, 2, values[ln.input[2]] / s)
        for m, w in zip(matmuls, weights):
            replace(m, 1, w * s[:, None])
    used = {i for n in model.graph.node for i in n.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    onnx.save(model, str(dst))
    return len(pairs)
