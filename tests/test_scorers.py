"""Scorer selection details that need no GPU."""
from __future__ import annotations

import numpy as np

from apclip.class_matrix import ClassMatrix
from apclip.engine.scoring.scorers import AutoTritonScorer, NumpyScorer
from apclip.kernels import KernelInputError
from apclip.scoring import maka_score


class _RefusingKernel:
    name = "triton"
    calls = 0

    def __call__(self, frames, classes):
        self.calls += 1
        raise KernelInputError("more than 256 frames per set")


def test_auto_scorer_falls_back_to_numpy_beyond_kernel_limits():
    rng = np.random.default_rng()
    emb = rng.standard_normal((3, 4, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    classes = ClassMatrix(emb, np.array([4, 2, 3], dtype=np.int32), ["a", "b", "c"], [])
    frames = rng.standard_normal((1, 300, 16)).astype(np.float32)
    frames /= np.linalg.norm(frames, axis=-1, keepdims=True)
    kernel = _RefusingKernel()
    scorer = AutoTritonScorer(kernel)
    got = scorer(frames, classes)
    assert kernel.calls == 1 and scorer.name == "triton"
    np.testing.assert_allclose(got, maka_score(frames.astype(np.float64), emb.astype(np.float64), classes.counts),
                               atol=1e-5)
    np.testing.assert_allclose(got, NumpyScorer()(frames, classes), atol=1e-6)
