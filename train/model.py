"""The model being fine-tuned: CLIP's two encoders, scored with MAKA against each class's prompts.

    logits[b, k] = logit_scale.exp() * MAKA(frames of video b, prompts of class k)

Frame and prompt embeddings are L2-normalised; MAKA is `apclip.scoring.maka_score` on torch tensors
(differentiable; padded prompt rows are masked). Both encoders and logit_scale are trained.

Prompts per step. Encoding all 36 prompts of every class at every step costs K x 36 text passes
(14,400 for Kinetics-400, about 15x the vision cost of a batch of 4 x 8 frames); the paper does not
say what it did. The default (`prompts_per_class=4`) draws, for every class at every step, a random
subset of 4 of its prompts without replacement (all of them when it has fewer): an unbiased sample
of the prompt set whose cost is 4x ViFi-CLIP's single prompt per class, and every prompt is seen
within a few steps. Evaluation always scores all prompts, as inference does. `0` uses all prompts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from apclip.model import CLIP, l2_normalize
from apclip.scoring import maka_score


@dataclass
class ClassPrompts:
    """Every class's prompt texts, tokenized once: tokens [M, 77] with the class of each row."""

    tokens: torch.Tensor  # [M, 77] int64, all prompts of all classes, class-major
    owners: np.ndarray  # [M] class index of each row
    starts: np.ndarray  # [K + 1] row offsets: class k holds rows starts[k]:starts[k+1]

    @classmethod
    def from_texts(cls, texts: Sequence[Sequence[str]]) -> "ClassPrompts":
        from apclip.tokenizer import get_tokenizer

        flat = [t for class_texts in texts for t in class_texts]
        tokens = torch.from_numpy(np.asarray(get_tokenizer().tokenize(flat), dtype=np.int64))
        counts = np.array([len(t) for t in texts], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)])
        owners = np.repeat(np.arange(len(texts)), counts)
        return cls(tokens, owners, starts)

    @property
    def num_classes(self) -> int:
        return len(self.starts) - 1

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.starts)

    def sample(self, per_class: int, rng: np.random.Generator | None) -> "PromptBatch":
        """A random subset of `per_class` prompts of every class (all when per_class is 0 or rng None)."""
        rows, slots = [], []
        for k in range(self.num_classes):
            start, count = int(self.starts[k]), int(self.counts[k])
            if per_class and rng is not None and count > per_class:
                chosen = np.sort(rng.choice(count, size=per_class, replace=False))
            else:
                chosen = np.arange(count)
            rows.append(start + chosen)
            slots.append(np.arange(len(chosen)))
        counts = np.array([len(r) for r in rows], dtype=np.int64)
        rows_all = np.concatenate(rows)
        return PromptBatch(self.tokens[torch.from_numpy(rows_all)], self.owners[rows_all],
                           np.concatenate(slots), counts)


@dataclass
class PromptBatch:
    """The prompts scored in one step: tokens [M, L] and where each lands in the [K, P, E] class tensor."""

    tokens: torch.Tensor  # [M, 77]
    owners: np.ndarray  # [M] class of each row
    slots: np.ndarray  # [M] position of each row within its class
    counts: np.ndarray  # [K] prompts per class in this batch

    def trimmed(self) -> torch.Tensor:
        """Tokens cut after the batch's last EOT: the causal text encoder pools at EOT, so the
        embeddings are the same at about half the cost (as apclip-export does)."""
        length = int(self.tokens.argmax(dim=1).max()) + 1  # EOT has the largest id
        return self.tokens[:, :length]


