"""The `xclip` scoring protocol: the end of XCLIPModel.forward (transformers modeling_x_clip.py), torch-free.

Per view v, vision.onnx gave one row block [1 + L, E]: the normalised video embedding, then the L visual
tokens (`img_features`). The class matrix holds each class's raw text embedding (one prompt per class).

    text_v = text + prompt_generator(text, img_features_v)        # [K, E], prompt_generator.onnx
    p_v    = softmax_k(logit_scale * <video_v, text_v / |text_v|>)  # logits_per_video.softmax(-1)

The score is the mean of p_v over the views (one view: exactly transformers' probabilities).
"""
from __future__ import annotations

import numpy as np

from apclip.bundle import Manifest
from apclip.class_matrix import ClassMatrix
from apclip.errors import ApclipError
from apclip.extras import require

PROMPT_GENERATOR_FILE = "prompt_generator.onnx"  # same name as export/xclip.py (the engine never imports export)


def xclip_probabilities(tokens: np.ndarray, text: np.ndarray, generator, logit_scale: float) -> np.ndarray:
    """tokens [V, 1 + L, E] (video row, then visual tokens), text [K, E] raw -> probabilities [V, K]."""
    video, visual = tokens[:, 0], np.ascontiguousarray(tokens[:, 1:], dtype=np.float32)  # [V, E], [V, L, E]
    rows = np.ascontiguousarray(np.broadcast_to(text, (len(tokens), *text.shape)), dtype=np.float32)  # [V, K, E]
    shifted = rows + generator.run(None, {"text": rows, "visual": visual})[0]
    shifted = shifted / np.linalg.norm(shifted, axis=-1, keepdims=True)
    logits = logit_scale * np.einsum("ve,vke->vk", video, shifted)
    logits = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=-1, keepdims=True)


class XclipScorer:
    """frames [B, V * (1 + L), E] (ClipLevelRunner's rows) -> mean view probabilities [B, K]."""

    name = "numpy"

    def __init__(self, manifest: Manifest):
        ort = require("onnxruntime", "cpu", "the X-CLIP prompt generator")
        self.session = ort.InferenceSession(str(manifest.file(PROMPT_GENERATOR_FILE)),
                                            providers=["CPUExecutionProvider"])
        self.rows = 1 + manifest.model.vision_grid ** 2  # video embedding + L visual tokens per view
        self.logit_scale = float(manifest.scoring.logit_scale)

    def __call__(self, frames: np.ndarray, classes: ClassMatrix) -> np.ndarray:
        b, n, e = frames.shape
        if n % self.rows:
            raise ApclipError(f"X-CLIP scoring takes blocks of {self.rows} rows per view; got {n}")
        text = classes.embeddings[:, 0]  # [K, P, E] -> [K, E]: one (raw) prompt per class
        return np.stack([xclip_probabilities(frames[i].reshape(-1, self.rows, e), text, self.session,
                                             self.logit_scale).mean(axis=0) for i in range(b)])
