"""Export the encoders (and optionally the MAKA scorer) to ONNX from the reference torch modules.

The dynamo-based `torch.onnx.export` traces exactly the modules the reference runs (ImageEmbedder,
TextEmbedder). Opset >= 17 keeps LayerNorm one LayerNormalization node, which TensorRT runs in fp32.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from apclip.bundle import EMBEDDINGS_OUTPUT, SCORER_INPUTS, SCORER_OUTPUT, TEXT_INPUT, VISION_INPUT
from apclip.model import CLIP, ImageEmbedder, TextEmbedder
from apclip.scoring import maka_torch

from apclip.export.errors import ExportError

MIN_OPSET = 17


class MakaScorer(nn.Module):
    """frames [B, Nv, E] x classes [K, P, E] (+ counts [K]) -> MAKA scores [B, K]: apclip.scoring.maka_torch."""

    def forward(self, frames: torch.Tensor, classes: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        return maka_torch(frames, classes, counts)


@contextlib.contextmanager
def quiet_loggers(names: tuple[str, ...] = ("torch.onnx", "onnxscript")):
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _export(module: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
            dynamic_shapes: dict | tuple, opset: int) -> None:
    if opset < MIN_OPSET:
        raise ExportError(f"--opset {opset} is too old: use >= {MIN_OPSET} so LayerNorm stays one node")
    # The exporter prints progress lines, deprecation chatter and log warnings about optional ops
    # (torchvision) and its version-converter fallback; our own progress says what matters.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), quiet_loggers():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, args, dynamo=True, opset_version=opset, input_names=input_names,
            output_names=output_names, dynamic_shapes=dynamic_shapes, external_data=False,
            optimize=True, verbose=False,
        )
    program.save(str(path), external_data=False)
    model = onnx.load(str(path))
    got = {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")}
    if got != {opset}:
        raise ExportError(f"exporter produced opset {sorted(got)} for {path.name}, not {opset}; "
                          f"try --opset 18")
    onnx.checker.check_model(model, full_check=True)


def export_vision(model: CLIP, path: Path, opset: int, batch_max: int, normalize: bool = True) -> None:
    """normalize=False: raw features (the vificlip protocol pools them per view before normalising)."""
    r = model.config.image_resolution
    n = torch.export.Dim("N", min=1, max=batch_max)
    sample = torch.randn(2, 3, r, r)
    _export(ImageEmbedder(model, normalize=normalize).eval(), (sample,), path, [VISION_INPUT], [EMBEDDINGS_OUTPUT],
            {VISION_INPUT: {0: n}}, opset)


TEXT_MIN_TOKENS = 2  # torch.export specialises sizes 0 and 1, so the token axis starts at 2


def export_text(model: CLIP, path: Path, opset: int, batch_max: int) -> None:
    """tokens [M, L] with L in 2..77: the runtime cuts each batch after its last EOT (engine/runners/text_trim.py)."""
    length = model.config.context_length
    m = torch.export.Dim("M", min=1, max=batch_max)
    tokens = torch.export.Dim("L", min=TEXT_MIN_TOKENS, max=length)
    sample = torch.randint(1, 40000, (2, length - 1))  # not 77: a sample at the axis maximum may be specialised
    sample[:, -1] = model.config.vocab_size - 1  # an EOT-like maximum so argmax pooling is exercised
    _export(TextEmbedder(model).eval(), (sample,), path, [TEXT_INPUT], [EMBEDDINGS_OUTPUT],
            {TEXT_INPUT: {0: m, 1: tokens}}, opset)


class VificlipScorer(nn.Module):
    """frames [B, V*T, E] raw features x classes [K, P, E] (one prompt per class, row 0) -> [B, K]
    ViFi-CLIP scores (apclip.scoring.vificlip_score); T and logit_scale are the bundle's constants."""

    def __init__(self, frames_per_view: int, logit_scale: float):
        super().__init__()
        self.frames_per_view = frames_per_view
        self.logit_scale = logit_scale

    def forward(self, frames: torch.Tensor, classes: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        from apclip.scoring import vificlip_score

        # counts is part of every scorer.onnx's inputs; the vificlip protocol has one prompt per class.
        return vificlip_score(frames, classes[:, 0], self.frames_per_view, self.logit_scale) + 0.0 * counts[None, :1].to(frames.dtype)


class EnsembleScorer(nn.Module):
    """frames [B, Nv, E] x classes [K, P, E] (+ counts [K]) -> [B, K] cosines of the mean embedding with each
    class's mean prompt (apclip.scoring.mean_pool_score; zero padding rows add nothing to the sums)."""

    def forward(self, frames: torch.Tensor, classes: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        from apclip.model import l2_normalize

        video = l2_normalize(frames.mean(dim=1))  # [B, Nv, E] -> [B, E]
        cls = l2_normalize(classes.sum(dim=1) / counts.to(classes.dtype)[:, None])  # [K, P, E] -> [K, E]
        return video @ cls.t()


def scorer_opset(opset: int) -> int:
    # torch's exporter emits opset-18 Reduce ops (axes as inputs) for amax/mean that ONNX's version
    # converter cannot lower to 17, so the optional scorer is written at 18 or newer.
    return max(opset, 18)


def export_scorer(path: Path, embed_dim: int, opset: int, scorer: nn.Module | None = None) -> None:
    """scorer.onnx of MakaScorer (default) or another set scorer with the same inputs (EnsembleScorer)."""
    b, nv, k, p = (torch.export.Dim(name, min=1, max=65536) for name in ("B", "Nv", "K", "P"))
    frames = torch.nn.functional.normalize(torch.randn(2, 5, embed_dim), dim=-1)
    classes = torch.nn.functional.normalize(torch.randn(3, 4, embed_dim), dim=-1)
    counts = torch.tensor([4, 2, 3])
    _export((scorer or MakaScorer()).eval(), (frames, classes, counts), path, list(SCORER_INPUTS), [SCORER_OUTPUT],
            dict(zip(SCORER_INPUTS, ({0: b, 1: nv}, {0: k, 1: p}, {0: k}))), scorer_opset(opset))


def export_vificlip_scorer(path: Path, embed_dim: int, opset: int, frames_per_view: int, logit_scale: float) -> None:
    t = frames_per_view
    b, v, k, p = (torch.export.Dim(name, min=1, max=65536) for name in ("B", "V", "K", "P"))
    frames = torch.randn(2, 3 * t, embed_dim)
    classes = torch.nn.functional.normalize(torch.randn(3, 1, embed_dim), dim=-1)
    counts = torch.tensor([1, 1, 1])
    _export(VificlipScorer(t, logit_scale).eval(), (frames, classes, counts), path, list(SCORER_INPUTS), [SCORER_OUTPUT],
            dict(zip(SCORER_INPUTS, ({0: b, 1: t * v}, {0: k, 1: p}, {0: k}))), scorer_opset(opset))


def export_vision_clip(model: CLIP, path: Path, opset: int, clips_max: int, frames: int, temporal: str,
                       normalize: bool = True) -> None:
    """The clip-level graph: pixels [B, T, 3, R, R] -> [B, T, E]; T (the attention's clip length) is fixed."""
    from apclip.temporal_vit import ClipImageEmbedder

    r = model.config.image_resolution
    b = torch.export.Dim("B", min=1, max=max(2, clips_max))
    sample = torch.randn(2, frames, 3, r, r)
    _export(ClipImageEmbedder(model, temporal, normalize=normalize).eval(), (sample,), path, [VISION_INPUT],
            [EMBEDDINGS_OUTPUT], {VISION_INPUT: {0: b}}, opset)
