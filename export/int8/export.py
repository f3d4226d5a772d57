"""The `--precision int8` step of apclip-export: quantize, gate (with float fallback), verify, keep or refuse.

Runs after the fp32 files passed their own verification (they are the source and the reference). Each
encoder (vision, then text) goes through the same steps:
1. quantize every constant-weight MatMul (static QDQ calibrated on the calibration clips / prompts, or
   dynamic; export/int8/static.py, quantize.py);
2. the gate (export/int8/gate.py) compares it with the fp32 graph on held-out clips / prompts; while it
   misses, the most sensitive layers go back to float, one group at a time;
3. the shipped graph is checked once more against the PyTorch reference (export/int8/verify.py).
A graph that cannot pass is not written; the fp32 bundle still ships, and the record says why.
Returns the manifest's `precisions.int8` record.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from apclip.bundle import INT8_FILES, TEXT_FILE, TEXT_INPUT, VISION_FILE, VISION_INPUT

from apclip.export.int8.calibrate import CalibrationSet
from apclip.export.int8.quantize import QuantizationSettings, quantize_encoder
from apclip.export.int8.static import EXACT_X64_SESSION_CONFIG, StaticSettings, constant_weight_matmuls, quantize_qdq
from apclip.export.verify import VerificationReport

# static: calibrated QDQ (explicit, TensorRT takes it); dynamic: activation ranges measured per batch at run
# time; split: outlier channels computed in float, SmoothQuant on the rest, dynamic int8 (export/int8/split.py);
# auto (default): the first of static, dynamic, split whose all-int8 graph passes the gate, else the float
# fallback on the best unchanged graph and the best other.
METHODS = ("auto", "static", "dynamic", "split")
TEXT_BATCH = 64  # prompts per calibration feed
SENSITIVITY_FEEDS = 2  # calibration clips (or prompt batches) the per-layer sensitivity is measured on


def add_int8_encoders(model, work: Path, matrix, video_pixels: np.ndarray | None, *, verify: bool,
                      log: Callable[[str], None], calibration: CalibrationSet, method: str = "auto",
                      min_cosine: float | None = None, graph=None) -> dict:
    """graph: the bundle's apclip.bundle.VisionGraph (None: per-frame); clip-level graphs get whole clips."""
    from apclip.export.int8.verify import verify_int8_text, verify_int8_vision

    settings = QuantizationSettings() if method in ("dynamic", "split") else StaticSettings()
    record: dict = {"method": method, "quantization": settings.to_dict(), "calibration": calibration.to_dict(),
                    "session_config": dict(EXACT_X64_SESSION_CONFIG), "session_configs": {}, "weight_bits": {}, "files": {},
                    "methods": {},
                    "quantized_nodes": {}, "gate": {}, "candidates": {}, "outlier_channels": {},
                    "fallback_layers": {}, "verification": {}, "refused": {}}
    log(f"int8: {method} quantization; calibration: {calibration.describe()} (sha256 {calibration.sha256[:12]}...)")
    with tempfile.TemporaryDirectory(prefix="apclip-int8-cache-") as cache:
        for fp32_name in (VISION_FILE, TEXT_FILE):
            name = INT8_FILES[fp32_name]
            target = work / name
            encoder = fp32_name.split(".")[0]
            verified: dict = {}

            def accept(candidate, path=target, fp32_name=fp32_name) -> bool:
                """The PyTorch check of a graph that passed the gate (a miss sends the search on)."""
                if not verify:
                    return True
                config = candidate.session_config()
                if fp32_name == VISION_FILE:
                    report = verify_int8_vision(model, path, matrix, video_pixels, min_cosine=min_cosine,
                                                session_config=config, graph=graph)
                else:
                    report = verify_int8_text(model, path, matrix, trim=True, min_cosine=min_cosine,
                                              session_config=config)
                verified["report"] = report
                if not report.ok:
                    log(f"int8 {encoder}: {candidate.label()} passed the gate but not the check against PyTorch:\n"
                        f"{report.table()}\ntrying the next candidate")
                return report.ok

            try:
                chosen, gate, counts, tried = _quantize_and_gate(work / fp32_name, target, encoder, matrix,
                                                                 calibration, method, Path(cache) / encoder, log, graph,
                                                                 accept=accept)
            except Exception as exc:  # the quantizer raises untyped errors; int8 is optional, fp32 ships
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                _refuse(record, name, target, f"quantization failed: {first}", log)
                continue
            if chosen is None:
                _refuse(record, name, target, "no int8 candidate", log)
                continue
            record["candidates"][name] = tried
            if "report" in verified:
                record["verification"][name] = verified["report"].to_dict()
            if not gate.ok or (verify and not verified["report"].ok):
                record["gate"][f"{name} ({chosen.method})"] = gate.to_dict()
                why = "failed the int8 parity thresholds:\n" + verified["report"].table() if gate.ok else gate.reason
                _refuse(record, name, target, why, log)
                continue
            record["gate"][f"{name} ({chosen.method})"] = gate.to_dict()
            record["methods"][name] = chosen.method
            record["session_configs"][name] = chosen.session_config()
            record["weight_bits"][name] = chosen.weight_bits
            record["quantized_nodes"][name] = counts
            record["fallback_layers"][name] = gate.figures.float_layers
            if chosen.channels:
                record["outlier_channels"][name] = {"count": chosen.outlier_count,
                                                    "inputs": len(chosen.channels), "alpha": chosen.alpha}
            speed = gate.fp32_seconds / max(gate.figures.seconds, 1e-9)
            all_int8 = gate.fp32_seconds / max(gate.first.seconds, 1e-9)
            kept = ", ".join(gate.figures.float_layers) or "none"
            log(f"int8 {encoder}: {chosen.label()} passes the gate: {gate.figures.line()}; layers kept float: "
                f"{kept}; {speed:.2f}x fp32's speed on this CPU (all layers int8: {all_int8:.2f}x)")
            if speed < 1.0:
                log(f"warning: int8 {encoder} ran slower than fp32 on the held-out item here ({speed:.2f}x): small "
                    "models gain little from int8 on CPUs without VNNI; --precision fp32 may serve you better")
            record["files"][encoder] = name
    if not verify:
        record["verification"] = None
        log("warning: int8 files were not checked against PyTorch (--no-verify); the int8 gate still ran")
    return record


