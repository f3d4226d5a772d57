"""Text encoding cut after the last EOT: the same embeddings at a fraction of the cost.

CLIP's text transformer is causal and pools at the EOT token (the largest id), so the positions
after a prompt's EOT cannot change its embedding. A text.onnx exported with a dynamic token axis
(2..77) is therefore fed tokens[:, :L] with L the batch's last EOT + 1. Rows are also grouped by
length (`bucket` rows at a time, longest first) so that a 10-token prompt is not padded to the
batch's 50; the outputs go back in the input order.

Old bundles have a text.onnx fixed at 77 tokens: `token_axis_is_dynamic` tells them apart (from the
manifest's io shapes, else the graph's input shape) and they keep receiving [M, 77].
"""
from __future__ import annotations

import numpy as np

from apclip.bundle import TEXT_BATCH, Manifest

MIN_TOKENS = 2  # the exported axis range starts here: torch.export specialises sizes 0 and 1


def eot_lengths(tokens: np.ndarray) -> np.ndarray:
    """[M, L] token ids -> [M] positions of EOT + 1 (EOT has the largest id in CLIP's vocabulary)."""
    return tokens.argmax(axis=1) + 1


def trim_to_last_eot(tokens: np.ndarray) -> np.ndarray:
    """[M, L] -> [M, L'] with L' = the batch's last EOT + 1 (at least MIN_TOKENS, at most L)."""
    if tokens.shape[0] == 0:
        return tokens
    length = min(tokens.shape[1], max(MIN_TOKENS, int(eot_lengths(tokens).max())))
    return np.ascontiguousarray(tokens[:, :length])


def token_axis_is_dynamic(manifest: Manifest, graph_shape: list | tuple | None = None) -> bool:
    """True when the bundle's text.onnx accepts fewer than 77 tokens."""
    io = ((manifest.raw.get("io") or {}).get("text") or {}).get("inputs") or []
    if io and len(io[0].get("shape") or []) == 2:
        return not isinstance(io[0]["shape"][1], int)
    if graph_shape is not None and len(graph_shape) == 2:
        return not isinstance(graph_shape[1], int)  # ORT reports a symbolic dim as a str (or None)
    return False


class TrimmedTextRunner:
    """Wraps a text runner whose graph has a dynamic token axis (or any tokens -> embeddings callable,
    such as the torch reference); same interface, same embeddings."""

    def __init__(self, runner, bucket: int | None = 64):
        self.runner = runner
        self.bucket = bucket
        self.name = getattr(runner, "name", "text")
        self.batch_size = getattr(runner, "batch_size", TEXT_BATCH)
        self.cache_identity = getattr(runner, "cache_identity", None)  # trimming does not change a row

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        if not self.bucket or len(tokens) <= self.bucket:
            return self.runner(trim_to_last_eot(tokens))
        order = np.argsort(-eot_lengths(tokens), kind="stable")  # longest first
        outputs = [self.runner(trim_to_last_eot(tokens[order[i:i + self.bucket]]))
                   for i in range(0, len(order), self.bucket)]
        out = np.empty((len(tokens), outputs[0].shape[1]), dtype=outputs[0].dtype)
        out[order] = np.concatenate(outputs)
        return out
