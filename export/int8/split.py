"""Outlier channels computed in float: X W = (X * m) W + X[:, O] W[O, :] (LLM.int8()-style decomposition,
Dettmers et al. 2022, on an ONNX graph).

Trained CLIP ViTs carry a few activation channels far larger than the rest (residual-stream channels through
LayerNorm, a few MLP units after GELU). With one int8 scale per tensor, those channels set the step, and every
other channel keeps a few levels at most. For each quantized MatMul input X, the channels O whose calibration
max |x_j| exceeds RATIO x the median channel's are taken out of the int8 product (X * m, m_j = 0 for j in O)
and computed exactly in float by a MatMul of K = |O| (Gather(X, O) @ W[O, :]); the two are added. The float
function is unchanged (the decomposition is exact); the int8 input's range shrinks to the ordinary channels.
With `alpha`, the same per-channel Mul also carries SmoothQuant for the ordinary channels (x_j / s_j, W's row j
times s_j, s_j >= 1), on every MatMul input (GELU and attention outputs included, where no LayerNorm can
absorb a scale).

Cost: per split input one Mul and one Gather over [tokens, K], a [tokens, |O|] x [|O|, N] float product and one
Add over [tokens, N]: a few percent of the int8 MatMul it relieves (|O| <= MAX_CHANNELS). The side MatMuls are
named `<node>/outlier_channels` and never quantized (static.py excludes them; constant_weight_matmuls skips
them); the int8 MatMul keeps its name, so the gate's fallback still addresses it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

SIDE_SUFFIX = "/outlier_channels"  # names of the float side products (and their helper nodes)
RATIO = 6.0  # a channel whose max |x| is over 6x the median channel's costs the others > 2.5 bits of step
MAX_CHANNELS = 32  # at most this many channels per input go float (keeps the side product a few percent)
ALPHAS = (0.5, 0.7)  # SmoothQuant migration strength on the int8 part, tried in this order
# s_j is kept in [1, 1000]: channels are only ever shrunk. Amplifying a channel that was near zero on the
# calibration clips (s_j < 1) blew the int8 range on other clips (outlier ViT-B/16, dynamic int8, 30 clips:
# min cosine 0.948 with s_j down to 1e-3, 0.9995 with s_j >= 0.5, 0.99984 with s_j >= 1).
SMOOTH_MIN, SMOOTH_MAX = 1.0, 1e3


def is_side_node(name: str) -> bool:
    return SIDE_SUFFIX in name


def outlier_channels(absmax: np.ndarray, ratio: float = RATIO, limit: int = MAX_CHANNELS) -> np.ndarray:
    """Indices (sorted) of the channels whose max |x| is over `ratio` x the median channel's, largest `limit`."""
    floor = ratio * float(np.median(absmax))
    order = np.argsort(-absmax)
    picked = [int(j) for j in order[:limit] if absmax[j] > floor]
    return np.array(sorted(picked), dtype=np.int64)


