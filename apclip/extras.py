"""Lazy imports of optional backends with an install hint naming the pyproject extra."""
from __future__ import annotations

import importlib
from types import ModuleType

from apclip.errors import MissingExtraError

# Top-level modules of optional packages -> the pyproject extra that installs them (for a bare ImportError).
MODULE_EXTRAS = {"onnxruntime": "cpu", "torch": "torch", "onnx": "torch", "onnxscript": "torch", "tensorrt": "trt",
                 "cuda": "trt", "modelopt": "trt-build", "triton": "triton", "ray": "scale", "pyarrow": "scale",
                 "tritonclient": "scale", "pytriton": "triton-server", "openai": "llm", "matplotlib": "bench"}


def install_hint(extra: str) -> str:
    """The one way every message tells a user to add an extra: apclip installs from its clone."""
    return f'pip install -c constraints.txt -e ".[{extra}]" (in the apclip clone)'


def missing_module_message(exc: ImportError) -> str | None:
    """`X is not installed: pip install ...` for an ImportError of a known optional module, else None."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    extra = MODULE_EXTRAS.get(name)
    return f"{name} is not installed: {install_hint(extra)}" if extra else None


def require(module: str, extra: str, purpose: str = "") -> ModuleType:
    """Import `module` or raise MissingExtraError naming the extra to install (`install_hint`)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        need = f" for {purpose}" if purpose else ""
        raise MissingExtraError(
            f"{module} is not installed{need}: {install_hint(extra)} ({exc})"
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