@dataclass
class Candidate:
    """One way to quantize an encoder: a float graph (the original, a SmoothQuant-folded one, or one with its
    outlier channels split off) and the quantizer that turns it into int8."""

    method: str  # static (calibrated QDQ) | dynamic | split (outlier channels float, SmoothQuant, dynamic int8)
    source: Path  # the float graph quantized
    cache: Path | None = None  # static: the calibration cache of `source`
    alpha: float | None = None  # SmoothQuant alpha (static: folded into LayerNorm; split: on the int8 part)
    channels: dict = field(default_factory=dict)  # split: {MatMul: [channels computed in float]}
    reduce_range: bool = False  # 7-bit weights, run without the exact-sum option (see seven_bit_is_faster)
    first: object = None  # GateFigures of the all-int8 graph
    error: str = ""  # why quantizing it failed (then `first` is None)
    rejected: bool = False  # passed the gate, failed the check against PyTorch

    @property
    def outlier_count(self) -> int:
        return sum(len(c) for c in self.channels.values())

    @property
    def weight_bits(self) -> int:
        return 7 if self.reduce_range else 8

    def session_config(self) -> dict:
        return {} if self.reduce_range else dict(EXACT_X64_SESSION_CONFIG)

    def label(self) -> str:
        extra = f", SmoothQuant alpha {self.alpha}" if self.alpha is not None else ""
        if self.reduce_range:
            extra += ", 7-bit weights"
        if self.method == "split":
            extra += f", {self.outlier_count} outlier channels float"
        return f"{self.method}{extra}"

    def record(self) -> dict:
        return {"method": self.method, "alpha": self.alpha, "label": self.label(), "weight_bits": self.weight_bits,
                "outlier_channels": self.outlier_count,
                "all_int8": self.first.to_dict() if self.first is not None else None, "error": self.error or None,
                "rejected_by_pytorch_check": self.rejected}


def _candidates(method: str) -> tuple[str, ...]:
    """In order of preference: static first (explicit QDQ: TensorRT takes it too), plain dynamic next (no
    graph changes), then outlier channels in float (exact, but a few extra ops per MatMul)."""
    return ("static", "dynamic", "split") if method == "auto" else (method,)


