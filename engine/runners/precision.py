"""Which encoder files a precision runs, and the ONNX Runtime text runner that cuts at the last EOT.

fp32: vision.onnx / text.onnx. int8: vision.int8.onnx (required) and text.int8.onnx (used when the
export kept it; a text file refused by its parity check leaves run-time labels on text.onnx). The
class matrix is always the fp32 one compiled at export.
"""
from __future__ import annotations

from apclip.bundle import INT8_FILES, PRECISIONS, TEXT_FILE, TEXT_INPUT, VISION_FILE, Manifest

from apclip.engine.runners.encoders import BackendUnavailable, OrtRunner
from apclip.engine.runners.text_trim import TrimmedTextRunner, token_axis_is_dynamic

INT8_BACKENDS = ("ort",)  # MLAS's u8s8 kernels are CPU kernels


class PrecisionUnavailable(BackendUnavailable):
    pass


def check_precision(precision: str, backend: str, manifest: Manifest) -> None:
    if precision not in PRECISIONS:
        raise PrecisionUnavailable(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return
    if backend not in INT8_BACKENDS:
        raise PrecisionUnavailable(f"--precision {precision} runs on --backend ort (CPU), not {backend}")
    if not manifest.has(INT8_FILES[VISION_FILE]):
        refused = (((manifest.raw.get("precisions") or {}).get("int8") or {}).get("refused") or {})
        why = f" (export refused it: {refused[INT8_FILES[VISION_FILE]]})" if INT8_FILES[VISION_FILE] in refused else ""
        raise PrecisionUnavailable(f"bundle {manifest.path} has no int8 encoders{why}; re-export it with "
                                   f"apclip-export --precision fp32,int8, or use --precision fp32")


def encoder_files(manifest: Manifest, precision: str) -> tuple[str, str]:
    """(vision file, text file) the runners load for `precision` (check_precision first)."""
    if precision == "fp32":
        return VISION_FILE, TEXT_FILE
    text = INT8_FILES[TEXT_FILE] if manifest.has(INT8_FILES[TEXT_FILE]) else TEXT_FILE
    return INT8_FILES[VISION_FILE], text


def session_config(manifest: Manifest, precision: str) -> dict[str, str]:
    """ONNX Runtime session options the export gated the int8 files with (`precisions.int8.session_config`,
    e.g. exact integer sums on CPUs without VNNI); the int8 files must run with them to give its figures."""
    if precision == "fp32":
        return {}
    record = ((manifest.raw.get("precisions") or {}).get(precision) or {})
    return {str(k): str(v) for k, v in (record.get("session_config") or {}).items()}


def text_runner(manifest: Manifest, file: str, *, cuda: bool, threads: int | None, batch_size: int = 256,
                session_config: dict[str, str] | None = None):
    """OrtRunner on `file`, wrapped to cut batches after their last EOT when its token axis is dynamic
    (bundles exported before the dynamic axis keep their fixed [M, 77] input)."""
    runner = OrtRunner(manifest.file(file), TEXT_INPUT, cuda=cuda, threads=threads, batch_size=batch_size,
                       session_config=session_config)
    shape = runner.session.get_inputs()[0].shape
    return TrimmedTextRunner(runner) if token_axis_is_dynamic(manifest, shape) else runner
