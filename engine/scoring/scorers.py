"""Scorers: numpy (default), the bundle's scorer.onnx, and the fused Triton MAKA kernel (CUDA).

All take frame embeddings [B, Nv, E] (the pooled views of each video) and the class matrix, and
return [B, K] float32 scores. The bundle's scoring protocol decides what they compute: `maka` equals
`apclip.scoring.maka_score` within docs/architecture.md tolerances; `vificlip` equals `apclip.scoring.vificlip_score`
(Nv = V * T view-major frame features, one prompt per class), which the Triton kernel does not compute.
"""
from __future__ import annotations

import os
from typing import Protocol

import numpy as np

from apclip.bundle import SCORER_FILE, SCORER_INPUTS, Manifest
from apclip.class_matrix import ClassMatrix
from apclip.errors import ApclipError
from apclip.extras import importable, require
from apclip.scoring import mean_pool_score, vificlip_score

from apclip.engine.scoring.gemm_scorer import GemmClasses, maka_gemm
from apclip.engine.runners.encoders import BackendUnavailable

SCORERS = ("auto", "numpy", "onnx", "triton")


class Scorer(Protocol):
    name: str

    def __call__(self, frames: np.ndarray, classes: ClassMatrix) -> np.ndarray: ...


class NumpyScorer:
    """One BLAS GEMM then masked max/mean (engine/scoring/gemm_scorer.py); equals `maka_score` within 1e-6."""

    name = "numpy"

    def __init__(self):
        # Keyed by the matrix object itself (not id(), which a new matrix can reuse after the old one dies).
        self._prepared: tuple[ClassMatrix, GemmClasses] | None = None

    def __call__(self, frames: np.ndarray, classes: ClassMatrix) -> np.ndarray:
        if self._prepared is None or self._prepared[0] is not classes:
            self._prepared = (classes, GemmClasses.prepare(classes.embeddings, classes.counts))
        return maka_gemm(frames, self._prepared[1])


class VificlipScorer:
    """ViFi-CLIP's protocol in numpy: per view mean pool, cosine x logit_scale, softmax, summed over views."""

    name = "numpy"

    def __init__(self, frames_per_view: int, logit_scale: float):
        self.frames_per_view = frames_per_view
        self.logit_scale = logit_scale

    def __call__(self, frames: np.ndarray, classes: ClassMatrix) -> np.ndarray:
        text = classes.embeddings[:, 0]  # [K, P, E] -> [K, E]: one prompt per class
        return vificlip_score(frames, text, self.frames_per_view, self.logit_scale).astype(np.float32)


class EnsembleScorer:
    """The prompt-ensemble protocol in numpy: cosine of the mean embedding with each class's mean prompt."""

    name = "numpy"

    def __call__(self, frames: np.ndarray, classes: ClassMatrix) -> np.ndarray:
        return mean_pool_score(frames, classes.embeddings, classes.counts).astype(np.float32)


class OnnxScorer:
    name = "onnx"

    def __init__(self, manifest: Manifest):
        if not manifest.has(SCORER_FILE):
            raise BackendUnavailable(f"bundle {manifest.path} has no {SCORER_FILE}; re-export with --scorer")
        ort = require("onnxruntime", "cpu", "the ONNX scorer")
        self.session = ort.InferenceSession(str(manifest.file(SCORER_FILE)), providers=["CPUExecutionProvider"])

    def __call__(self, frames: np.ndarray, classes: ClassMatrix) -> np.ndarray:
        feeds = dict(zip(SCORER_INPUTS, (np.ascontiguousarray(frames, dtype=np.float32), classes.embeddings,
                                         classes.counts.astype(np.int64))))
        return self.session.run(None, feeds)[0]