def split_outliers(fp32_path: Path, dst: Path, feeds: Sequence[dict], *, ratio: float = RATIO,
                   limit: int = MAX_CHANNELS, alpha: float | None = None) -> dict[str, list[int]]:
    """Write `fp32_path` with every constant-weight MatMul's outlier channels computed in float to `dst`.

    feeds: calibration inputs (max |x_j| per channel). Returns {MatMul node: [channels taken out]}."""
    import onnx
    from onnx import helper, numpy_helper

    from apclip.export.int8.smooth import activation_absmax
    from apclip.export.int8.static import constant_weight_matmuls

    model = onnx.load(str(fp32_path))
    nodes = [n for n in constant_weight_matmuls(fp32_path) if not is_side_node(n[0])]
    matmul_only = {n.name for n in model.graph.node if n.op_type == "MatMul"}
    nodes = [n for n in nodes if n[0] in matmul_only]  # Gemm (transB, bias) is not rewritten
    absmax = activation_absmax(fp32_path, list(dict.fromkeys(x for _, x, _ in nodes)), feeds)
    weights = {i.name: i for i in model.graph.initializer}
    position = {n.name: i for i, n in enumerate(model.graph.node)}
    by_name = {n.name: n for n in model.graph.node}
    inserted: dict[int, list] = {}  # insert new nodes before graph position i (keeps topological order)
    masked: dict[str, tuple] = {}  # input -> (masked name, gathered name, channels, per-channel multiplier)
    done: dict[str, list[int]] = {}
    for name, x, w_name in nodes:
        node = by_name[name]
        weight = numpy_helper.to_array(weights[w_name])
        if x not in masked:
            channels = outlier_channels(absmax[x], ratio, limit)
            if not len(channels) and alpha is None:
                continue
            width = len(absmax[x])
            keep = np.ones(width, np.float32)
            if alpha is not None:  # SmoothQuant on the int8 part: x_j / s_j, W_j * s_j
                readers = [numpy_helper.to_array(weights[w]) for _, xx, w in nodes if xx == x]
                w_max = np.max([np.abs(r).max(axis=1) for r in readers], axis=0)
                rest = np.setdiff1d(np.arange(width), channels)
                s = np.power(np.maximum(absmax[x], 1e-5), alpha) / np.power(np.maximum(w_max, 1e-5), 1.0 - alpha)
                s = s / np.exp(np.mean(np.log(s[rest]))) if len(rest) else s  # geometric mean 1: ranges stay put
                # Never amplify a channel much: one that was near zero on the calibration clips may not be on
                # others, and x_j / s_j with a tiny s_j would then blow the int8 range.
                keep = (1.0 / np.clip(s, SMOOTH_MIN, SMOOTH_MAX)).astype(np.float32)
            keep[channels] = 0.0
            base = f"{name}{SIDE_SUFFIX}"
            model.graph.initializer.extend([numpy_helper.from_array(keep, f"{base}/mask"),
                                            numpy_helper.from_array(channels, f"{base}/index")])
            masked[x] = (f"{base}/masked", f"{base}/gathered", channels, keep)
            inserted.setdefault(position[name], []).append(
                helper.make_node("Mul", [x, f"{base}/mask"], [f"{base}/masked"], name=f"{base}/mask_mul"))
            if len(channels):
                inserted[position[name]].append(helper.make_node(
                    "Gather", [x, f"{base}/index"], [f"{base}/gathered"], name=f"{base}/gather", axis=-1))
        masked_name, gathered_name, channels, keep = masked[x]
        main_w = f"{name}{SIDE_SUFFIX}/int8_weight"  # the int8 part: smoothed rows, outlier rows zero
        scale = np.where(keep > 0, 1.0 / np.where(keep > 0, keep, 1.0), 0.0).astype(np.float32)
        model.graph.initializer.append(numpy_helper.from_array((weight * scale[:, None]).astype(np.float32), main_w))
        node.input[1] = main_w
        out = node.output[0]
        node.input[0] = masked_name
        if len(channels):
            side_w = f"{name}{SIDE_SUFFIX}/weight"
            model.graph.initializer.append(numpy_helper.from_array(weight[channels].astype(np.float32), side_w))
            main_out, side_out = f"{name}{SIDE_SUFFIX}/int8_part", f"{name}{SIDE_SUFFIX}/float_part"
            node.output[0] = main_out
            inserted.setdefault(position[name] + 1, []).extend([
                helper.make_node("MatMul", [gathered_name, side_w], [side_out], name=f"{name}{SIDE_SUFFIX}"),
                helper.make_node("Add", [main_out, side_out], [out], name=f"{name}{SIDE_SUFFIX}/add")])
        done[name] = [int(c) for c in channels]
    used = {i for n in model.graph.node for i in n.input} | {i for ns in inserted.values() for n in ns for i in n.input}
    kept = [i for i in model.graph.initializer if i.name in used]  # the replaced weights go
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    ordered = []
    for i, n in enumerate(model.graph.node):
        ordered.extend(inserted.get(i, []))
        ordered.append(n)
    ordered.extend(inserted.get(len(model.graph.node), []))
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    onnx.save(model, str(dst))
    return done
