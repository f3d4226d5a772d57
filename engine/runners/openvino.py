"""The OpenVINO backend: the bundle's ONNX graphs compiled by OpenVINO for the CPU (x86 and ARM; Intel
iGPUs and NPUs by device name). The native C++ runtime (CMakeLists.txt, docs/native.md) runs the same
library on the same files, so this backend is also its Python twin.

fp32 compiles vision.onnx with f32 inference precision (CPUs with bf16 units would otherwise round
silently); int8 compiles the bundle's quantized vision.int8.onnx (apclip-export --precision fp32,int8).
OpenVINO's telemetry belongs to its developer tools (ovc, benchmark_app), not to the runtime used here:
nothing is sent and nothing asks for consent here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from apclip.bundle import EMBEDDINGS_OUTPUT, INT8_FILES, TEXT_BATCH, TEXT_FILE, TEXT_INPUT, VISION_FILE, VISION_INPUT, \
    BundleError, Manifest
from apclip.extras import require

from apclip.engine.runners.encoders import (BackendUnavailable, LazyRunner, _default_threads, file_identity,
                                            graph_batch_max)
from apclip.engine.runners.precision import file_precision
from apclip.engine.runners.probes import openvino_reason

EXTRA = "openvino"
DEVICE = "CPU"


class OpenVinoRunner:
    """One compiled OpenVINO model with one input and the `embeddings` output (the EncoderRunner interface)."""

    def __init__(self, path: Path, input_name: str, *, threads: int | None = None, batch_size: int = 32,
                 device: str = DEVICE):
        ov = require("openvino", EXTRA, "the OpenVINO backend")
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.model = ov.Core().compile_model(str(path), device, config)
        except Exception as exc:  # OpenVINO raises its own untyped errors for files it cannot load
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BundleError(f"OpenVINO cannot load {path} on {device} ({first_line}); re-run apclip-export") from None
        self.request = self.model.create_infer_request()
        self.input_name = input_name
        self.name = f"openvino-{device.lower()}"
        self.batch_size = batch_size

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer({self.input_name: np.ascontiguousarray(batch)})
        return self.request.get_tensor(EMBEDDINGS_OUTPUT).data.copy()  # the request reuses its buffer


def openvino_runners(manifest: Manifest, *, threads: int | None = None, batch_size: int = 32,
                     precision: str = "fp32"):
    """(vision, text) runners: vision compiled now, text (only needed for labels not in the bundle) on first use."""
    reason = openvino_reason(manifest, precision) if precision in ("fp32", "int8") else \
        f"openvino runs fp32 or int8, not {precision}"
    if reason:
        raise BackendUnavailable(f"backend openvino ({precision}): {reason}")
    threads = _default_threads(threads)
    vision_file = VISION_FILE if precision == "fp32" else INT8_FILES[VISION_FILE]
    vision = OpenVinoRunner(manifest.file(vision_file), VISION_INPUT, threads=threads,
                            batch_size=graph_batch_max(manifest, "vision", batch_size))
    if precision != "fp32":
        vision.name = f"{vision.name}-{precision}"
    text_file = INT8_FILES[TEXT_FILE] if precision == "int8" and manifest.has(INT8_FILES[TEXT_FILE]) else TEXT_FILE

    def build_text():
        from apclip.engine.runners.text_trim import TrimmedTextRunner, token_axis_is_dynamic

        runner = OpenVinoRunner(manifest.file(text_file), TEXT_INPUT, threads=threads, batch_size=TEXT_BATCH)
        return TrimmedTextRunner(runner) if token_axis_is_dynamic(manifest) else runner

    # what the label cache keys this runner's rows by (OpenVINO's kernels differ from ONNX Runtime's)
    identity = file_identity(manifest, text_file, "openvino-cpu", file_precision(text_file))
    return vision, LazyRunner(build_text, vision.name, TEXT_BATCH, identity)
