"""Parity of the int8 encoders against the PyTorch fp32 reference (docs/architecture.md "Parity thresholds", int8).

The same inputs as the fp32 verification (random pixels, frames of the verification video, real
prompts of the class matrix), with the int8 thresholds: embedding cosine >= 0.999 everywhere, and the
MAKA top-1 over the (fp32) class matrix identical to the reference's on the video frames. Embedding
differences are reported but not gated: int8 moves every value a little, the ranking is what counts.
Text is fed the way the runtime feeds it: cut after each batch's last EOT when the graph allows it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from apclip.bundle import EMBEDDINGS_OUTPUT, TEXT_INPUT, VISION_INPUT
from apclip.class_matrix import ClassMatrix
from apclip.model import CLIP, TextEmbedder
from apclip.scoring import maka_score

from apclip.export.verify import Check, VerificationReport, ort_session

INT8_MIN_COSINE = 0.999


def _cosine_checks(name: str, ref: np.ndarray, got: np.ndarray, min_cosine: float) -> list[Check]:
    cosine = float(np.min(np.sum(ref * got, axis=-1) /
                          (np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1))))
    diff = float(np.max(np.abs(ref - got)))
    return [Check(name, "min cosine", cosine, f">= {min_cosine}", cosine >= min_cosine),
            Check(name, "max |diff|", diff, "reported", True)]


@torch.inference_mode()
def verify_int8_vision(model: CLIP, path: Path, matrix: ClassMatrix, video_pixels: np.ndarray | None, *,
                       min_cosine: float | None = None, seed: int = 0, graph=None,
                       session_config: dict | None = None) -> VerificationReport:
    """graph: the bundle's apclip.bundle.VisionGraph (default per-frame); clip-level graphs get whole clips."""
    from apclip.bundle import VisionGraph

    from apclip.export.vision_graph import flat, graph_input, random_pixels, reference_embedder

    graph = graph or VisionGraph()
    min_cosine = INT8_MIN_COSINE if min_cosine is None else min_cosine
    rng = np.random.default_rng(seed)
    r = model.config.image_resolution
    session = ort_session(path, session_config)
    reference = reference_embedder(model, graph)

    def encode(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # (reference, int8) [rows, E]
        return (flat(reference(torch.from_numpy(pixels)).numpy()),
                flat(session.run([EMBEDDINGS_OUTPUT], {VISION_INPUT: pixels})[0]))

    checks: list[Check] = []
    checks += _cosine_checks("int8 vision, random pixels", *encode(random_pixels(rng, r, graph)), min_cosine)
    if video_pixels is not None:
        ref, got = encode(graph_input(np.ascontiguousarray(video_pixels, dtype=np.float32), graph))
        checks += _cosine_checks("int8 vision, video frames", ref, got, min_cosine)
        classes = matrix.embeddings.astype(np.float64)
        # Normalised here: vificlip bundles' vision.onnx emits raw features (io.vision.normalized false).
        unit = lambda x: x.astype(np.float64) / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
        ref_top = int(maka_score(unit(ref)[None], classes, matrix.counts).argmax())
        got_top = int(maka_score(unit(got)[None], classes, matrix.counts).argmax())
        checks.append(Check("int8 MAKA top-1, video frames", "same class", float(ref_top == got_top), "= 1",
                            ref_top == got_top))
    return VerificationReport(checks)


@torch.inference_mode()
def verify_int8_text(model: CLIP, path: Path, matrix: ClassMatrix, *, trim: bool,
                     min_cosine: float | None = None, seed: int = 0,
                     session_config: dict | None = None) -> VerificationReport:
    from apclip.tokenizer import get_tokenizer

    from apclip.engine.runners.text_trim import trim_to_last_eot

    min_cosine = INT8_MIN_COSINE if min_cosine is None else min_cosine
    rng = np.random.default_rng(seed)
    if matrix.prompt_texts is None:
        return VerificationReport([Check("int8 text, class prompts", "prompts", 0.0, "> 0", False)])
    texts = [t for row in matrix.prompt_texts for t in row]
    picks = rng.choice(len(texts), size=min(32, len(texts)), replace=False)
    tokens = get_tokenizer().tokenize([texts[i] for i in picks])
    ref = TextEmbedder(model).eval()(torch.from_numpy(tokens)).numpy()
    feed = trim_to_last_eot(tokens) if trim else tokens
    got = ort_session(path, session_config).run([EMBEDDINGS_OUTPUT], {TEXT_INPUT: feed})[0]
    return VerificationReport(_cosine_checks("int8 text, class prompts", ref, got, min_cosine))
