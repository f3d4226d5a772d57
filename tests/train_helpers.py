"""Shared by the apclip-train tests (tests/test_train.py, tests/test_train_guard.py)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def one_intra_op_thread():
    """The tiny model's matmuls are too small to share: one thread is as fast idle and many times faster
    on a loaded machine (spinning OpenMP threads wait for descheduled ones)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