def _quantize_and_gate(src: Path, dst: Path, encoder: str, matrix, calibration: CalibrationSet, method: str,
                       cache: Path, log, vision_graph=None, accept: Callable[["Candidate"], bool] = lambda c: True):
    """(chosen Candidate, its GateResult or None, quantized node counts, every candidate's record).

    Every candidate is first measured with all layers int8; the first (in preference order) that passes the
    gate and `accept` (the check against PyTorch) ships. When none does, the float fallback runs on the best
    unchanged graph, then on the best other (by held-out agreement, then min cosine); the first to pass both
    ships. Otherwise the last rejected (or missed) one is returned for the refusal. `dst` holds the chosen
    graph when it passed. Raises QuantizationFailed when every candidate's quantizer raised."""
    from apclip.export.int8.gate import GateFigures, compare, layer_sensitivity, run_gate, run_held_out
    from apclip.export.verify import ort_session

    cache.mkdir(parents=True, exist_ok=True)
    if encoder == "vision":
        from apclip.export.vision_graph import graph_input

        shaped = (lambda c: graph_input(c, vision_graph)) if vision_graph is not None else (lambda c: c)  # noqa: E731
        input_name, feeds = VISION_INPUT, [{VISION_INPUT: shaped(c)} for c in calibration.clips]
        held_out = [shaped(c) for c in calibration.held_out]
    else:
        tokens = calibration.tokens
        input_name = TEXT_INPUT
        feeds = [{TEXT_INPUT: tokens[i:i + TEXT_BATCH]} for i in range(0, len(tokens), TEXT_BATCH)]
        held_out = [calibration.held_out_tokens]
    classes = matrix.embeddings.astype(np.float64)

    def top1(embeddings: np.ndarray) -> int:  # [n, E] of one clip (or one prompt) -> MAKA top-1 class
        from apclip.scoring import maka_score

        unit = embeddings.astype(np.float64) / np.linalg.norm(embeddings, axis=-1, keepdims=True)
        return int(maka_score(unit[None], classes, matrix.counts).argmax())

    def per_item(outs: list[np.ndarray]) -> list[np.ndarray]:  # text: each prompt is an item
        if encoder == "vision":  # clip-level graphs: [B, T, E] or [B, E] -> [rows, E]
            return [o.reshape(-1, o.shape[-1]) for o in outs]
        return [row[None] for row in outs[0]]

    reference, fp32_seconds = run_held_out(ort_session(src), input_name, held_out)
    reference = per_item(reference)
    counts: dict = {}

    def build(candidate: Candidate, float_layers: list[str]) -> Path:
        counts.clear()
        if candidate.method == "static":
            settings = StaticSettings(exclude_nodes=tuple(float_layers))
            counts.update(quantize_qdq(candidate.source, dst, feeds, settings, candidate.cache))
        else:
            settings = QuantizationSettings(exclude_nodes=tuple(float_layers), reduce_range=candidate.reduce_range)
            counts.update(quantize_encoder(candidate.source, dst, settings))
        return dst

    def measure(candidate: Candidate, path: Path, float_layers: list[str]) -> GateFigures:
        outs, seconds = run_held_out(ort_session(path, candidate.session_config()), input_name, held_out)
        low, mean, agreement = compare(reference, per_item(outs), top1)
        return GateFigures(low, mean, agreement, len(reference), seconds, list(float_layers))

    def tried(candidate: Candidate) -> Candidate:
        try:
            candidate.first = measure(candidate, build(candidate, []), [])
        except Exception as exc:  # the quantizer raises untyped errors: the next candidate may still work
            text = str(exc).strip()
            candidate.error = text.splitlines()[0] if text else type(exc).__name__
            log(f"int8 {encoder}: {candidate.label()}: quantization failed: {candidate.error}")
            return candidate
        log(f"int8 {encoder}: {candidate.label()}, all layers int8: {candidate.first.line()}")
        return candidate

    measured: list[Candidate] = []
    nodes = [name for name, _, _ in constant_weight_matmuls(src)]

    def gate_of(candidate: Candidate):
        sensitivity = layer_sensitivity(candidate.source, nodes, feeds[:SENSITIVITY_FEEDS],
                                        activations="int8" if candidate.method == "static" else "uint8",
                                        reduce_range=(StaticSettings().reduce_range if candidate.method == "static"
                                                      else candidate.reduce_range))
        result = run_gate(lambda layers: build(candidate, layers),
                          lambda path, layers: measure(candidate, path, layers), sensitivity, fp32_seconds, log=log,
                          what=f"{encoder} ({candidate.label()})", first=candidate.first)
        result.smoothing = {"alpha": candidate.alpha}
        return result

    rejected = None  # the last candidate that passed the gate but not `accept`
    for kind in _candidates(method):
        for candidate in _method_candidates(kind, src, cache, feeds, log, encoder, tried):
            measured.append(candidate)
            if candidate.first is not None and candidate.first.ok:
                gate = gate_of(candidate)  # passes at once (no fallback step); adds the sensitivity to the record
                build(candidate, [])
                if accept(candidate):
                    return candidate, gate, dict(counts), [c.record() for c in measured]
                candidate.rejected = True
                rejected = (candidate, gate)
    usable = [c for c in measured if c.first is not None]
    if not usable:
        failures: dict[str, list[str]] = {}
        for c in measured:
            failures.setdefault(c.error, []).append(c.method)
        raise QuantizationFailed("; ".join(f"{error} ({', '.join(dict.fromkeys(methods))})"
                                           for error, methods in failures.items()) or "no int8 candidate")
    if len(usable) > 1:
        log(f"int8 {encoder}: no candidate passes with all layers int8; keeping the worst layers float in the best")
    # The unchanged graph first (smoothing that cannot help all-int8 can also stand in the fallback's way: the
    # one-outlier-layer test model passes plain with 2 float layers, smoothed not with 4), then the best other.
    best = sorted([c for c in usable if not c.first.ok], key=lambda c: (-c.first.agreement, -c.first.min_cosine))
    ranked = [c for c in best if c.alpha is None and not c.channels][:1]
    ranked += [c for c in best if c not in ranked][:2 - len(ranked)]
    missed = None
    for candidate in ranked:
        gate = gate_of(candidate)
        if gate.ok:
            build(candidate, gate.figures.float_layers)
            if accept(candidate):
                return candidate, gate, dict(counts), [c.record() for c in measured]
            candidate.rejected = True
            rejected = (candidate, gate)
        else:
            missed = (candidate, gate)
    return (*(rejected or missed), dict(counts), [c.record() for c in measured])


