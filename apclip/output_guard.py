"""The one rule every apclip command applies before it writes: an output is never an input.

An output may not be, or lie inside, any input of the run. Inputs come in three kinds:

- `file`   a file the run reads (a video, a labels file, a checkpoint, a list, an @list file):
           no output may be it;
- `tree`   a folder the run reads whole (a bundle, an image-folder video): no output may be it or
           lie anywhere inside it, and every file in it counts as a `file` input (a symlinked
           vision.onnx is protected where it really lives);
- `folder` a folder paths are relative to (a dataset --root, a folder of videos): no output may be
           it; writing beside the videos is fine (the videos themselves are `file` inputs).

Outputs come in three kinds: `file` (written atomically, or in place for devices and FIFOs),
`dir` (a folder built elsewhere and swapped in whole: a bundle, a Triton repository; it may not
hold an input, which the swap would delete) and `into` (a folder files are written into: a run
folder, a work dir). Paths are compared after resolving symlinks. Devices and FIFOs (`/dev/stdout`,
`/dev/null`) are never refused: writing to them replaces nothing.

    check_outputs([Output("--json", args.json)], [Input("--bundle", args.bundle, "tree")])
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from apclip.cli_common import UsageError
from apclip.fileio import is_stream_target, resolve_output

STDOUT = "-"
_TREE_FILES_MAX = 20000  # a bundle has a dozen files; an image folder a few thousand frames


@dataclass(frozen=True)
class Input:
    flag: str  # how the user named it: "--labels", "SOURCE", "--bundle"
    path: str | os.PathLike | None
    kind: str = "file"  # file | tree | folder


@dataclass(frozen=True)
class Output:
    flag: str  # "--json", "--out"
    path: str | os.PathLike | None
    kind: str = "file"  # file | dir | into


def _inside(path: Path, folder: Path) -> bool:
    return folder in path.parents


def _named(item: Input) -> str:
    what = {"tree": "folder", "folder": "folder"}.get(item.kind, "file")
    return f"the input {what} {item.path} ({item.flag})" if item.flag != str(item.path) else f"the input {item.path}"


def _expand(inputs: Iterable[Input]) -> list[tuple[Input, Path, str]]:
    """(input, resolved path, kind) for every input, a tree's files included."""
    out: list[tuple[Input, Path, str]] = []
    for item in inputs:
        if item.path is None or str(item.path) in ("", STDOUT):
            continue
        resolved = resolve_output(item.path)
        kind = item.kind
        if kind == "tree" and not resolved.is_dir():
            kind = "file"  # `--bundle bundle/manifest.json` or a missing folder: compared as a path
        out.append((item, resolved, kind))
        if kind == "tree":
            count = 0
            for root, _dirs, files in os.walk(item.path):
                for name in files:
                    out.append((item, resolve_output(os.path.join(root, name)), "member"))
                    count += 1
                if count > _TREE_FILES_MAX:
                    break
    return out


def check_outputs(outputs: Iterable[Output], inputs: Iterable[Input]) -> None:
    """UsageError naming the first output that is, lies inside or would swallow an input, or that two
    outputs share; nothing is read or written."""
    expanded = _expand(inputs)
    seen: dict[Path, str] = {}
    for out in outputs:
        if out.path is None or str(out.path) in ("", STDOUT) or is_stream_target(out.path):
            continue
        target = resolve_output(out.path)
        given = f"{out.flag} {out.path}"
        for item, source, kind in expanded:  # the exact file first: it names what would be lost
            if target == source:
                what = (f"a file of {_named(item)}" if kind == "member" and target != resolve_output(item.path)
                        else _named(item))
                raise UsageError(f"{given} is {what}: it would be overwritten; choose another output path")
        for item, source, kind in expanded:
            if kind == "tree" and _inside(target, source):
                raise UsageError(f"{given} lies inside {_named(item)}: writing it would change the input; "
                                 f"choose a path outside {item.path}")
            if out.kind == "dir" and _inside(source, target):
                raise UsageError(f"{given} holds {_named(item)}: replacing {out.path} would delete it; "
                                 f"write somewhere else")
        if out.kind == "file":
            if target in seen:
                raise UsageError(f"{given} is also the {seen[target]} output: give each output its own file")
            seen[target] = out.flag


def source_inputs(sources: Iterable[str], items: Iterable[str] = ()) -> list[Input]:
    """apclip-infer's SOURCE arguments and what they expanded to: @list files, image folders (trees),
    folders of videos, and each video."""
    inputs: list[Input] = []
    for source in sources:
        if source.startswith("@"):
            inputs.append(Input("SOURCE", source[1:], "file"))
        elif os.path.isdir(source):
            inputs.append(Input("SOURCE", source, "folder"))
    for path in items:
        if os.path.isdir(path):
            inputs.append(Input("SOURCE", path, "tree"))  # an image-folder video: a new file would be a frame
        elif os.path.exists(path):
            inputs.append(Input("SOURCE", path, "file"))
    return inputs
