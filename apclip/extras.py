"""Lazy imports of optional backends with an install hint naming the pyproject extra."""
from __future__ import annotations

import importlib
from types import ModuleType

from apclip.errors import MissingExtraError


def require(module: str, extra: str, purpose: str = "") -> ModuleType:
    """Import `module` or raise MissingExtraError telling which `pip install "apclip[extra]"` to run."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        need = f" for {purpose}" if purpose else ""
        raise MissingExtraError(
            f"{module} is not installed{need}: run pip install \"apclip[{extra}]\" ({exc})"
        ) from None


def available(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False
