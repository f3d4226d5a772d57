"""Glob patterns that cannot loop.

glob.glob(recursive=True) follows symlinked folders under `**`: two links to a parent folder make it walk
2^40 paths (measured: still running after 20 s on a folder of one video). pathlib's `**` does not follow
symlinked folders, so every real folder is visited once. apclip-infer's sources and apclip-batch's --input
both expand globs here.
"""
from __future__ import annotations

import glob
from pathlib import Path


def glob_paths(pattern: str) -> list[str]:
    """Paths matching `pattern` (glob syntax; `**` = any depth, symlinked folders not entered), sorted.
    Like glob.glob, names starting with a dot are matched only by patterns that name them."""
    if "**" not in pattern:
        return sorted(glob.glob(pattern))
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    root = Path(*parts[:first]) if first else Path(".")
    rest = "/".join(parts[first:])
    dotted = any(part.startswith(".") for part in parts[first:])
    found = []
    for path in root.glob(rest):
        relative = path.relative_to(root).parts
        if not dotted and any(part.startswith(".") for part in relative):
            continue
        found.append(str(path))
    return sorted(found)
