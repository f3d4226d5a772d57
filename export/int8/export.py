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
from pathlib import Path
from typing import Callable

import numpy as np

from apclip.bundle import INT8_FILES, TEXT_FILE, TEXT_INPUT, VISION_FILE, VISION_INPUT

from apclip.export.int8.calibrate import CalibrationSet
from apclip.export.int8.quantize import QuantizationSettings, quantize_encoder
from apclip.export.int8.static import EXACT_X64_SESSION_CONFIG, StaticSettings, constant_weight_matmuls, quantize_qdq
from apclip.export.verify import VerificationReport

# static: calibrated QDQ (explicit, TensorRT takes it); dynamic: activation ranges measured per batch at run
# time; auto (default): static, and dynamic for an encoder whose static graph cannot pass the gate.
METHODS = ("auto", "static", "dynamic")
TEXT_BATCH = 64  # prompts per calibration feed
SENSITIVITY_FEEDS = 2  # calibration clips (or prompt batches) the per-layer sensitivity is measured on


def add_int8_encoders(model, work: Path, matrix, video_pixels: np.ndarray | None, *, verify: bool,
                      log: Callable[[str], None], calibration: CalibrationSet, method: str = "auto",
                      min_cosine: float | None = None, graph=None) -> dict:
    """graph: the bundle's apclip.bundle.VisionGraph (None: per-frame); clip-level graphs get whole clips."""
    from apclip.export.int8.verify import verify_int8_text, verify_int8_vision

    settings = QuantizationSettings() if method == "dynamic" else StaticSettings()
    record: dict = {"method": method, "quantization": settings.to_dict(), "calibration": calibration.to_dict(),
                    "session_config": dict(EXACT_X64_SESSION_CONFIG), "files": {}, "methods": {},
                    "quantized_nodes": {}, "gate": {}, "fallback_layers": {}, "verification": {}, "refused": {}}
    log(f"int8: {method} quantization; calibration: {calibration.describe()} (sha256 {calibration.sha256[:12]}...)")
    with tempfile.TemporaryDirectory(prefix="apclip-int8-cache-") as cache:
        for fp32_name in (VISION_FILE, TEXT_FILE):
            name = INT8_FILES[fp32_name]
            target = work / name
            encoder = fp32_name.split(".")[0]
            tries = ("static", "dynamic") if method == "auto" else (method,)
            failures = []
            for used in tries:
                try:
                    gate, counts = _quantize_and_gate(work / fp32_name, target, encoder, matrix, calibration, used,
                                                      Path(cache), log, graph)
                except Exception as exc:  # the quantizer raises untyped errors; int8 is optional, fp32 ships
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    failures.append(f"quantization failed: {first}")
                    continue
                record["gate"][f"{name} ({used})"] = gate.to_dict()
                if gate.ok:
                    break
                failures.append(f"{used}: {gate.reason}")
                if used != tries[-1]:
                    log(f"int8 {encoder}: {used} int8 cannot pass the gate; trying {tries[tries.index(used) + 1]}")
            else:
                _refuse(record, name, target, "; ".join(failures), log)
                continue
            record["methods"][name] = used
            record["quantized_nodes"][name] = counts
            record["fallback_layers"][name] = gate.figures.float_layers
            speed = gate.fp32_seconds / max(gate.figures.seconds, 1e-9)
            all_int8 = gate.fp32_seconds / max(gate.first.seconds, 1e-9)
            kept = ", ".join(gate.figures.float_layers) or "none"
            log(f"int8 {encoder}: passes the gate: {gate.figures.line()}; layers kept float: {kept}; "
                f"{speed:.2f}x fp32's speed on this CPU (all layers int8: {all_int8:.2f}x)")
            if verify:
                config = record["session_config"]
                if fp32_name == VISION_FILE:
                    report = verify_int8_vision(model, target, matrix, video_pixels, min_cosine=min_cosine,
                                                session_config=config, graph=graph)
                else:
                    report = verify_int8_text(model, target, matrix, trim=True, min_cosine=min_cosine,
                                              session_config=config)
                record["verification"][name] = report.to_dict()
                if not report.ok:
                    _refuse(record, name, target, "failed the int8 parity thresholds:\n" + report.table(), log)
                    continue
            record["files"][encoder] = name
    if not verify:
        record["verification"] = None
        log("warning: int8 files were not checked against PyTorch (--no-verify); the int8 gate still ran")
    return record


