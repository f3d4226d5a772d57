"""Kernel tests: the Triton kernel on CUDA tensors when a GPU is present, else on CPU tensors through
Triton's interpreter.

@triton.jit picks the interpreter when it decorates a function, so TRITON_INTERPRET must be set before
apclip.kernels.maka is imported. It is set here, when pytest collects this folder, and only on machines
without a CUDA GPU: there Triton can run nothing but the interpreter, so leaving the variable set for the
rest of the session changes no other test's behaviour. On a GPU machine it is never set.
"""
from __future__ import annotations

import importlib
import os
import sys

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

# A module collected before this folder may have imported the kernel compiled for a GPU that is absent.
if "apclip.kernels.maka" in sys.modules and os.environ.get("TRITON_INTERPRET") == "1":
    if not sys.modules["apclip.kernels.maka"].is_interpreted():
        importlib.reload(sys.modules["apclip.kernels.maka"])


@pytest.fixture(scope="session")
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
