"""Accuracy on labelled videos: scores from a bundle (the engine, any backend) or a checkpoint (torch).

Both paths score a video the way inference does: the engine's `load_clip` with the model's
preprocessing (frames x clips x crops), every frame embedding pooled into one set, MAKA against all
prompts of every class. Through a checkpoint, the class matrix is compiled exactly as apclip-export
compiles it, so a bundle and the checkpoint it was exported from give the same predictions.

Metrics (percent): top-1, top-5 (top-min(5, K)), mean per-class accuracy (the mean over the classes
present in the list of each class's top-1 recall). With base and novel class splits (the paper's
Table 2): base = top-1 of base-class videos ranked among base classes only, novel likewise, and
their harmonic mean HM = 2 * base * novel / (base + novel). Scoring one class never depends on the
others (MAKA is per class), so ranking within a split is ranking that split's columns.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from apclip.train.data import VideoItem

TOPK = 5


@dataclass
class Scored:
    item: VideoItem
    scores: np.ndarray | None  # [K] in label order; None: the video could not be decoded
    error: str | None = None


@dataclass
class EvalReport:
    labels: list[str]
    videos: int  # listed
    evaluated: int  # decoded and scored
    skipped: list[str]  # videos that could not be decoded
    top1: float
    top5: float
    mean_class_accuracy: float
    confusion: np.ndarray  # [K, K] counts, rows = true class, columns = predicted
    predictions: list[dict[str, Any]]
    base: float | None = None
    novel: float | None = None
    harmonic_mean: float | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "videos": self.videos, "evaluated": self.evaluated, "skipped": len(self.skipped),
            "skipped_videos": self.skipped, "top1": self.top1, "top5": self.top5,
            "mean_class_accuracy": self.mean_class_accuracy, "base": self.base, "novel": self.novel,
            "harmonic_mean": self.harmonic_mean, "source": self.source, "labels": self.labels,
            "confusion": self.confusion.tolist(), "predictions": self.predictions,
        }

    def summary(self) -> str:
        lines = [f"videos {self.videos}, evaluated {self.evaluated}, skipped {len(self.skipped)}",
                 f"top-1 {self.top1:.2f}%  top-5 {self.top5:.2f}%  mean per-class {self.mean_class_accuracy:.2f}%"]
        if self.harmonic_mean is not None:
            lines.append(f"base {self.base:.2f}%  novel {self.novel:.2f}%  HM {self.harmonic_mean:.2f}%")
        return "\n".join(lines)


def harmonic_mean(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def split_top1(scores: np.ndarray, targets: np.ndarray, classes: Sequence[int]) -> float:
    """Top-1 (percent) of the videos of `classes`, ranked among `classes` only."""
    classes = np.asarray(sorted(classes))
    rows = np.isin(targets, classes)
    if not rows.any():
        return float("nan")
    sub = scores[rows][:, classes]  # [n, |classes|]
    predicted = classes[np.argmax(sub, axis=1)]  # argmax takes the first of equal scores, as a stable sort
    return 100.0 * float(np.mean(predicted == targets[rows]))


def compute_metrics(scores: np.ndarray, targets: np.ndarray, num_classes: int) -> dict[str, Any]:
    """scores [N, K], targets [N] -> top-1, top-5, mean per-class accuracy (percent), confusion [K, K]."""
    order = np.argsort(-scores, axis=1, kind="stable")  # best first; ties keep label order
    top1 = order[:, 0] == targets
    k = min(TOPK, num_classes)
    top5 = (order[:, :k] == targets[:, None]).any(axis=1)
    present = np.unique(targets)
    per_class = [float(np.mean(top1[targets == c])) for c in present]
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (targets, order[:, 0]), 1)
    return {"top1": 100.0 * float(np.mean(top1)), "top5": 100.0 * float(np.mean(top5)),
            "mean_class_accuracy": 100.0 * float(np.mean(per_class)), "confusion": confusion, "order": order}


def build_report(scored: Sequence[Scored], labels: Sequence[str], *, base_classes: Sequence[int] | None = None,
                 novel_classes: Sequence[int] | None = None, source: dict[str, Any] | None = None) -> EvalReport:
    good = [s for s in scored if s.scores is not None]
    skipped = [str(s.item.path) for s in scored if s.scores is None]
    if not good:
        from apclip.train.data import DataError

        raise DataError(f"none of the {len(scored)} listed videos could be decoded; check --root and the list file")
    scores = np.stack([s.scores for s in good]).astype(np.float64)  # [N, K]
    targets = np.array([s.item.label for s in good], dtype=np.int64)
    m = compute_metrics(scores, targets, len(labels))
    k = min(TOPK, len(labels))
    predictions = []
    for s, row in zip(good, m["order"]):
        predictions.append({"video": str(s.item.path), "target": labels[s.item.label],
                            "predicted": labels[row[0]], "correct": bool(row[0] == s.item.label),
                            "top": [{"label": labels[j], "score": float(s.scores[j])} for j in row[:k]]})
    report = EvalReport(list(labels), len(scored), len(good), skipped, m["top1"], m["top5"],
                        m["mean_class_accuracy"], m["confusion"], predictions, source=dict(source or {}))
    if base_classes is not None and novel_classes is not None:
        report.base = split_top1(scores, targets, base_classes)
        report.novel = split_top1(scores, targets, novel_classes)
        report.harmonic_mean = harmonic_mean(report.base, report.novel)
    return report


# -- scoring ---------------------------------------------------------------------------------------
def score_with_recognizer(recognizer, items: Sequence[VideoItem],
                          progress: Callable[[], None] | None = None) -> Iterator[Scored]:
    """Each video through the engine (apclip.engine.Recognizer.predict); bad videos are skipped."""
    from apclip.errors import ApclipError

    import cv2

    for item in items:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pred = recognizer.predict(str(item.path), topk=1)
            yield Scored(item, np.asarray(pred.scores, dtype=np.float32))
        except (ApclipError, cv2.error, ValueError, OSError) as exc:
            yield Scored(item, None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        if progress:
            progress()


def compile_classes(clip, labels: Sequence[str], bank, template: str | None = None):
    """The class matrix of `labels` with every prompt, compiled as apclip-export does (MAKA protocol)."""
    from apclip.class_matrix import class_prompts, encode_class_matrix
    from apclip.export.api import trimmed_text_encoder
    from apclip.scoring_protocol import DEFAULT_TEMPLATE

    prompts, fallback = class_prompts(labels, bank, template or DEFAULT_TEMPLATE)
    return encode_class_matrix(labels, prompts, trimmed_text_encoder(clip), fallback_labels=fallback)


def score_with_model(clip, items: Sequence[VideoItem], preprocessing, classes, *, workers: int = 0,
                     batch_size: int = 4, device: str = "cpu",
                     progress: Callable[[], None] | None = None) -> Iterator[Scored]:
    """Each video through the torch model: the engine's load_clip (in loader workers), MAKA over all
    V*T frame embeddings pooled. `classes`: a ClassMatrix (compile_classes)."""
    import torch
    from torch.utils.data import DataLoader

    from apclip.model import ImageEmbedder
    from apclip.scoring import maka_score
    from apclip.train.data import EvalClips, collate_clips, single_threaded_worker

    was_training = clip.training
    embedder = ImageEmbedder(clip).eval()
    loader = DataLoader(EvalClips(items, preprocessing), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=collate_clips, worker_init_fn=single_threaded_worker)
    try:
        with torch.inference_mode():
            for batch in loader:
                for index in batch["bad"]:
                    yield Scored(items[index], None, "could not be decoded")
                    if progress:
                        progress()
                if batch["video"] is None:
                    continue
                views = batch["video"]  # [B, V, T, 3, R, R]
                b = views.shape[0]
                flat = views.reshape(-1, *views.shape[3:]).to(device)  # -> [B*V*T, 3, R, R]
                emb = embedder(flat).float().cpu().numpy().reshape(b, -1, classes.embeddings.shape[-1])  # [B, V*T, E]
                for i, index in enumerate(batch["index"]):
                    scores = maka_score(emb[i:i + 1], classes.embeddings, classes.counts)[0]  # as NumpyScorer
                    yield Scored(items[index], scores.astype(np.float32))
                    if progress:
                        progress()
    finally:
        clip.train(was_training)


def write_confusion_png(path: str | os.PathLike, confusion: np.ndarray, labels: Sequence[str]) -> Path:
    """The confusion matrix as a PNG (rows: true class, columns: predicted), written atomically."""
    from apclip.extras import require
    from apclip.fileio import atomic_write

    matplotlib = require("matplotlib", "train", "the confusion-matrix plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(labels)
    side = min(30.0, max(4.0, 0.35 * k + 2))
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(confusion, cmap="Blues", interpolation="nearest")
    if k <= 60:  # beyond that the names would overlap
        ax.set_xticks(range(k), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(k), labels, fontsize=8)
        if k <= 20:
            for (i, j), n in np.ndenumerate(confusion):
                if n:
                    ax.text(j, i, str(n), ha="center", va="center", fontsize=8,
                            color="white" if n > confusion.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path, mode=None, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
