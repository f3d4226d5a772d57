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


def importable(module: str) -> bool:
    """Whether `module` could be imported, without importing it (cheap: no torch load to learn it is absent)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False