class TritonScorer:
    """apclip.kernels.maka_score on CUDA; the class matrix stays resident on the device.

    Without a GPU it runs only under Triton's CPU interpreter (TRITON_INTERPRET=1 set before triton
    is imported), which is slow and meant for tests: `auto` never picks it there.
    """

    name = "triton"

    def __init__(self):
        torch = require("torch", "triton", "the Triton scorer")
        require("triton", "triton", "the Triton scorer")
        if torch.cuda.is_available():
            self.device = "cuda"
        elif os.environ.get("TRITON_INTERPRET") == "1" and _kernel_interpreted():
            self.device = "cpu"
        else:
            raise BackendUnavailable("the triton scorer needs a CUDA GPU; use --scorer numpy")
        self.torch = torch
        # Keyed by the matrix object itself (not id(), which a new matrix can reuse after the old one dies).
        self._cached: tuple[ClassMatrix, object, object] | None = None

    def __call__(self, frames: np.ndarray, classes: ClassMatrix) -> np.ndarray:
        from apclip.kernels import maka_score as kernel_maka

        torch = self.torch
        if self._cached is None or self._cached[0] is not classes:
            self._cached = (classes, torch.from_numpy(classes.embeddings).to(self.device).half(),
                            torch.from_numpy(classes.counts).to(self.device))
        _, emb, counts = self._cached
        video = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).to(self.device).half()
        video = video[:, None]  # [B, Nv, E] -> [B, 1, Nv, E]: all frames of a video pooled as one view
        return kernel_maka(video, emb, counts, views="pool", backend="triton").float().cpu().numpy()


def _kernel_interpreted() -> bool:
    from apclip.kernels.maka import is_interpreted

    return is_interpreted()


class AutoTritonScorer:
    """`--scorer auto` on a GPU: the kernel, and the numpy reference for inputs beyond its limits
    (more than 256 frames or prompts per set), so a larger sampling never fails a run."""

    def __init__(self, kernel: TritonScorer):
        self.kernel = kernel
        self.reference = NumpyScorer()
        self.name = kernel.name

    def __call__(self, frames: np.ndarray, classes: ClassMatrix) -> np.ndarray:
        from apclip.kernels import KernelInputError

        try:
            return self.kernel(frames, classes)
        except KernelInputError:
            return self.reference(frames, classes)


def make_scorer(name: str, manifest: Manifest) -> Scorer:
    scoring = manifest.scoring
    if scoring.protocol == "vificlip":
        if name in ("auto", "numpy"):
            return VificlipScorer(manifest.preprocessing.frames, float(scoring.logit_scale))
        if name == "onnx":
            return OnnxScorer(manifest)  # its scorer.onnx was exported with the vificlip graph
        if name == "triton":
            raise BackendUnavailable(f"the triton scorer computes MAKA; bundle {manifest.path} scores with the "
                                     f"vificlip protocol: use --scorer numpy or onnx")
    if scoring.protocol == "xclip":
        if name in ("auto", "numpy"):
            from apclip.engine.scoring.xclip_scorer import XclipScorer

            return XclipScorer(manifest)
        raise BackendUnavailable(f"bundle {manifest.path} scores with the xclip protocol (its prompt generator "
                                 f"runs per video): use --scorer numpy")
    if scoring.protocol == "ensemble":
        if name in ("auto", "numpy"):
            return EnsembleScorer()
        if name == "onnx":
            return OnnxScorer(manifest)  # its scorer.onnx was exported with the ensemble graph
        if name == "triton":
            raise BackendUnavailable(f"the triton scorer computes MAKA; bundle {manifest.path} scores with the "
                                     f"ensemble protocol: use --scorer numpy or onnx")
    if name == "numpy":
        return NumpyScorer()
    if name == "onnx":
        return OnnxScorer(manifest)
    if name == "triton":
        return TritonScorer()
    if name == "auto":
        from apclip.engine.runners.probes import nvidia_gpu_may_be_present

        # the one device check of the backend table (Jetson included), before torch is imported
        if not (nvidia_gpu_may_be_present() and importable("torch") and importable("triton")):
            return NumpyScorer()
        try:
            scorer = TritonScorer()
        except ApclipError:  # no usable GPU after all: the numpy reference is the CPU default
            return NumpyScorer()
        return AutoTritonScorer(scorer) if scorer.device == "cuda" else NumpyScorer()
    raise BackendUnavailable(f"unknown scorer {name!r}; choose one of {', '.join(SCORERS)}")
