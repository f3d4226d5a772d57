"""The int8 gate: per-layer sensitivity, then float fallback one group at a time until the held-out
clips agree with fp32 (DESIGN.md: embedding cosine >= 0.999, top-1 agreement >= 99.5%), or refusal.

Sensitivity is measured per quantized MatMul, locally: its fp32 input X (from the calibration clips)
and weight W are fake-quantized with the ranges the quantizer uses (per-tensor activations from the
calibration cache, per-channel symmetric weights) and the error ||XW - Q(X)Q(W)|| / ||XW|| is taken.
That isolates each layer (errors do not pile up from earlier layers) and costs one fp32 run. The gate
itself always runs the real int8 graph in ONNX Runtime against the fp32 graph, so what it passes is
what ships. Graph-agnostic: it only reads MatMul/Gemm nodes with a constant weight.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

MIN_COSINE = 0.999
MIN_AGREEMENT = 0.995
MAX_FLOAT_FRACTION = 0.5  # past half the MatMuls in float, int8 buys too little speed to be worth shipping
GROUPS = 12  # fallback steps over the whole graph at most: a group is ceil(matmuls / 12) layers


@dataclass
class GateFigures:
    """One candidate int8 graph measured on the held-out set."""

    min_cosine: float
    mean_cosine: float
    agreement: float  # fraction of held-out items whose top-1 class matches fp32's
    items: int  # held-out clips (vision) or prompts (text)
    seconds: float  # median time of one held-out item (the first), int8
    float_layers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.min_cosine >= MIN_COSINE and self.agreement >= MIN_AGREEMENT

    def line(self) -> str:
        return (f"min cosine {self.min_cosine:.5f}, mean {self.mean_cosine:.5f}, top-1 agreement "
                f"{self.agreement:.1%} of {self.items}, {len(self.float_layers)} layer(s) float")

    def to_dict(self) -> dict:
        return {"min_cosine": self.min_cosine, "mean_cosine": self.mean_cosine, "top1_agreement": self.agreement,
                "held_out_items": self.items, "seconds_per_item": self.seconds, "float_layers": self.float_layers,
                "thresholds": {"min_cosine": MIN_COSINE, "top1_agreement": MIN_AGREEMENT}, "ok": self.ok}


@dataclass
class GateResult:
    ok: bool
    figures: GateFigures  # of the shipped (or last tried) graph
    first: GateFigures  # with every layer int8
    fp32_seconds: float  # the fp32 graph on the same item
    sensitivity: list[tuple[str, float]]  # (node, local relative error), worst first
    steps: int
    reason: str = ""  # why int8 is refused (empty when ok)
    smoothing: dict = field(default_factory=dict)  # SmoothQuant alpha chosen (static), for the record

    def to_dict(self) -> dict:
        return {"ok": self.ok, "figures": self.figures.to_dict(), "all_int8": self.first.to_dict(),
                "fp32_seconds_per_item": self.fp32_seconds, "fallback_steps": self.steps, "smoothing": self.smoothing,
                "fallback_layers": self.figures.float_layers, "reason": self.reason,
                "sensitivity_worst": [[n, round(e, 6)] for n, e in self.sensitivity[:8]]}


def run_held_out(session, input_name: str, items: Sequence[np.ndarray]) -> tuple[list[np.ndarray], float]:
    """Each held-out item through `session`; also the median time of the first item (3 runs)."""
    outs = [session.run(None, {input_name: x})[0] for x in items]
    times = []
    for _ in range(3):
        t = time.perf_counter()
        session.run(None, {input_name: items[0]})
        times.append(time.perf_counter() - t)
    return outs, float(np.median(times))


def compare(reference: Sequence[np.ndarray], got: Sequence[np.ndarray], top1: Callable[[np.ndarray], int]
            ) -> tuple[float, float, float]:
    """(min cosine, mean cosine, top-1 agreement) of per-item embeddings against fp32's."""
    cosines = [np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
               for a, b in zip(reference, got)]
    flat = np.concatenate([c.ravel() for c in cosines])
    agree = np.mean([top1(a) == top1(b) for a, b in zip(reference, got)])
    return float(flat.min()), float(flat.mean()), float(agree)


