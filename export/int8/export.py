"""The `--precision int8` step of apclip-export: quantize, verify, keep or refuse each encoder.

Runs after the fp32 files passed their own verification (they are the source and the reference).
Returns the manifest's `precisions.int8` record; refused files are deleted before the bundle is
renamed into place, so a bundle never holds an int8 file that failed its thresholds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from apclip.bundle import INT8_FILES, TEXT_FILE, VISION_FILE

from apclip.export.int8.quantize import QuantizationSettings, quantize_encoder
from apclip.export.verify import VerificationReport


def add_int8_encoders(model, work: Path, matrix, video_pixels: np.ndarray | None, *, verify: bool,
                      log: Callable[[str], None], settings: QuantizationSettings = QuantizationSettings(),
                      min_cosine: float | None = None, graph=None) -> dict:
    from apclip.export.int8.verify import verify_int8_text, verify_int8_vision

    record: dict = {"quantization": settings.to_dict(), "files": {}, "quantized_nodes": {},
                    "verification": {}, "refused": {}}
    for fp32_name in (VISION_FILE, TEXT_FILE):
        name = INT8_FILES[fp32_name]
        target = work / name
        log(f"quantizing {fp32_name} -> {name} (dynamic int8, per-channel weights) ...")
        try:
            counts = quantize_encoder(work / fp32_name, target, settings)
        except Exception as exc:  # the quantizer raises untyped errors; int8 is optional, fp32 still ships
            reason = f"quantization failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
            _refuse(record, name, target, reason, log)
            continue
        record["quantized_nodes"][name] = counts
        if verify:
            if fp32_name == VISION_FILE:
                report = verify_int8_vision(model, target, matrix, video_pixels, min_cosine=min_cosine,
                                                    graph=graph)
            else:
                report = verify_int8_text(model, target, matrix, trim=True, min_cosine=min_cosine)
            record["verification"][name] = report.to_dict()
            if not report.ok:
                _refuse(record, name, target, "failed the int8 parity thresholds:\n" + report.table(), log)
                continue
        record["files"][fp32_name.split(".")[0]] = name
    if not verify:
        record["verification"] = None
        log("warning: int8 files were not verified (--no-verify)")
    return record


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
