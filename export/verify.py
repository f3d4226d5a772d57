"""Parity of the exported ONNX files against the PyTorch reference (docs/architecture.md "Parity thresholds", fp32).

Run by the exporter before a bundle is kept: ONNX Runtime CPU vs torch on random pixels, on frames
of a video, and on real prompts; the bundle's scores (MAKA, or the vificlip protocol) over the class
matrix must keep their top-1. Raw vision features (vificlip bundles) are compared after normalisation.
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from apclip.bundle import EMBEDDINGS_OUTPUT, SCORER_INPUTS, TEXT_INPUT, VISION_INPUT
from apclip.class_matrix import ClassMatrix
from apclip.model import CLIP, TextEmbedder
from apclip.preprocessing import Preprocessing
from apclip.scoring import maka_score, mean_pool_score, vificlip_score
from apclip.scoring_protocol import Scoring

MIN_COSINE = 0.99999
MAX_ABS_DIFF = 1e-4


def generated_video_pixels(pre: Preprocessing, frames: int = 48) -> np.ndarray:
    """[V*T, 3, R, R] float32: a generated 320x240 MJPG video through the engine's own decode and
    preprocessing, so parity is checked on the values the engine really feeds the encoders."""
    from apclip.engine.video.clips import load_clip
    from apclip.engine.video.preprocess import flatten_views
    from apclip.testing.videos import write_test_video

    with tempfile.TemporaryDirectory(prefix="apclip-parity-") as tmp:
        path = write_test_video(Path(tmp) / "parity.avi", frames=frames, size=(320, 240), codec="MJPG")
        clip = load_clip(path, pre)
    return flatten_views(clip.views)


@dataclass(frozen=True)
class Check:
    name: str
    metric: str
    value: float
    threshold: str
    ok: bool


@dataclass
class VerificationReport:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def table(self) -> str:
        rows = [f"  {'check':34s} {'metric':14s} {'value':>12s}  {'needs':>10s}  result"]
        for c in self.checks:
            rows.append(f"  {c.name:34s} {c.metric:14s} {c.value:12.7g}  {c.threshold:>10s}  "
                        f"{'ok' if c.ok else 'FAILED'}")
        return "\n".join(rows)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}


def ort_session(path: Path, config: dict[str, str] | None = None):
    """config: ONNX Runtime session config entries (int8: exact integer sums on CPUs without VNNI)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _embedding_checks(name: str, ref: np.ndarray, got: np.ndarray, normalize: bool = False) -> list[Check]:
    if normalize:
        ref, got = _unit(ref), _unit(got)
    cosine = float(np.min(np.sum(ref * got, axis=-1) /
                          (np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1))))
    diff = float(np.max(np.abs(ref - got)))
    return [Check(name, "min cosine", cosine, f">= {MIN_COSINE}", cosine >= MIN_COSINE),
            Check(name, "max |diff|", diff, f"<= {MAX_ABS_DIFF:g}", diff <= MAX_ABS_DIFF)]


@torch.inference_mode()
def verify_bundle_files(model: CLIP, vision_path: Path, text_path: Path, matrix: ClassMatrix,
                        video_pixels: np.ndarray | None, scorer_path: Path | None = None,
                        seed: int = 0, scoring: Scoring | None = None, frames_per_view: int = 1,
                        graph=None) -> VerificationReport:
    """video_pixels: preprocessed frames [N, 3, R, R] of a real or generated video (or None), view-major
    with `frames_per_view` frames per view. scoring: the bundle's protocol (default MAKA).
    graph: the bundle's apclip.bundle.VisionGraph (default per-frame); clip-level graphs get whole clips."""
    from apclip.bundle import VisionGraph

    from apclip.export.vision_graph import flat, graph_input, random_pixels as make_random, reference_embedder

    graph = graph or VisionGraph()
    scoring = scoring or Scoring()
    vificlip = scoring.protocol == "vificlip"
    rng = np.random.default_rng(seed)
    r = model.config.image_resolution
    checks: list[Check] = []
    vision = ort_session(vision_path)
    image_ref = reference_embedder(model, graph, normalize=not vificlip)

    def encode(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # (reference, ONNX Runtime) [rows, E]
        ref = image_ref(torch.from_numpy(pixels)).numpy()
        return flat(ref), flat(vision.run([EMBEDDINGS_OUTPUT], {VISION_INPUT: pixels})[0])

    def protocol_scores(frames: np.ndarray, dtype=np.float64) -> np.ndarray:  # [Nv, E] -> [1, K]
        if vificlip:
            return vificlip_score(frames[None].astype(dtype), matrix.embeddings[:, 0].astype(dtype),
                                  frames_per_view, float(scoring.logit_scale))
        if scoring.protocol == "ensemble":
            return mean_pool_score(frames[None], matrix.embeddings, matrix.counts).astype(dtype)
        return maka_score(frames[None].astype(dtype), matrix.embeddings.astype(dtype), matrix.counts)

    name = {"vificlip": "vificlip", "ensemble": "ensemble"}.get(scoring.protocol, "MAKA")
    checks += _embedding_checks("vision, random pixels", *encode(make_random(rng, r, graph)), normalize=vificlip)

    if video_pixels is not None:
        ref, got = encode(graph_input(np.ascontiguousarray(video_pixels, dtype=np.float32), graph))
        checks += _embedding_checks("vision, video frames", ref, got, normalize=vificlip)
        # The bundle's scores over the whole class matrix: the ranking must not move.
        ref_scores, got_scores = protocol_scores(ref), protocol_scores(got)
        same = int(ref_scores.argmax()) == int(got_scores.argmax())
        checks.append(Check(f"{name} top-1, video frames", "same class", float(same), "= 1", same))
        diff = float(np.abs(ref_scores - got_scores).max())
        checks.append(Check(f"{name} scores, video frames", "max |diff|", diff, f"<= {MAX_ABS_DIFF:g}",
                            diff <= MAX_ABS_DIFF))
        if scorer_path is not None:
            scorer = ort_session(scorer_path)
            feeds = dict(zip(SCORER_INPUTS, (got[None], matrix.embeddings, matrix.counts.astype(np.int64))))
            onnx_scores = scorer.run(None, feeds)[0]
            ref32 = protocol_scores(got, np.float32)
            diff = float(np.abs(onnx_scores - ref32).max())
            checks.append(Check(f"scorer.onnx vs reference {name}", "max |diff|", diff, f"<= {MAX_ABS_DIFF:g}",
                                diff <= MAX_ABS_DIFF))

    # Text: real prompts' rows of the class matrix (encoded by torch) against text.onnx.
    text = ort_session(text_path)
    from apclip.tokenizer import get_tokenizer

    sample = [(k, p) for k in range(matrix.num_classes) for p in range(int(matrix.counts[k]))]
    picks = rng.choice(len(sample), size=min(16, len(sample)), replace=False)
    texts = [_prompt_text(matrix, sample[i]) for i in picks]
    if all(t is not None for t in texts):
        tokens = get_tokenizer().tokenize(texts)
        ref = TextEmbedder(model).eval()(torch.from_numpy(tokens)).numpy()
        got = text.run([EMBEDDINGS_OUTPUT], {TEXT_INPUT: tokens})[0]
        checks += _embedding_checks("text, class prompts", ref, got)
        stored = np.stack([matrix.embeddings[sample[i]] for i in picks])
        checks += _embedding_checks("class matrix rows vs text.onnx", stored, got)
    return VerificationReport(checks)


def _prompt_text(matrix: ClassMatrix, index: tuple[int, int]) -> str | None:
    texts = matrix.prompt_texts
    return texts[index[0]][index[1]] if texts is not None else None
