"""How export drives the bundle's vision graph, per-frame or clip-level (apclip.bundle.VisionGraph).

Verification, int8 checks and the torch reference all hold frames as [N, 3, R, R] view-major (T frames
per view); a clip-level graph takes them as [N/T, T, 3, R, R] and returns [N/T, T, E] (or [N/T, E]).
"""
from __future__ import annotations

import numpy as np

from apclip.bundle import VisionGraph


def vision_graph_of(checkpoint, frames: int) -> VisionGraph:
    """The graph a checkpoint needs: clip-level with its temporal attention, else per-frame."""
    if getattr(checkpoint, "temporal", None):
        return VisionGraph("clip", "frames", frames, checkpoint.temporal)
    return VisionGraph()


def reference_embedder(model, graph: VisionGraph, normalize: bool = True):
    """The torch module vision.onnx was exported from (ImageEmbedder or ClipImageEmbedder)."""
    from apclip.model import ImageEmbedder

    if not graph.clip_level:
        return ImageEmbedder(model, normalize=normalize).eval()
    from apclip.temporal_vit import ClipImageEmbedder

    return ClipImageEmbedder(model, graph.temporal_attention, normalize=normalize).eval()


def graph_input(pixels: np.ndarray, graph: VisionGraph) -> np.ndarray:
    """[N, 3, R, R] view-major frames -> the graph's input ([N/T, T, 3, R, R] for clip-level graphs)."""
    if not graph.clip_level:
        return pixels
    if len(pixels) % graph.frames:
        raise ValueError(f"{len(pixels)} frames are not whole clips of {graph.frames}")
    return pixels.reshape(len(pixels) // graph.frames, graph.frames, *pixels.shape[1:])


def random_pixels(rng: np.random.Generator, resolution: int, graph: VisionGraph) -> np.ndarray:
    """Random graph input: 3 frames, or 2 clips of T frames."""
    frames = 3 if not graph.clip_level else 2 * graph.frames
    return graph_input(rng.standard_normal((frames, 3, resolution, resolution)).astype(np.float32), graph)


def flat(embeddings: np.ndarray) -> np.ndarray:
    """[B, T, E] or [N, E] -> [rows, E]."""
    return embeddings.reshape(-1, embeddings.shape[-1])
