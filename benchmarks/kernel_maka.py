"""Thin wrapper: `python -m apclip.benchmarks.kernel_maka` is `apclip-bench kernel` (see benchmarks/kernel.py)."""
from __future__ import annotations

import sys

from apclip.benchmarks.kernel import main

if __name__ == "__main__":
    sys.exit(main())
