"""NumpyScorer (one GEMM then masked max/mean) against the einsum reference and float64."""
from __future__ import annotations

import numpy as np
import pytest

from apclip.class_matrix import ClassMatrix
from apclip.scoring import maka_score

from apclip.engine.scoring.gemm_scorer import GemmClasses, maka_gemm
from apclip.engine.scoring.scorers import NumpyScorer


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _case(rng, b, nv, k, p, e, poison: float):
    frames = _unit(rng.standard_normal((b, nv, e)))
    classes = _unit(rng.standard_normal((k, p, e)))
    counts = rng.integers(1, p + 1, size=k).astype(np.int32)
    counts[0], counts[-1] = 1, p  # one-prompt and full classes
    # Padding that would win every maximum (and move every mean) if it were not masked.
    classes[np.arange(p)[None] >= counts[:, None]] = poison
    return frames, ClassMatrix(classes, counts, [str(i) for i in range(k)], [])


@pytest.mark.parametrize("shape", [(1, 32, 40, 36, 64), (3, 7, 5, 4, 16), (2, 1, 3, 1, 8)])
def test_gemm_scorer_equals_reference(shape):
    rng = np.random.default_rng(sum(shape))
    frames, matrix = _case(rng, *shape, poison=3.0)
    got = NumpyScorer()(frames, matrix)
    assert got.dtype == np.float32 and got.shape == (shape[0], shape[2])
    ref32 = maka_score(frames, matrix.embeddings, matrix.counts)
    ref64 = maka_score(frames.astype(np.float64), matrix.embeddings.astype(np.float64), matrix.counts)
    np.testing.assert_allclose(got, ref32, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got, ref64, rtol=0, atol=1e-6)
    assert np.isfinite(got).all()


def test_padding_never_wins_even_when_real_similarities_are_negative():
    """Zero padding rows score 0, above every real (negative) similarity: the mask must exclude them."""
    rng = np.random.default_rng(1)
    e = 16
    frames = _unit(rng.standard_normal((1, 6, e)))
    direction = _unit(frames[0].mean(axis=0))
    classes = np.zeros((2, 4, e), dtype=np.float32)
    classes[:, :2] = -direction  # every real similarity < 0
    counts = np.array([2, 2], dtype=np.int32)
    matrix = ClassMatrix(classes, counts, ["a", "b"], [])
    got = NumpyScorer()(frames, matrix)
    assert (got < 0).all()
    np.testing.assert_allclose(got, maka_score(frames.astype(np.float64), classes.astype(np.float64), counts),
                               atol=1e-6)


def test_prepared_classes_follow_a_new_matrix():
    rng = np.random.default_rng(2)
    frames, first = _case(rng, 1, 8, 6, 5, 16, poison=0.0)
    _, second = _case(rng, 1, 8, 6, 5, 16, poison=0.0)
    scorer = NumpyScorer()
    a, b = scorer(frames, first), scorer(frames, second)
    np.testing.assert_allclose(b, maka_score(frames, second.embeddings, second.counts), atol=1e-6)
    assert not np.allclose(a, b)


def test_shape_errors_name_the_shapes():
    prepared = GemmClasses.prepare(np.ones((2, 3, 8), np.float32), np.array([3, 1]))
    with pytest.raises(ValueError, match=r"\[B, Nv, 8\]"):
        maka_gemm(np.ones((1, 4, 7), np.float32), prepared)
    with pytest.raises(ValueError, match="counts"):
        GemmClasses.prepare(np.ones((2, 3, 8), np.float32), np.array([4, 1]))
