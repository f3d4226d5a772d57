"""ONNX Runtime transformer fusions for the CLIP encoders (onnxruntime.transformers.optimizer).

With model type `clip` the optimizer fuses QuickGELU (x * sigmoid(1.702 x)) into one QuickGelu node
and residual Add + LayerNormalization into SkipLayerNormalization. It finds no Attention pattern
in the graphs torch's dynamo exporter writes (scaled_dot_product_attention lowers to plain
MatMul/Softmax), so attention is not fused. Whether the export applies these fusions is decided by
measurement (docs/cpu-precisions.md "Graph fusions": no gain measured, so none are applied); the manifest
records that (`graph_fusions`).
"""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

FUSION_MODEL_TYPE = "clip"


def fuse_encoder(src: Path, dst: Path, config, encoder: str) -> dict[str, int]:
    """Write the fused `src` to `dst`; returns {fused op: count} (only the ops that were found)."""
    from onnxruntime.transformers.optimizer import optimize_model

    from apclip.export.onnx_export import quiet_loggers

    heads, width = ((config.vision_heads, config.vision_width) if encoder == "vision"
                    else (config.transformer_heads, config.transformer_width))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), quiet_loggers(("onnxruntime", "")):
        warnings.simplefilter("ignore")
        # opt_level 0: only the Python fusions; ORT's own graph optimizations run when a session loads.
        model = optimize_model(str(src), model_type=FUSION_MODEL_TYPE, num_heads=heads, hidden_size=width,
                               opt_level=0, use_gpu=False)
        model.save_model_to_file(str(dst))
    return {op: n for op, n in model.get_fused_operator_statistics().items() if n}


def fusion_record() -> dict:
    """What the manifest says about graph fusions: measured, found no gain, so none applied."""
    return {"applied": {}, "model_type": FUSION_MODEL_TYPE,
            "note": "onnxruntime.transformers fusions (QuickGelu, SkipLayerNormalization; no Attention "
                    "pattern in the dynamo graph) measured no speed-up on CPU, fp32 or int8: not applied "
                    "(docs/cpu-precisions.md)"}
