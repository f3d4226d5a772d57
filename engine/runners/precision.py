"""Which encoder files a precision runs, and the ONNX Runtime text runner that cuts at the last EOT.

fp32: vision.onnx / text.onnx. int8: vision.int8.onnx (required) and text.int8.onnx (used when the
export kept it; a text file refused by its parity check leaves run-time labels on text.onnx). The
class matrix is always the fp32 one compiled at export.
"""
from __future__ import annotations

from apclip.bundle import INT8_FILES, PRECISIONS, TEXT_BATCH, TEXT_FILE, TEXT_INPUT, VISION_FILE, Manifest

from apclip.engine.runners.encoders import BackendUnavailable, EncoderIdentity, OrtRunner
from apclip.engine.runners.text_trim import TrimmedTextRunner, token_axis_is_dynamic


class PrecisionUnavailable(BackendUnavailable):
    pass


def int8_missing(manifest: Manifest) -> str | None:
    """None when the bundle has int8 encoders, else why not and how to get them (one line)."""
    if manifest.has(INT8_FILES[VISION_FILE]):
        return None
    refused = (((manifest.raw.get("precisions") or {}).get("int8") or {}).get("refused") or {})
    why = f" (export refused it: {refused[INT8_FILES[VISION_FILE]]})" if INT8_FILES[VISION_FILE] in refused else ""
    return (f"bundle {manifest.path} has no int8 encoders ({INT8_FILES[VISION_FILE]}){why}; re-export it with apclip-export --precision "
            f"fp32,int8, or use --precision fp32")


def check_precision(precision: str, manifest: Manifest) -> None:
    """The ONNX files of `precision` are in the bundle (which backend runs which precision: engine/runners/table.py)."""
    if precision not in PRECISIONS:
        raise PrecisionUnavailable(f"ONNX Runtime runs {', '.join(PRECISIONS)}, not {precision!r}")
    missing = int8_missing(manifest) if precision == "int8" else None
    if missing:
        raise PrecisionUnavailable(missing)


def encoder_files(manifest: Manifest, precision: str) -> tuple[str, str]:
    """(vision file, text file) the runners load for `precision` (check_precision first)."""
    if precision == "fp32":
        return VISION_FILE, TEXT_FILE
    text = INT8_FILES[TEXT_FILE] if manifest.has(INT8_FILES[TEXT_FILE]) else TEXT_FILE
    return INT8_FILES[VISION_FILE], text


def session_config(manifest: Manifest, precision: str, file: str | None = None) -> dict[str, str]:
    """ONNX Runtime session options the export gated an int8 file with (`precisions.int8.session_configs`
    per file, else `session_config`: e.g. exact integer sums on CPUs without VNNI, none for 7-bit weights);
    the int8 files must run with them to give its figures. fp32 files take none."""
    if precision == "fp32" or (file is not None and file_precision(file) == "fp32"):
        return {}
    record = ((manifest.raw.get("precisions") or {}).get(precision) or {})
    per_file = record.get("session_configs") or {}
    config = per_file[file] if file in per_file else record.get("session_config")
    return {str(k): str(v) for k, v in (config or {}).items()}


def file_precision(file: str) -> str:
    """The precision of a bundle encoder file (int8 for the quantized copies, else fp32)."""
    return "int8" if file in INT8_FILES.values() else "fp32"


def text_runner(manifest: Manifest, file: str, *, cuda: bool, threads: int | None, batch_size: int = TEXT_BATCH,
                identity: EncoderIdentity | None = None, session_config: dict[str, str] | None = None):
    """OrtRunner on `file`, wrapped to cut batches after their last EOT when its token axis is dynamic
    (bundles exported before the dynamic axis keep their fixed [M, 77] input)."""
    runner = OrtRunner(manifest.file(file), TEXT_INPUT, cuda=cuda, threads=threads, batch_size=batch_size,
                       identity=identity, session_config=session_config)
    shape = runner.session.get_inputs()[0].shape
    return TrimmedTextRunner(runner) if token_axis_is_dynamic(manifest, shape) else runner
