"""The training model's pieces: prompt subsets, the [K, P, E] class tensor, MAKA logits, gradient
checkpointing, ViFi-CLIP's blending and the learning-rate schedule."""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from apclip.model import build_preset  # noqa: E402
from apclip.scoring import maka_score  # noqa: E402
from apclip.train.loop import lr_factor  # noqa: E402
from apclip.train.model import Blending, ClassPrompts, MakaClassifier, soft_cross_entropy, soft_targets  # noqa: E402

TEXTS = [[f"a video of a{i}. detail {j}." for j in range(n)] for i, n in enumerate((5, 1, 3))]


@pytest.fixture(scope="module")
def prompts():
    return ClassPrompts.from_texts(TEXTS)


def test_prompt_subsets_are_per_class_without_replacement(prompts):
    batch = prompts.sample(2, np.random.default_rng(0))
    assert batch.counts.tolist() == [2, 1, 2]  # a class with fewer prompts keeps all of them
    assert batch.owners.tolist() == [0, 0, 1, 2, 2] and batch.slots.tolist() == [0, 1, 0, 0, 1]
    rows = {tuple(r) for r in batch.tokens[:2].tolist()}
    assert len(rows) == 2 and rows <= {tuple(r) for r in prompts.tokens[:5].tolist()}
    seen = set()
    for seed in range(30):  # every prompt of class 0 turns up across steps
        b = prompts.sample(2, np.random.default_rng(seed))
        seen.update(tuple(r) for r in b.tokens[:2].tolist())
    assert len(seen) == 5
    everything = prompts.sample(0, np.random.default_rng(0))
    assert everything.counts.tolist() == [5, 1, 3] and torch.equal(everything.tokens, prompts.tokens)
    assert everything.trimmed().shape[1] < 77


def test_logits_are_logit_scale_times_maka_of_per_class_encodings(prompts):
    torch.manual_seed(0)
    clip = build_preset("tiny")
    model = MakaClassifier(clip).eval()
    videos = torch.randn(2, 3, 3, 32, 32)
    batch = prompts.sample(0, None)
    with torch.no_grad():
        logits = model(videos, batch)
        frames = torch.nn.functional.normalize(clip.encode_image(videos.reshape(6, 3, 32, 32)), dim=-1).reshape(2, 3, -1)
        classes = torch.zeros(3, 5, frames.shape[-1])
        for k, texts in enumerate(TEXTS):
            rows = torch.nn.functional.normalize(clip.encode_text(prompts.tokens[prompts.starts[k]:prompts.starts[k + 1]]),
                                                 dim=-1)
            classes[k, :len(texts)] = rows
        expected = clip.logit_scale.exp() * maka_score(frames, classes, np.array([5, 1, 3]))
    assert torch.allclose(logits, expected, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(prompts):
    videos = torch.randn(2, 2, 3, 32, 32)
    labels = torch.tensor([0, 2])
    grads = []
    for checkpointing in (False, True):
        clip = build_preset("tiny", seed=1).train()
        for transformer in (clip.transformer, clip.visual.transformer):
            transformer.gradient_checkpointing = checkpointing
        loss = soft_cross_entropy(MakaClassifier(clip)(videos, prompts.sample(0, None)), soft_targets(labels, 3, 0.1))
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in clip.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_blending_targets_and_label_smoothing():
    labels = torch.tensor([0, 1, 2, 3])
    smooth = soft_targets(labels, 4, 0.1)
    assert smooth[0].tolist() == pytest.approx([0.925, 0.025, 0.025, 0.025])
    videos = torch.rand(4, 2, 3, 8, 8)
    same, targets = Blending(4, mixup=0.0)(videos, labels, np.random.default_rng(0))
    assert same is videos and torch.equal(targets, smooth)
    for seed in range(6):  # both branches (cutmix and mixup) over the seeds
        mixed, soft = Blending(4)(videos.clone(), labels, np.random.default_rng(seed))
        assert mixed.shape == videos.shape and torch.allclose(soft.sum(dim=1), torch.ones(4))
        assert (soft >= 0).all() and not torch.equal(soft, smooth)


def _timm_cosine(t, base, total, warmup, lr_min):
    """timm CosineLRScheduler._get_lr (cycle_limit 1, warmup_prefix False, warmup_lr_init 0), transcribed."""
    if t < warmup:
        return 0 + t * (base - 0) / warmup
    if t >= total:
        return lr_min
    return lr_min + 0.5 * (base - lr_min) * (1 + math.cos(math.pi * t / total))


def test_lr_schedule_is_timms_cosine_with_warmup():
    for t in range(0, 130, 7):
        assert lr_factor(t, 100, 10, 0.01) * 8e-6 == pytest.approx(_timm_cosine(t, 8e-6, 100, 10, 8e-8))
    assert lr_factor(0, 100, 0, 0.01) == 1.0
