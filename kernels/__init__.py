"""apclip.kernels: GPU kernels for AP-CLIP scoring (Triton today; native CUDA later).

`maka_score` is the one entry point: it runs the fused Triton MAKA kernel (kernels/maka.py) where it
can run and the float reference `apclip.scoring.maka_score_views` elsewhere. Importing this package
needs neither torch nor triton; both are imported on first use.
"""
from __future__ import annotations

import warnings
from typing import Any

from apclip.errors import ApclipError
from apclip.extras import install_hint

__all__ = ["maka_score", "KernelInputError", "KernelUnavailableError", "VIEWS", "BACKENDS"]

VIEWS = ("pool", "mean")
BACKENDS = ("auto", "triton", "reference")
KERNEL_DTYPES = ("float16", "float32")  # torch dtype names the kernel accepts (bf16 dots are untested)

# Fallback reasons already reported, so a serving loop warns once, not once per clip.
_warned_fallbacks: set[str] = set()


class KernelInputError(ApclipError, ValueError):
    """Inputs the kernel cannot take (shape, dtype, device, layout); the message says what to change."""


class KernelUnavailableError(ApclipError, RuntimeError):
    """backend="triton" was asked for where the kernel cannot run (no GPU, no interpreter)."""


def maka_score(video: Any, classes: Any, counts: Any = None, *, views: str = "pool",
               backend: str = "auto") -> Any:
    """MAKA scores of videos [B, V, T, E] against classes [K, P, E] (+ real prompt counts [K]) -> [B, K].

    views: "pool" scores all V*T frames of a video as one set (the paper's multi-view MAKA);
           "mean" scores each view over its T frames and averages the V scores.
    backend: "triton" forces the fused kernel (an error where it cannot run, never a silent fallback);
             "reference" the torch/numpy reference; "auto" the kernel on CUDA tensors of a supported
             dtype, else the reference, with one warning per reason.
    The kernel returns float32; the reference returns the inputs' float dtype promoted to >= float32.
    """
    if views not in VIEWS:
        raise KernelInputError(f"views must be one of {VIEWS}, got {views!r}")
    if backend not in BACKENDS:
        raise KernelInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        reason = kernel_unavailable_reason(video, classes)
        if reason is not None:
            _warn_fallback_once(reason)
            backend = "reference"
    if backend == "reference":
        from apclip.scoring import maka_score_views

        return maka_score_views(video, classes, counts, views)
    from apclip.extras import require

    require("torch", "triton", "the fused MAKA kernel")
    require("triton", "triton", "the fused MAKA kernel")
    from apclip.kernels.maka import maka_score_triton

    return maka_score_triton(video, classes, counts, views=views)


def kernel_unavailable_reason(video: Any, classes: Any) -> str | None:
    """Why backend="auto" would not run the kernel on these inputs, or None when it would."""
    if not (_is_torch(video) and _is_torch(classes)):
        return "the Triton MAKA kernel takes torch tensors; scoring these inputs with the reference"
    if video.device.type != "cuda":
        return (f"the Triton MAKA kernel needs CUDA tensors, got video on {video.device}; "
                "scoring with the reference")
    dtypes = {str(video.dtype).removeprefix("torch."), str(classes.dtype).removeprefix("torch.")}
    if not dtypes <= set(KERNEL_DTYPES) or len(dtypes) != 1:
        return (f"the Triton MAKA kernel takes video and classes of one dtype among {KERNEL_DTYPES}, "
                f"got {video.dtype} and {classes.dtype}; scoring with the reference")
    from apclip.extras import available

    if not available("triton"):
        return (f"triton is not installed ({install_hint('triton')}); "
                "scoring with the torch reference")
    return None


def _warn_fallback_once(reason: str) -> None:
    if reason not in _warned_fallbacks:
        _warned_fallbacks.add(reason)
        warnings.warn(reason, RuntimeWarning, stacklevel=3)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")