def layer_sensitivity(fp32_path: Path, names: Sequence[str], feeds: Sequence[dict], *,
                      activations: str, reduce_range: bool, rows: int = 512, seed: int = 0
                      ) -> list[tuple[str, float]]:
    """(node, local relative error) for each MatMul/Gemm node in `names`, worst first.

    feeds: a few calibration inputs; the activation ranges are their MinMax, as the calibrator's."""
    import onnx
    from onnx import numpy_helper

    from apclip.export.verify import ort_session

    model = onnx.load(str(fp32_path))
    by_name = {n.name: n for n in model.graph.node}
    nodes = [(name, by_name[name].input[0], by_name[name].input[1]) for name in names]  # (node, X, W)
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    transposed = {n.name: any(a.name == "transB" and a.i for a in n.attribute)
                  for n in model.graph.node if n.op_type == "Gemm"}
    known = {o.name for o in model.graph.output}
    wanted = list(dict.fromkeys(a for _, a, _ in nodes))
    for name in wanted:  # expose every quantized MatMul's activation input (value type: any)
        if name not in known:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    with _temp_model(model) as path:
        session = ort_session(path)
        rng = np.random.default_rng(seed)
        ranges = {a: (np.inf, -np.inf) for a in wanted}
        for feed in feeds:  # pass 1: MinMax ranges (kept out of memory: ViT-B/16 activations are large)
            for name, value in zip(wanted, session.run(wanted, feed)):
                ranges[name] = (min(ranges[name][0], float(value.min())), max(ranges[name][1], float(value.max())))
        err = {n: 0.0 for n, _, _ in nodes}
        ref = {n: 0.0 for n, _, _ in nodes}
        for feed in feeds:  # pass 2: each layer's local error on a sample of rows
            values = dict(zip(wanted, session.run(wanted, feed)))
            for node, act, weight in nodes:
                x = values[act].reshape(-1, values[act].shape[-1])  # [rows, K]
                if len(x) > rows:
                    x = x[rng.choice(len(x), rows, replace=False)]
                w = weights[weight].T if transposed.get(node) else weights[weight]  # [K, N]
                y = x @ w
                yq = _fake_quant_activation(x, ranges[act], activations) @ _fake_quant_weight(w, reduce_range)
                err[node] += float(np.sum((y - yq) ** 2))
                ref[node] += float(np.sum(y ** 2))
    scores = [(n, math.sqrt(err[n] / max(ref[n], 1e-30))) for n, _, _ in nodes]
    return sorted(scores, key=lambda item: -item[1])


def _fake_quant_activation(x: np.ndarray, bounds: tuple[float, float], activations: str) -> np.ndarray:
    low, high = min(float(bounds[0]), 0.0), max(float(bounds[1]), 0.0)
    if activations == "int8":  # symmetric, zero point 0
        scale = max(abs(low), abs(high)) / 127.0 or 1.0
        return np.clip(np.round(x / scale), -127, 127) * scale
    scale = (high - low) / 255.0 or 1.0
    zero = np.round(-low / scale)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def _fake_quant_weight(w: np.ndarray, reduce_range: bool) -> np.ndarray:
    qmax = 63.0 if reduce_range else 127.0
    scale = np.abs(w).max(axis=0, keepdims=True) / qmax  # one scale per output channel
    scale[scale == 0] = 1.0
    return np.clip(np.round(w / scale), -qmax, qmax) * scale


def fallback_groups(sensitivity: Sequence[tuple[str, float]], groups: int = GROUPS) -> list[list[str]]:
    """Worst layers first, ceil(n / groups) per step."""
    size = max(1, math.ceil(len(sensitivity) / groups))
    names = [n for n, _ in sensitivity]
    return [names[i:i + size] for i in range(0, len(names), size)]


def run_gate(build: Callable[[list[str]], Path], measure: Callable[[Path, list[str]], GateFigures],
             sensitivity: list[tuple[str, float]], fp32_seconds: float, *, log: Callable[[str], None],
             what: str, max_float_fraction: float = MAX_FLOAT_FRACTION, first: GateFigures | None = None
             ) -> GateResult:
    """Measure the all-int8 graph (unless `first` has its figures), then keep the worst groups float until it
    passes or too much is float.

    build(float_layers) -> int8 graph path; measure(path, float_layers) -> its held-out figures."""
    float_layers: list[str] = []
    if first is None:
        first = measure(build(float_layers), float_layers)
        log(f"int8 {what}: all layers int8: {first.line()}")
    figures = first
    steps = 0
    groups = fallback_groups(sensitivity)
    while not figures.ok:
        if steps >= len(groups) or len(float_layers) + len(groups[steps]) > max_float_fraction * len(sensitivity):
            reason = (f"int8 {what} misses the gate (min cosine >= {MIN_COSINE}, top-1 agreement >= "
                      f"{MIN_AGREEMENT:.1%}) even with {len(float_layers)} of {len(sensitivity)} layers float: "
                      f"{figures.line()}")
            return GateResult(False, figures, first, fp32_seconds, sensitivity, steps, reason)
        float_layers = float_layers + groups[steps]
        steps += 1
        figures = measure(build(float_layers), float_layers)
        log(f"int8 {what}: fallback step {steps}, float: {', '.join(groups[steps - 1])}: {figures.line()}")
    return GateResult(True, figures, first, fp32_seconds, sensitivity, steps)


class _temp_model:
    """A model written to a temporary file for the length of a `with` block."""

    def __init__(self, model):
        self.model = model

    def __enter__(self) -> Path:
        import tempfile

        import onnx

        self.dir = tempfile.TemporaryDirectory(prefix="apclip-int8-")
        path = Path(self.dir.name) / "probe.onnx"
        onnx.save(self.model, str(path))
        return path

    def __exit__(self, *exc) -> None:
        self.dir.cleanup()
