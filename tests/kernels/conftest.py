"""Kernel tests: the Triton kernel on CUDA tensors when a GPU is present, else on CPU tensors through
Triton's interpreter.

@triton.jit picks the interpreter when it decorates a function (triton's own library included), so
TRITON_INTERPRET must be set before anything imports triton. It is set here, when pytest collects this
folder, and only on machines without a CUDA GPU: there Triton can run nothing but the interpreter, so
leaving the variable set for the rest of the session changes no other test's behaviour. On a GPU
machine it is never set.
"""
from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")


@pytest.fixture(scope="session")
def device() -> str:
    """Where the kernel runs: "cuda", or "cpu" through the interpreter."""
    if torch.cuda.is_available():
        return "cuda"
    from apclip.kernels.maka import is_interpreted

    if not is_interpreted():
        pytest.fail("triton was imported before tests/kernels/conftest.py could set TRITON_INTERPRET=1 "
                    "(a test module collected earlier imports it at module level): import triton lazily "
                    "there, or run TRITON_INTERPRET=1 pytest", pytrace=False)
    return "cpu"
