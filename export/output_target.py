"""Where an export may write: checked before any work, so a bad --out never costs a checkpoint load
and --force never deletes anything but an apclip bundle."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from apclip.bundle import FORMAT, MANIFEST

from apclip.export.errors import ExportError


def is_apclip_bundle(path: Path) -> bool:
    """A directory whose manifest.json is readable and says it is an apclip bundle."""
    try:
        raw = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and raw.get("format") == FORMAT


def check_bundle_target(out: str | os.PathLike, force: bool,
                        inputs: Iterable[object] = ()) -> Path:
    """The absolute bundle path for `out`, or ExportError naming what is wrong.

    Refused: the current directory or one above it; a target that holds an input (the checkpoint,
    labels or prompts would be deleted with it: apclip.output_guard); with --force anything that is not an apclip bundle
    (a plain file, a folder of other files, an unreadable manifest); without --force anything at all.
    """
    given = str(out)
    target = Path(os.path.abspath(out))
    here = Path.cwd().resolve()
    resolved = target.resolve()
    if resolved == here or resolved in here.parents:
        raise ExportError(f"--out {given} is the current directory or one above it; give a new folder name, "
                          f"e.g. --out bundle")
    from apclip.output_guard import Input, Output, check_outputs

    check_outputs([Output("--out", out, "dir")],
                  [item if isinstance(item, Input) else Input(str(item), item) for item in inputs if item is not None])
    if target.exists() or target.is_symlink():
        if not force:
            raise ExportError(f"output {given} already exists; pass --force to replace it")
        if target.is_symlink() or not target.is_dir():
            raise ExportError(f"--out {given} is not an apclip bundle (a file or link); --force only replaces "
                              f"bundles: remove it yourself or choose another --out")
        if not is_apclip_bundle(target):
            raise ExportError(f"--out {given} is a folder without a readable apclip {MANIFEST}; --force only "
                              f"replaces bundles: remove it yourself or choose another --out")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"--out {given}: cannot create it in {parent} (not a writable folder)")
    return target
