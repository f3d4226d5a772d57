"""MAKA as one BLAS GEMM followed by masked max/mean (the engine's numpy scorer).

`apclip.scoring.maka_score` (the reference) runs an einsum per chunk of classes, which numpy does
not hand to BLAS. Here every similarity comes from one matrix product:

    sim = frames [B*Nv, E] @ classes^T [E, K*P]                    -> [B*Nv, K*P]
    MAKA = 1/2 * ( mean_Nv max_P sim  +  mean_real-P max_Nv sim )  per (b, k)

with padded prompts (j >= counts[k]) excluded from both directions by a -inf bias on their
columns. The flattened, transposed class matrix is prepared once per class matrix (`GemmClasses`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from apclip.scoring import prompt_mask


@dataclass(frozen=True)
class GemmClasses:
    """The class matrix laid out for the GEMM."""

    weights: np.ndarray  # [E, K*P] float32, C-contiguous: classes [K, P, E] -> [K*P, E] -> transposed
    padding: np.ndarray  # [K, P] float32: 0 for real prompts, -inf for padding
    real: np.ndarray  # [K, P] bool
    counts: np.ndarray  # [K] float32, real prompts per class
    num_classes: int
    num_prompts: int

    @classmethod
    def prepare(cls, embeddings: np.ndarray, counts: np.ndarray) -> "GemmClasses":
        if embeddings.ndim != 3:
            raise ValueError(f"expected classes [K, P, E], got {embeddings.shape}")
        k, p, e = embeddings.shape
        real = prompt_mask(counts, k, p)
        flat = np.ascontiguousarray(embeddings, dtype=np.float32).reshape(k * p, e)  # [K, P, E] -> [K*P, E]
        padding = np.where(real, np.float32(0), np.float32(-np.inf)).astype(np.float32)
        return cls(np.ascontiguousarray(flat.T), padding, real, real.sum(axis=1).astype(np.float32), k, p)


def maka_gemm(frames: np.ndarray, classes: GemmClasses) -> np.ndarray:
    """frames [B, Nv, E] (L2-normalised) -> [B, K] float32 MAKA scores."""
    if frames.ndim != 3 or frames.shape[2] != classes.weights.shape[0]:
        raise ValueError(f"expected frames [B, Nv, {classes.weights.shape[0]}], got {frames.shape}")
    b, nv, e = frames.shape
    k, p = classes.num_classes, classes.num_prompts
    flat = np.ascontiguousarray(frames, dtype=np.float32).reshape(b * nv, e)  # [B, Nv, E] -> [B*Nv, E]
    sim = flat @ classes.weights  # [B*Nv, E] @ [E, K*P] -> [B*Nv, K*P]: the one BLAS call
    sim = sim.reshape(b, nv, k, p)  # [B*Nv, K*P] -> [B, Nv, K, P]
    sim += classes.padding  # padded prompts: -inf, never a maximum (in place: no second copy)
    best_prompt = sim.max(axis=3).mean(axis=1)  # [B, Nv, K] -> [B, K]
    best_frame = sim.max(axis=1)  # [B, K, P]; -inf on padding
    mean_best_frame = np.where(classes.real, best_frame, np.float32(0)).sum(axis=2) / classes.counts  # [B, K]
    return (np.float32(0.5) * (best_prompt + mean_best_frame)).astype(np.float32, copy=False)
