"""apclip: an inference engine for AP-CLIP open-vocabulary video action recognition.

Importing this package needs only the runtime dependencies; torch-backed names
(`load_model`, `load_checkpoint`, `build_model`) import torch when first used.
"""
from __future__ import annotations

from typing import Any

from apclip.errors import CheckpointError, MissingExtraError

__version__ = "0.1.0"
__all__ = ["CheckpointError", "MissingExtraError", "load_model", "load_checkpoint", "build_model",
           "__version__"]

_TORCH_NAMES = {"load_model": "checkpoint", "load_checkpoint": "checkpoint", "build_model": "model"}


def __getattr__(name: str) -> Any:
    # Lazy so that `import apclip` never pulls torch into the runtime.
    if name in _TORCH_NAMES:
        from apclip.extras import require

        require("torch", "torch")
        from importlib import import_module

        return getattr(import_module(f".{_TORCH_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'apclip' has no attribute {name!r}")