class QuantizationFailed(Exception):
    """Every candidate's quantizer raised: the message says what each one said."""


def seven_bit_is_faster() -> bool:
    """Whether 7-bit weight candidates are worth measuring (after the 8-bit ones): x86 CPUs without VNNI
    (AVX2 only), where ONNX Runtime's u8s8 kernels add pairs of products in int16 and saturate with full
    int8 weights, so 8-bit files run on the exact but slower u8u8 kernels (session.x64quantprecision=1); with 7-bit weights (reduce_range) no pair sum can saturate
    (2 x 255 x 64 < 32768) and the fast u8s8 kernels are exact. Measured on this project's AMD EPYC (AVX2):
    one [394, 768] x [768, 3072] MatMul ran u8s8 2.12x fp32, u8u8 1.65x. VNNI sums in int32: 8 bits there."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and "vnni" not in flags


def _method_candidates(kind: str, src: Path, cache: Path, feeds, log, what: str, tried):
    """Yield the measured candidates of one method, most plain first; stops being iterated once one passes."""
    # 8-bit (exact sums) first: 7-bit weights are faster without VNNI, but on the outlier ViT-B/16 the 7-bit split
    # graph passed the 6 held-out clips (min cosine 0.99936) and fell to 0.972 on one frame of 200 unseen clips,
    # where the 8-bit one held 0.99926 (docs/int8.md). Keeping the answers comes first.
    widths = (False, True) if seven_bit_is_faster() else (False,)
    if kind == "dynamic":
        for reduce_range in widths:
            yield tried(Candidate("dynamic", src, reduce_range=reduce_range))
        return
    if kind == "split":
        from apclip.export.int8.split import ALPHAS, split_outliers

        for alpha in ALPHAS:
            path = cache / f"split-{alpha}.onnx"
            channels = split_outliers(src, path, feeds[:8], alpha=alpha)
            for reduce_range in widths:
                yield tried(Candidate("split", path, alpha=alpha, channels=channels, reduce_range=reduce_range))
        return
    plain = tried(Candidate("static", src, cache / "static.calibration.json"))
    yield plain
    from apclip.export.int8.smooth import ALPHAS, smooth

    scores = {}
    for alpha in ALPHAS:  # SmoothQuant folded into the LayerNorms: the all-int8 graph of each alpha
        path = cache / f"smoothed-{alpha}.onnx"
        if not smooth(src, path, feeds[:8], alpha):
            return  # nothing to migrate
        candidate = tried(Candidate("static", path, cache / f"smoothed-{alpha}.calibration.json", alpha=alpha))
        scores[str(alpha)] = round(candidate.first.min_cosine, 6) if candidate.first is not None else None
        if len(scores) == len(ALPHAS) or (candidate.first is not None and candidate.first.ok):
            log(f"int8 {what}: SmoothQuant all-int8 held-out min cosine by alpha {scores}")
        yield candidate


def _refuse(record: dict, name: str, target: Path, reason: str, log) -> None:
    target.unlink(missing_ok=True)
    record["refused"][name] = reason.splitlines()[0]
    log(f"{name} not written: {reason}; the fp32 bundle is still exported")


def int8_report(record: dict | None) -> VerificationReport | None:
    """All int8 verification rows as one report (for the CLI summary)."""
    if not record or not record.get("verification"):
        return None
    from apclip.export.verify import Check

    checks = [Check(**c) for report in record["verification"].values() for c in report["checks"]]
    return VerificationReport(checks)