def _quantize_and_gate(src: Path, dst: Path, encoder: str, matrix, calibration: CalibrationSet, method: str,
                       cache: Path, log, vision_graph=None):
    """(GateResult, quantized node counts) of one encoder; `dst` holds the last graph built."""
    from apclip.export.int8.gate import GateFigures, compare, layer_sensitivity, run_gate, run_held_out
    from apclip.export.verify import ort_session

    config = dict(EXACT_X64_SESSION_CONFIG)
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
    graph = {"src": src, "cache": cache / f"{encoder}.calibration.json"}  # what build() quantizes

    def build(float_layers: list[str]) -> Path:
        counts.clear()
        if method == "static":
            settings = StaticSettings(exclude_nodes=tuple(float_layers))
            counts.update(quantize_qdq(graph["src"], dst, feeds, settings, graph["cache"]))
        else:
            counts.update(quantize_encoder(src, dst, QuantizationSettings(exclude_nodes=tuple(float_layers))))
        return dst

    def measure(path: Path, float_layers: list[str]) -> GateFigures:
        outs, seconds = run_held_out(ort_session(path, config), input_name, held_out)
        low, mean, agreement = compare(reference, per_item(outs), top1)
        return GateFigures(low, mean, agreement, len(reference), seconds, list(float_layers))

    nodes = [name for name, _, _ in constant_weight_matmuls(src)]
    activations = StaticSettings().activations if method == "static" else "uint8"

    def gate_of(source: Path, cache_file: Path, smoothing: dict):
        graph["src"], graph["cache"] = source, cache_file
        sensitivity = layer_sensitivity(source, nodes, feeds[:SENSITIVITY_FEEDS], activations=activations,
                                        reduce_range=method == "static" and StaticSettings().reduce_range)
        label = f"{encoder} ({method}{', SmoothQuant alpha ' + str(smoothing['alpha']) if smoothing['alpha'] else ''})"
        result = run_gate(build, measure, sensitivity, fp32_seconds, log=log, what=label)
        result.smoothing = smoothing
        return result, dict(counts), (source, cache_file)

    # Unsmoothed first; with SmoothQuant (the alpha whose all-int8 graph does best on the held-out clips) as the
    # second candidate when the first needs any float fallback. Fewest float layers wins; a pass beats a miss.
    results = [gate_of(src, graph["cache"], {"alpha": None})]
    if method == "static" and not (results[0][0].ok and not results[0][0].figures.float_layers):
        choice = _choose_smoothing(src, build, measure, feeds, graph, cache / encoder, log, what=encoder)
        if choice is not None:
            results.append(gate_of(choice[1], choice[2], choice[0]))
    gate, built, (graph["src"], graph["cache"]) = min(
        results, key=lambda r: (not r[0].ok, len(r[0].figures.float_layers)))
    if gate.ok and len(results) > 1 and results[-1][0] is not gate:  # dst holds the last graph built: redo
        built = {}
        build(gate.figures.float_layers)
        built = dict(counts)
    return gate, built


def _choose_smoothing(source: Path, build, measure, feeds, graph: dict, folder: Path, log, what: str):
    """(record, smoothed graph, its calibration cache) of the SmoothQuant alpha whose all-int8 graph does best
    on the held-out clips (min cosine, then agreement), or None when no LayerNorm feeds a MatMul."""
    from apclip.export.int8.smooth import ALPHAS, smooth

    folder.mkdir(parents=True, exist_ok=True)
    scores, best = {}, None
    for alpha in ALPHAS:
        path = folder / f"smoothed-{alpha}.onnx"
        if not smooth(source, path, feeds[:8], alpha):
            return None  # nothing to migrate
        graph["src"], graph["cache"] = path, folder / f"smoothed-{alpha}.calibration.json"
        figures = measure(build([]), [])
        scores[str(alpha)] = {"min_cosine": round(figures.min_cosine, 6), "top1_agreement": figures.agreement}
        key = (figures.ok, figures.min_cosine, figures.agreement)
        if best is None or key > best[0]:
            best = (key, alpha, path, graph["cache"])
    log(f"int8 {what}: SmoothQuant all-int8 held-out min cosine by alpha "
        f"{ {k: v['min_cosine'] for k, v in scores.items()} }: trying alpha {best[1]}")
    return {"alpha": best[1], "held_out_by_alpha": scores}, best[2], best[3]


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
