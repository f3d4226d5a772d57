"""apclip-infer's SOURCE arguments -> the list of sources to run, in order.

Each argument is one of:
  - a video file;
  - a folder. A folder that holds images and no video files is ONE source (an image-folder video,
    frames in natural order). Any other folder is a folder of videos: its video files (by extension,
    natural order), and with `recursive` also those of its subfolders, where an image-only subfolder
    again counts as one image-folder source;
  - a glob (`clips/*.mp4`, `data/**/*.avi`), expanded in sorted order (`**` matches subfolders);
  - `@list.txt`: one source per line, or mmaction2's `path label` lines (the label, an integer class
    index, is kept as the expected class). Relative paths are relative to the list file's folder;
    blank lines and `#` comments are skipped;
  - a camera index or a stream URL (only as the one source of a run).
Arguments that match nothing are kept as `missing` entries, so the run can report them as skipped.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from apclip.cli_common import UsageError
from apclip.walk import glob_paths

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp",
                    ".ts", ".mts", ".ogv", ".gif")
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class SourceItem:
    """One source to predict, with where it came from."""

    path: str  # what open_source receives: a file or folder path, a camera index or a URL
    expected: str | None = None  # class index from an mmaction2 `path label` list, when given
    missing: str | None = None  # why nothing is there (then the run reports it and skips it)


def is_live(source: str) -> bool:
    """A camera index or a network stream: no end, no file to check."""
    return (source.isdigit() and not os.path.exists(source)) or ("://" in source and not source.startswith("file://"))


def _natural_key(path: str) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path)]


def is_image_folder(folder: Path) -> bool:
    """Holds at least one image and no video file (subfolders do not matter)."""
    from apclip.engine.video.sources import IMAGE_EXTENSIONS  # imports OpenCV: only when a folder is given

    has_image = False
    for entry in os.scandir(folder):
        if not entry.is_file():
            continue
        suffix = os.path.splitext(entry.name)[1].lower()
        if suffix in VIDEO_EXTENSIONS:
            return False
        has_image = has_image or suffix in IMAGE_EXTENSIONS
    return has_image


def _folder_sources(folder: Path, recursive: bool, seen: set[tuple[int, int]] | None = None) -> list[SourceItem]:
    """`seen`: (device, inode) of the folders walked so far, so a symlink back to a parent is not a loop."""
    seen = set() if seen is None else seen
    info = folder.stat()
    if (info.st_dev, info.st_ino) in seen:
        return []
    seen.add((info.st_dev, info.st_ino))
    if is_image_folder(folder):
        return [SourceItem(str(folder))]
    items: list[SourceItem] = []
    subfolders: list[Path] = []
    for entry in sorted(os.scandir(folder), key=lambda e: _natural_key(e.name)):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            subfolders.append(Path(entry.path))
        elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in VIDEO_EXTENSIONS:
            items.append(SourceItem(str(Path(entry.path))))
    if recursive:
        for sub in subfolders:
            items.extend(_folder_sources(sub, recursive, seen))
    return items


def _read_list(list_file: str) -> list[SourceItem]:
    from apclip.fileio import read_user_text

    path = Path(list_file)
    text = read_user_text(path, f"source list @{list_file}", UsageError)
    items = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        expected = None
        parts = line.rsplit(None, 1)
        if len(parts) == 2 and parts[1].lstrip("-").isdigit() and not (path.parent / line).exists():
            line, expected = parts[0], parts[1]  # mmaction2: `path label` (paths may hold spaces)
        source = line if is_live(line) or Path(line).is_absolute() else str(path.parent / line)
        items.append(_checked(source, expected))
    if not items:
        raise UsageError(f"source list @{list_file} lists no sources (one path per line, or `path label`)")
    return items


def _checked(source: str, expected: str | None = None) -> SourceItem:
    if is_live(source) or os.path.exists(source):
        return SourceItem(source, expected)
    return SourceItem(source, expected, missing="not found")


def expand_sources(arguments: Iterable[str], recursive: bool = False) -> list[SourceItem]:
    """Every SOURCE argument expanded, in the order given (see the module docstring); a file reached
    twice (a folder and a glob over it) runs once, at its first place."""
    unique: list[SourceItem] = []
    seen: set[str] = set()
    for item in _expand(arguments, recursive):
        key = item.path if item.missing or is_live(item.path) else os.path.realpath(item.path)
        if key not in seen:
            seen.add(key)
            unique.append(item)
    return unique


def _expand(arguments: Iterable[str], recursive: bool) -> list[SourceItem]:
    items: list[SourceItem] = []
    for argument in arguments:
        if argument.startswith("@") and not os.path.exists(argument):
            items.extend(_read_list(argument[1:]))
        elif is_live(argument):
            items.append(SourceItem(argument))
        elif os.path.isdir(argument):
            found = _folder_sources(Path(argument), recursive)
            if not found:
                hint = "" if recursive else " (pass --recursive to look in subfolders)"
                items.append(SourceItem(argument, missing=f"folder holds no videos or images{hint}"))
            items.extend(found)
        elif os.path.exists(argument):
            items.append(SourceItem(argument))
        elif _GLOB_CHARS.search(argument):
            matches = sorted(glob_paths(argument), key=_natural_key)  # `**` never loops through symlinks
            if not matches:
                items.append(SourceItem(argument, missing="the pattern matches nothing"))
            for match in matches:
                if os.path.isdir(match):
                    items.extend(_folder_sources(Path(match), recursive))
                else:
                    items.append(SourceItem(match))
        else:
            items.append(SourceItem(argument, missing="not found"))
    return items
