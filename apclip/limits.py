"""Ranges of numeric options shared by the CLIs (docs/security.md lists them).

Checked at parse time so that `--stride 1e-9` (a billion windows a second), `--threads 100000` (a thread
pool that exhausts the machine) or `nan` (compares false with every bound) are usage errors, not hangs.
"""
from __future__ import annotations

import math
import os

MIN_SECONDS = 0.01  # --window / --stride: shorter than a frame at 100 fps has no meaning
MAX_SECONDS = 24 * 3600.0
MAX_FPS = 1000.0


def max_threads() -> int:
    """More threads than 4x the cores only adds contention (ORT spins its pool)."""
    return 4 * (os.cpu_count() or 1)


def check_range(flag: str, value: float | int | None, low: float, high: float, error: type[Exception]) -> None:
    """None passes (the default applies); NaN, infinities and values outside [low, high] raise `error`."""
    if value is None:
        return
    if not math.isfinite(value) or not low <= value <= high:
        raise error(f"{flag} {value:g}: use a value from {low:g} to {high:g}")
