"""Clip-level vision graphs behind the per-frame runner interface.

A bundle's vision graph is per-frame ([N, 3, R, R] -> [N, E]) or clip-level ([B, T, 3, R, R] -> [B, T, E] or
[B, E]; the manifest's `vision_graph`). Every caller (Recognizer, apclip-bench, Ray batch, Triton client)
holds frames view-major, T per view, as [N, 3, R, R]: `ClipLevelRunner` cuts them into whole clips for the
graph and hands back [N, E] (frames output) or [N / T, E] (video output: one embedding per view, which
MAKA scores as a set like any other). Per-frame bundles get their runner back unchanged.
"""
from __future__ import annotations

import numpy as np

from apclip.bundle import Manifest, VisionGraph
from apclip.errors import ApclipError


class ClipLevelRunner:
    """[N, 3, R, R] (N a multiple of T) -> [N, E] or [N / T, E] through a runner of [B, T, 3, R, R]."""

    def __init__(self, inner, graph: VisionGraph):
        self.inner = inner
        self.graph = graph
        self.name = inner.name
        self.cache_identity = getattr(inner, "cache_identity", None)
        # In frames, so that encode_in_batches cuts only between clips.
        self.batch_size = max(1, inner.batch_size) * graph.frames

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        t = self.graph.frames
        if len(batch) % t:
            raise ApclipError(f"the bundle's vision graph takes whole clips of {t} frames; got {len(batch)} frames")
        out = self.inner(batch.reshape(len(batch) // t, t, *batch.shape[1:]))  # [N, ...] -> [N/T, T, ...]
        return out.reshape(-1, out.shape[-1])  # [N/T, T, E] -> [N, E]; [N/T, E] stays


def clip_batch(manifest: Manifest, frames_batch: int) -> int:
    """The graph batch (in clips) for a caller's preferred batch in frames."""
    graph = manifest.vision_graph
    return max(1, frames_batch // graph.frames) if graph.clip_level else frames_batch


def frame_interface(manifest: Manifest, runner):
    """The runner as callers use it: ClipLevelRunner for clip-level bundles, else the runner itself."""
    graph = manifest.vision_graph
    return ClipLevelRunner(runner, graph) if graph.clip_level else runner