class MakaClassifier(nn.Module):
    """CLIP + MAKA over class prompts: the module DistributedDataParallel wraps in training."""

    def __init__(self, clip: CLIP) -> None:
        super().__init__()
        self.clip = clip

    def encode_frames(self, videos: torch.Tensor) -> torch.Tensor:
        """[B, N, 3, R, R] (N = frames, or views x frames) -> [B, N, E] L2-normalised, float32."""
        b, n = videos.shape[:2]
        flat = videos.reshape(b * n, *videos.shape[2:])  # [B, N, 3, R, R] -> [B*N, 3, R, R]
        return l2_normalize(self.clip.encode_image(flat).float()).reshape(b, n, -1)  # [B*N, E] -> [B, N, E]

    def encode_classes(self, prompts: PromptBatch) -> torch.Tensor:
        """-> [K, P, E] normalised prompt embeddings, zero rows beyond each class's count."""
        tokens = prompts.trimmed().to(self.clip.token_embedding.weight.device)
        text = l2_normalize(self.clip.encode_text(tokens).float())  # [M, E]
        classes = text.new_zeros(len(prompts.counts), int(prompts.counts.max()), text.shape[-1])
        owners = torch.from_numpy(prompts.owners).to(text.device)
        slots = torch.from_numpy(prompts.slots).to(text.device)
        return classes.index_put((owners, slots), text)  # out of place: gradients reach every row

    def forward(self, videos: torch.Tensor, prompts: PromptBatch) -> torch.Tensor:
        """[B, N, 3, R, R] clips -> [B, K] logits = logit_scale.exp() * MAKA."""
        frames = self.encode_frames(videos)
        classes = self.encode_classes(prompts)
        scores = maka_score(frames, classes, prompts.counts)  # [B, K]
        return self.clip.logit_scale.exp().float() * scores


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot targets with label smoothing: on = 1 - s + s / K, off = s / K (ViFi-CLIP's blending)."""
    off = smoothing / num_classes
    targets = torch.full((len(labels), num_classes), off, device=labels.device)
    return targets.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """timm SoftTargetCrossEntropy: mean over the batch of -sum_k target_k log softmax(logits)_k."""
    return torch.sum(-targets * torch.log_softmax(logits.float(), dim=-1), dim=-1).mean()


@dataclass(frozen=True)
class Blending:
    """ViFi-CLIP's CutmixMixupBlending (AUG.MIXUP 0.8, AUG.CUTMIX 1.0, MIXUP_SWITCH_PROB 0.5, smoothing
    0.1): cutmix with probability switch_prob, else mixup; labels become smoothed soft targets. Random
    draws come from a numpy Generator (saved in checkpoints) instead of torch's and numpy's global state.
    mixup = 0 gives label smoothing alone."""

    num_classes: int
    smoothing: float = 0.1
    mixup: float = 0.8  # Beta(alpha, alpha) of mixup; 0 disables blending
    cutmix: float = 1.0  # Beta(alpha, alpha) of cutmix; 0 disables it
    switch_prob: float = 0.5

    def __call__(self, videos: torch.Tensor, labels: torch.Tensor,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """videos [B, T, 3, H, W], labels [B] -> blended videos, soft targets [B, K]."""
        targets = soft_targets(labels, self.num_classes, self.smoothing)
        if self.mixup <= 0:  # ViFi-CLIP blends only when AUG.MIXUP > 0
            return videos, targets
        use_cutmix = rng.random() < self.switch_prob and self.cutmix > 0
        order = torch.from_numpy(rng.permutation(len(labels))).to(videos.device)
        if use_cutmix:
            lam = rng.beta(self.cutmix, self.cutmix)
            h, w = videos.shape[-2:]
            cut = np.sqrt(1.0 - lam)
            cut_w, cut_h = int(w * cut), int(h * cut)
            cx, cy = int(rng.integers(w)), int(rng.integers(h))
            x1, x2 = int(np.clip(cx - cut_w // 2, 0, w)), int(np.clip(cx + cut_w // 2, 0, w))
            y1, y2 = int(np.clip(cy - cut_h // 2, 0, h)), int(np.clip(cy + cut_h // 2, 0, h))
            videos = videos.clone()
            videos[..., y1:y2, x1:x2] = videos[order][..., y1:y2, x1:x2]
            lam = 1.0 - (x2 - x1) * (y2 - y1) / (w * h)
        else:
            lam = rng.beta(self.mixup, self.mixup)
            videos = lam * videos + (1 - lam) * videos[order]
        return videos, lam * targets + (1 - lam) * targets[order]
