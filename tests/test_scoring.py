"""MAKA and the mean-pool baseline against float64 brute-force loops; padding, permutations, bounds."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from apclip.scoring import explain, maka_score, maka_score_views, mean_pool_score


def unit_rows(rng: np.random.Generator, *shape: int) -> np.ndarray:
    x = rng.standard_normal(shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def padded_classes(rng: np.random.Generator, counts: list[int], p_max: int, e: int, pad: str = "zero") -> np.ndarray:
    """[K, P_max, E]: counts[k] unit rows, then padding (zeros, junk of large norm, or NaN)."""
    c = unit_rows(rng, len(counts), p_max, e)
    for k, n in enumerate(counts):
        if pad == "zero":
            c[k, n:] = 0.0
        elif pad == "junk":
            c[k, n:] = 50.0 * rng.standard_normal((p_max - n, e))  # would win every max if it leaked
        elif pad == "nan":
            c[k, n:] = np.nan
    return c


def brute_force_maka(v: np.ndarray, c: np.ndarray, counts: list[int]) -> np.ndarray:
    """Paper eq. 3-6 with plain loops in float64."""
    v, c = np.asarray(v, dtype=np.float64), np.asarray(c, dtype=np.float64)
    out = np.zeros((v.shape[0], c.shape[0]))
    for b in range(v.shape[0]):
        for k in range(c.shape[0]):
            n = counts[k]
            sim = [[float(np.dot(v[b, i], c[k, j])) for j in range(n)] for i in range(v.shape[1])]
            frame_to_prompt = sum(max(row) for row in sim) / len(sim)
            prompt_to_frame = sum(max(sim[i][j] for i in range(len(sim))) for j in range(n)) / n
            out[b, k] = 0.5 * (frame_to_prompt + prompt_to_frame)
    return out


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def case(rng):
    counts = [5, 1, 7, 3]
    return unit_rows(rng, 3, 6, 16), padded_classes(rng, counts, 7, 16), counts


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_numpy_matches_brute_force(case, dtype, tol):
    v, c, counts = case
    scores = maka_score(v.astype(dtype), c.astype(dtype), counts)
    assert isinstance(scores, np.ndarray) and scores.shape == (3, 4) and scores.dtype == dtype
    np.testing.assert_allclose(scores, brute_force_maka(v, c, counts), rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_torch_matches_brute_force(case, dtype):
    v, c, counts = case
    vt, ct = torch.from_numpy(v).to(dtype), torch.from_numpy(c).to(dtype)
    scores = maka_score(vt, ct, torch.tensor(counts))
    assert isinstance(scores, torch.Tensor) and scores.shape == (3, 4)
    assert scores.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    expected = brute_force_maka(vt.double().numpy(), ct.double().numpy(), counts)  # on the rounded inputs
    np.testing.assert_allclose(scores.double().numpy(), expected, rtol=0, atol=1e-6)


def test_torch_frames_with_numpy_classes(case):
    v, c, counts = case
    scores = maka_score(torch.from_numpy(v), c, np.array(counts))
    assert isinstance(scores, torch.Tensor)
    np.testing.assert_allclose(scores.numpy(), brute_force_maka(v, c, counts), atol=1e-12)


def test_many_classes_cross_chunk_boundaries(rng):
    counts = list(rng.integers(1, 10, size=150))
    v, c = unit_rows(rng, 2, 5, 8), padded_classes(rng, counts, 9, 8)
    np.testing.assert_allclose(maka_score(v, c, counts), brute_force_maka(v, c, counts), atol=1e-12)


def test_counts_none_means_every_prompt(rng):
    v, c = unit_rows(rng, 2, 4, 8), unit_rows(rng, 3, 5, 8)
    np.testing.assert_allclose(maka_score(v, c), brute_force_maka(v, c, [5, 5, 5]), atol=1e-12)


def test_invariant_to_permuting_frames_and_prompts(case, rng):
    v, c, counts = case
    base = maka_score(v, c, counts)
    shuffled_v = v[:, rng.permutation(v.shape[1])]
    shuffled_c = c.copy()
    for k, n in enumerate(counts):
        shuffled_c[k, :n] = c[k, rng.permutation(n)]
    np.testing.assert_allclose(maka_score(shuffled_v, shuffled_c, counts), base, atol=1e-12)
    # Permuting classes permutes columns.
    order = rng.permutation(len(counts))
    np.testing.assert_allclose(maka_score(v, c[order], [counts[k] for k in order]), base[:, order], atol=1e-12)


@pytest.mark.parametrize("pad", ["junk", "nan"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_padding_never_changes_a_score(rng, pad, backend):
    counts = [2, 6, 1]
    v = unit_rows(rng, 2, 5, 12)
    zero_padded = padded_classes(np.random.default_rng(1), counts, 6, 12, pad="zero")
    hostile = padded_classes(np.random.default_rng(1), counts, 6, 12, pad=pad)
    wider = np.concatenate([hostile, 7.0 * unit_rows(rng, 3, 4, 12)], axis=1)  # P 6 -> 10, all padding
    as_input = (lambda x: torch.from_numpy(x)) if backend == "torch" else (lambda x: x)
    scores = [np.asarray(maka_score(as_input(v), as_input(c), counts)) for c in (zero_padded, hostile, wider)]
    alone = [maka_score(v, zero_padded[k:k + 1, :n], [n])[:, 0] for k, n in enumerate(counts)]
    for s in scores:
        assert np.isfinite(s).all()
        np.testing.assert_allclose(s, np.stack(alone, axis=1), atol=1e-12)


def test_scores_are_bounded_and_identical_sets_score_one(rng):
    counts = [4, 2, 6]
    c = padded_classes(rng, counts, 6, 10)
    v = np.concatenate([unit_rows(rng, 1, 4, 10), c[None, 0, :4]], axis=0)  # video 1 = class 0's prompts
    scores = maka_score(v, c, counts)
    assert (scores >= -1 - 1e-12).all() and (scores <= 1 + 1e-12).all()
    assert scores[1, 0] == pytest.approx(1.0, abs=1e-12)
    assert (scores[1, 1:] < 1 - 1e-3).all()
    # Extremes: a video that is the negation of a one-prompt class scores -1.
    assert maka_score(-c[None, 1, :1], c[1:2, :1], [1])[0, 0] == pytest.approx(-1.0, abs=1e-12)
    # Identical sets give 1 on torch too, in float32.
    t = torch.from_numpy(c).float()
    assert float(maka_score(t[None, 2, :6], t, torch.tensor(counts))[0, 2]) == pytest.approx(1.0, abs=1e-6)


def test_views_pool_scores_one_set_mean_averages_views(rng):
    counts = [3, 5]
    video = unit_rows(rng, 2, 3, 4, 8)  # [B, V, T, E]
    c = padded_classes(rng, counts, 5, 8)
    pooled = maka_score_views(video, c, counts, views="pool")
    np.testing.assert_allclose(pooled, brute_force_maka(video.reshape(2, 12, 8), c, counts), atol=1e-12)
    meaned = maka_score_views(video, c, counts, views="mean")
    per_view = np.stack([brute_force_maka(video[:, i], c, counts) for i in range(3)], axis=1)  # [B, V, K]
    np.testing.assert_allclose(meaned, per_view.mean(axis=1), atol=1e-12)
    assert np.abs(pooled - meaned).max() > 1e-3  # the two modes really differ
    torch_meaned = maka_score_views(torch.from_numpy(video), torch.from_numpy(c), counts, views="mean")
    assert isinstance(torch_meaned, torch.Tensor)
    np.testing.assert_allclose(torch_meaned.numpy(), meaned, atol=1e-12)
    with pytest.raises(ValueError, match="views"):
        maka_score_views(video, c, counts, views="max")


def test_explain_agrees_with_brute_force(case):
    v, c, counts = case
    explanations = explain(torch.from_numpy(v[1]), c, counts, classes=[2, 1])
    assert [e.class_index for e in explanations] == [2, 1]
    expected_scores = brute_force_maka(v[1:2], c, counts)[0]
    for e in explanations:
        n = counts[e.class_index]
        sim = v[1] @ c[e.class_index, :n].T  # [Nv, P_k]
        assert e.score == pytest.approx(expected_scores[e.class_index], abs=1e-12)
        assert len(e.best_prompt_per_frame) == v.shape[1] and len(e.best_frame_per_prompt) == n
        assert e.best_prompt_per_frame == [int(np.argmax(row)) for row in sim]
        assert e.best_frame_per_prompt == [int(np.argmax(col)) for col in sim.T]
        np.testing.assert_allclose(e.frame_similarity, sim.max(axis=1), atol=1e-12)
        np.testing.assert_allclose(e.prompt_similarity, sim.max(axis=0), atol=1e-12)
        assert max(e.best_prompt_per_frame) < n  # never a padded prompt


def test_mean_pool_score_is_cosine_of_means(case):
    v, c, counts = case
    scores = mean_pool_score(torch.from_numpy(v), c, counts)
    for b in range(v.shape[0]):
        for k, n in enumerate(counts):
            video, cls = v[b].mean(axis=0), c[k, :n].mean(axis=0)
            cosine = video @ cls / np.linalg.norm(video) / np.linalg.norm(cls)
            assert scores[b, k] == pytest.approx(cosine, abs=1e-12)


@pytest.mark.parametrize("v_shape,c_shape,counts,match", [
    ((4, 8), (2, 3, 8), None, "v \\[B, Nv, E\\]"),
    ((1, 4, 8), (3, 8), None, "c \\[K, P, E\\]"),
    ((1, 4, 8), (2, 3, 6), None, "equal E"),
    ((1, 4, 8), (2, 3, 8), [1, 2, 3], "counts must have shape \\[2\\]"),
    ((1, 4, 8), (2, 3, 8), [0, 2], "counts must lie in \\[1, 3\\]"),
    ((1, 4, 8), (2, 3, 8), [1, 4], "counts must lie in \\[1, 3\\]"),
    ((1, 4, 8), (2, 3, 8), [1.5, 2], "whole numbers"),
])
def test_bad_shapes_and_counts_raise(v_shape, c_shape, counts, match):
    with pytest.raises(ValueError, match=match):
        maka_score(np.ones(v_shape), np.ones(c_shape), counts)


def test_bad_inputs_to_views_explain_and_mean_pool_raise():
    c = np.ones((2, 3, 8))
    with pytest.raises(ValueError, match="\\[B, V, T, E\\]"):
        maka_score_views(np.ones((2, 4, 8)), c)
    with pytest.raises(ValueError, match="one video"):
        explain(np.ones((2, 4, 8)), c, None, [0])
    with pytest.raises(ValueError, match="class index 2"):
        explain(np.ones((4, 8)), c, None, [2])
    with pytest.raises(ValueError, match="counts"):
        mean_pool_score(np.ones((1, 4, 8)), c, [3, 4])
