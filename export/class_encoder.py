"""The text encoder the export compiles the class matrix with.

Today's path was the torch reference on each 256-prompt batch cut after its last EOT. Measured
(README "CPU precisions"), ONNX Runtime on the just-exported and already verified text.onnx, with
each batch sorted into 64-row length buckets and each bucket cut after its own last EOT, is faster
and equal to it within fp32 rounding (the export's verification compares both on real prompts).
Without onnxruntime the torch reference is used, with the same buckets.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from apclip.bundle import TEXT_BATCH, TEXT_INPUT

BUCKET_ROWS = 64


def class_matrix_encoder(model, text_onnx: Path, threads: int | None = None):
    """(encoder tokens [M, L] -> [M, E], description for the manifest)."""
    from apclip.engine.runners.text_trim import TrimmedTextRunner

    if importlib.util.find_spec("onnxruntime") is not None:
        from apclip.engine.runners.encoders import OrtRunner

        runner = OrtRunner(text_onnx, TEXT_INPUT, threads=threads, batch_size=TEXT_BATCH)
        return (TrimmedTextRunner(runner, bucket=BUCKET_ROWS),
                f"onnxruntime {text_onnx.name} fp32, cut after the last EOT in {BUCKET_ROWS}-row length buckets")
    from apclip.export.api import trimmed_text_encoder

    torch_encode = trimmed_text_encoder(model)
    return (TrimmedTextRunner(lambda tokens: np.asarray(torch_encode(tokens)), bucket=BUCKET_ROWS),
            f"torch reference, cut after the last EOT in {BUCKET_ROWS}-row length buckets")
