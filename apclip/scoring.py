"""MAKA, AP-CLIP's bidirectional max-mean late interaction (paper eq. 3-6), and baselines.

For a video v [Nv, E] and a class c [P, E] (rows L2-normalised), with s_ij = v_i . c_j:

    MAKA(v, c) = 1/2 * ( mean_i max_j s_ij  +  mean_j max_i s_ij )

over the class's real prompts only: padded prompt rows (beyond counts[k]) never win a maximum and
never enter a mean. Works on numpy arrays and on torch tensors (torch is never imported here).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

# Classes scored per step: bounds the [B, k, Nv, P] similarity block numpy materialises.
_CLASS_CHUNK = 64


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _check_shapes(v: Any, c: Any) -> None:
    if v.ndim != 3 or c.ndim != 3 or v.shape[-1] != c.shape[-1]:
        raise ValueError(f"expected v [B, Nv, E] and c [K, P, E] with equal E, got {tuple(v.shape)} "
                         f"and {tuple(c.shape)}")


def prompt_mask(counts: Any, num_classes: int, num_prompts: int) -> np.ndarray:
    """[K, P] bool: True where prompt j of class k is real."""
    if counts is None:
        return np.ones((num_classes, num_prompts), dtype=bool)
    raw = np.asarray(counts.cpu() if _is_torch(counts) else counts)
    counts = raw.astype(np.int64)
    if counts.shape != (num_classes,):
        raise ValueError(f"counts must have shape [{num_classes}], got {counts.shape}")
    if (counts != raw).any():
        raise ValueError(f"counts must be whole numbers of prompts, got {raw.tolist()}")
    if (counts < 1).any() or (counts > num_prompts).any():
        raise ValueError(f"counts must lie in [1, {num_prompts}], got min {counts.min()} max {counts.max()}")
    return np.arange(num_prompts)[None, :] < counts[:, None]


def maka_score(v: Any, c: Any, counts: Any = None) -> Any:
    """[B, Nv, E] frames x [K, P, E] prompts (+ counts [K]) -> [B, K] MAKA scores.

    numpy in, numpy out (computed in the input's float dtype, at least float32); torch in, torch out.
    """
    _check_shapes(v, c)
    mask = prompt_mask(counts, c.shape[0], c.shape[1])
    if _is_torch(v):
        import torch

        c = torch.as_tensor(c, device=v.device)  # a numpy class matrix scored against torch frames
        dtype = torch.promote_types(torch.promote_types(v.dtype, c.dtype), torch.float32)
        real_counts = torch.from_numpy(mask.sum(axis=1)).to(v.device)  # validated above
        return maka_torch(v.to(dtype), c.to(dtype), real_counts)
    v = np.asarray(v)
    c = np.asarray(c)
    dtype = np.result_type(v.dtype, c.dtype, np.float32)
    v, c = v.astype(dtype, copy=False), c.astype(dtype, copy=False)
    out = np.empty((v.shape[0], c.shape[0]), dtype=dtype)
    for k0 in range(0, c.shape[0], _CLASS_CHUNK):
        k1 = min(k0 + _CLASS_CHUNK, c.shape[0])
        sim = np.einsum("bne,kpe->bknp", v, c[k0:k1])  # [B, k, Nv, P]
        real = mask[k0:k1][None, :, None, :]  # [1, k, 1, P]
        best_prompt = np.where(real, sim, -np.inf).max(axis=3).mean(axis=2)  # [B, k]
        best_frame = sim.max(axis=2)  # [B, k, P]
        n_real = mask[k0:k1].sum(axis=1)  # [k]
        mean_best_frame = np.where(mask[k0:k1][None], best_frame, 0).sum(axis=2) / n_real
        out[:, k0:k1] = 0.5 * (best_prompt + mean_best_frame)
    return out


def maka_torch(v: Any, c: Any, counts: Any) -> Any:
    """MAKA in torch ops only, no host checks: v [B, Nv, E] x c [K, P, E] (same float dtype), counts [K]
    integer tensor of real prompts per class -> [B, K]. Traceable: export writes scorer.onnx from this
    function, and `maka_score` calls it for torch inputs after validating counts."""
    import torch

    real = torch.arange(c.shape[1], device=c.device)[None, :] < counts[:, None]  # [K, P]
    sim = torch.einsum("bne,kpe->bknp", v, c)  # [B, K, Nv, P]
    best_prompt = sim.masked_fill(~real[None, :, None, :], float("-inf")).amax(dim=3).mean(dim=2)  # [B, K]
    best_frame = sim.amax(dim=2).masked_fill(~real[None], 0.0)  # [B, K, P]
    mean_best_frame = best_frame.sum(dim=2) / counts.to(sim.dtype)  # [B, K]
    return 0.5 * (best_prompt + mean_best_frame)


def maka_score_views(video: Any, c: Any, counts: Any = None, views: str = "pool") -> Any:
    """[B, V, T, E] -> [B, K]: `pool` scores all V*T frames as one set (the paper's multi-view
    inference); `mean` scores each view over its T frames and averages over views."""
    if video.ndim != 4:
        raise ValueError(f"expected video [B, V, T, E], got {tuple(video.shape)}")
    b, nv, t, e = video.shape
    if views == "pool":
        return maka_score(video.reshape(b, nv * t, e), c, counts)  # [B, V, T, E] -> [B, V*T, E]
    if views == "mean":
        per_view = maka_score(video.reshape(b * nv, t, e), c, counts)  # [B*V, K]
        return per_view.reshape(b, nv, -1).mean(**({"dim": 1} if _is_torch(per_view) else {"axis": 1}))
    raise ValueError(f"views must be 'pool' or 'mean', got {views!r}")


DEFAULT_LOGIT_SCALE = 100.0  # CLIP's trained exp(logit_scale) (clamped there), for bundles that did not record theirs


def class_probabilities(scores: np.ndarray, protocol: str, logit_scale: float | None) -> np.ndarray:
    """[K] scores -> [K] probabilities over the label set: the model's own reading of its scores.

    maka: softmax(logit_scale x score), as CLIP turns cosines into class probabilities; vificlip: the
    score already sums one softmax per view, so it is divided by that sum (the mean over views); xclip:
    the score is already the mean of the views' probabilities (the division leaves it as it is).
    MAKA scores are similarities, not probabilities: 0.27 vs 0.25 can mean 60% vs 10%.
    """
    s = np.asarray(scores, dtype=np.float64)
    if protocol in ("vificlip", "xclip"):  # xclip: already the mean of per-view probabilities
        total = s.sum()
        return s / total if total > 0 else np.full_like(s, 1.0 / max(len(s), 1))
    logits = float(logit_scale or DEFAULT_LOGIT_SCALE) * s
    if logits.size:
        logits -= logits.max()  # softmax is shift-invariant; this keeps exp() finite
    e = np.exp(logits)
    return e / e.sum()


def vificlip_score(frames: Any, text: Any, frames_per_view: int, logit_scale: float) -> Any:
    """ViFi-CLIP's test score (main.py validate + ViFi_CLIP.forward), [B, V*T, E] x [K, E] -> [B, K].

    frames: the encoder's per-frame features in view-major order, unnormalised as ViFi-CLIP pools them
    (normalised inputs are accepted, but then the pooling weighs frames differently); text: one
    L2-normalised embedding per class. Per view: mean over T, normalise, logit_scale * cosine, softmax
    over K; summed over V. numpy in, numpy out (float64 inside); torch in, torch out (traceable).
    """
    if frames.ndim != 3 or text.ndim != 2 or frames.shape[-1] != text.shape[-1]:
        raise ValueError(f"expected frames [B, V*T, E] and text [K, E], got {tuple(frames.shape)} and {tuple(text.shape)}")
    t = int(frames_per_view)
    if _is_torch(frames):
        import torch

        b, n, e = frames.shape
        video = frames.reshape(b, n // t, t, e).mean(dim=2)  # [B, V*T, E] -> [B, V, T, E] -> [B, V, E]
        video = video / (video * video).sum(dim=-1, keepdim=True).sqrt()
        logits = logit_scale * torch.einsum("bve,ke->bvk", video, torch.as_tensor(text, device=video.device).to(video.dtype))
        return logits.softmax(dim=-1).sum(dim=1)  # [B, V, K] -> [B, K]
    frames = np.asarray(frames, dtype=np.float64)
    b, n, e = frames.shape
    if n % t:
        raise ValueError(f"{n} frames are not a whole number of views of {t} frames")
    video = frames.reshape(b, n // t, t, e).mean(axis=2)  # [B, V*T, E] -> [B, V, T, E] -> [B, V, E]
    video /= np.linalg.norm(video, axis=-1, keepdims=True)
    logits = logit_scale * np.einsum("bve,ke->bvk", video, np.asarray(text, dtype=np.float64))  # [B, V, K]
    logits -= logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=-1, keepdims=True)
    return probs.sum(axis=1)  # [B, V, K] -> [B, K]


@dataclass(frozen=True)
class ViewExplanation:
    """One view's part in a vificlip score: its pooled cosine with the class and its softmax probability."""

    view: int
    cosine: float
    probability: float


def explain_vificlip(frames: Any, text: Any, frames_per_view: int, logit_scale: float,
                     classes: Sequence[int]) -> list[list[ViewExplanation]]:
    """For one video's features [V*T, E] and [K, E] class embeddings: per class, every view's cosine and probability."""
    frames = np.asarray(frames, dtype=np.float64)
    t = int(frames_per_view)
    video = frames.reshape(frames.shape[0] // t, t, -1).mean(axis=1)  # [V*T, E] -> [V, T, E] -> [V, E]
    video /= np.linalg.norm(video, axis=-1, keepdims=True)
    cosine = video @ np.asarray(text, dtype=np.float64).T  # [V, K]
    logits = logit_scale * cosine
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    return [[ViewExplanation(v, float(cosine[v, k]), float(probs[v, k])) for v in range(len(video))] for k in classes]


def mean_pool_score(v: Any, c: Any, counts: Any = None) -> np.ndarray:
    """Single-prompt baseline: cosine of the mean-pooled video and the mean of the class's prompts."""
    _check_shapes(v, c)
    v = np.asarray(v.detach().cpu() if _is_torch(v) else v, dtype=np.float64)
    c = np.asarray(c.detach().cpu() if _is_torch(c) else c, dtype=np.float64)
    mask = prompt_mask(counts, c.shape[0], c.shape[1])
    video = v.mean(axis=1)  # [B, E]
    video /= np.linalg.norm(video, axis=-1, keepdims=True)
    cls = (c * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)  # [K, E]
    cls /= np.linalg.norm(cls, axis=-1, keepdims=True)
    return video @ cls.T  # [B, K]


@dataclass(frozen=True)
class ClassExplanation:
    """Why a class scored what it did: the matches MAKA's two directions picked."""

    class_index: int
    score: float
    best_prompt_per_frame: list[int]  # [Nv] prompt index (within the class) each frame matched best
    frame_similarity: list[float]  # [Nv] that prompt's similarity
    best_frame_per_prompt: list[int]  # [P_k] frame index each real prompt matched best
    prompt_similarity: list[float]  # [P_k] that frame's similarity


def explain(v: Any, c: Any, counts: Any, classes: Sequence[int]) -> list[ClassExplanation]:
    """For one video v [Nv, E], the best prompt per frame and best frame per prompt of each class."""
    v = np.asarray(v.detach().cpu() if _is_torch(v) else v, dtype=np.float64)
    c = np.asarray(c.detach().cpu() if _is_torch(c) else c, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"explain takes one video [Nv, E], got {v.shape}")
    if c.ndim != 3 or c.shape[-1] != v.shape[-1]:
        raise ValueError(f"expected c [K, P, E] with E = {v.shape[-1]}, got {c.shape}")
    mask = prompt_mask(counts, c.shape[0], c.shape[1])
    out = []
    for k in classes:
        if not 0 <= k < c.shape[0]:
            raise ValueError(f"class index {k} is outside the {c.shape[0]} classes")
        n = int(mask[k].sum())
        sim = v @ c[k, :n].T  # [Nv, P_k]
        per_frame = sim.argmax(axis=1)
        per_prompt = sim.argmax(axis=0)
        score = 0.5 * (sim.max(axis=1).mean() + sim.max(axis=0).mean())
        out.append(ClassExplanation(
            int(k), float(score),
            per_frame.tolist(), sim[np.arange(len(v)), per_frame].tolist(),
            per_prompt.tolist(), sim[per_prompt, np.arange(n)].tolist(),
        ))
    return out
