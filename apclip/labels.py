"""Class-label files: one label per line (mmaction2 style), ViFi-CLIP's CSV `id,name`, or UCF-101's
`classInd.txt` (`1 ApplyEyeMakeup`: an index, a space, a name; indices 0.. or 1.. without gaps).
CamelCase names are split into words ("Apply Eye Makeup") only when asked (split_camel_case)."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from pathlib import Path

from apclip.errors import ApclipError

_CSV_ROW = re.compile(r"^\s*\d+\s*,\s*\S")
_INDEX_ROW = re.compile(r"^(\d+)\s+(\S.*)$")
# Word boundaries inside CamelCase: "ApplyEyeMakeup" -> Apply|Eye|Makeup, "YoYo" -> Yo|Yo, "PlayingDaf".
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


class LabelsError(ApclipError):
    pass


def split_camel_case(name: str) -> str:
    return " ".join(_CAMEL.sub(" ", name).split())


def _class_ind(rows: list[str]) -> list[str] | None:
    """UCF-101 classInd.txt rows -> labels in index order; None when the rows are not that format."""
    matches = [_INDEX_ROW.match(row) for row in rows]
    if not all(matches) or any("," in row for row in rows):
        return None
    indexed = {int(m.group(1)): " ".join(m.group(2).split()) for m in matches}
    first = min(indexed)
    if len(indexed) != len(rows) or first not in (0, 1) or sorted(indexed) != list(range(first, first + len(rows))):
        return None  # not a numbered list: plain labels that happen to start with a number
    return [indexed[i] for i in sorted(indexed)]


def parse_labels(text: str, source: str = "<labels>", split_camel: bool = False) -> list[str]:
    """Labels in file order (index order for CSV / classInd). Blank lines and `#` comments are ignored;
    duplicates are an error. split_camel: "ApplyEyeMakeup" -> "Apply Eye Makeup"."""
    if text.lstrip().startswith("{"):
        raise LabelsError(f"labels file {source} is JSON and looks like a prompt bank: pass it as --prompts, and "
                          f"the class names (one per line) as --labels")
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise LabelsError(f"labels file {source} has no labels (one label per line, or CSV with id,name)")
    has_header = lines[0].replace(" ", "").lower() == "id,name"
    rows = lines[1:] if has_header else lines
    if has_header or all(_CSV_ROW.match(line) for line in rows):
        labels = _parse_csv(rows, source)
    else:
        labels = _class_ind(rows) or [" ".join(line.split()) for line in rows]
    if split_camel:
        labels = [split_camel_case(label) for label in labels]
    if not labels:
        raise LabelsError(f"labels file {source} has a header but no labels")
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        if label in seen:
            raise LabelsError(f"labels file {source} lists {label!r} twice (entries {seen[label] + 1} and {i + 1})")
        seen[label] = i
    return labels


def _parse_csv(rows: list[str], source: str) -> list[str]:
    indexed: dict[int, str] = {}
    for row in csv.reader(io.StringIO("\n".join(rows))):
        if len(row) < 2 or not row[0].strip().isdigit():
            raise LabelsError(f"labels file {source}: CSV row {row!r} is not `id,name`")
        idx, name = int(row[0]), " ".join(",".join(row[1:]).split())
        if idx in indexed:
            raise LabelsError(f"labels file {source}: id {idx} appears twice")
        indexed[idx] = name
    return [indexed[i] for i in sorted(indexed)]


# Class lists shipped with the package (apclip/data/labels/SOURCES.md), usable by name: `--labels k400`.
LABEL_SETS = ("k400", "k600", "ucf101", "hmdb51", "ssv2")


def label_set_path(name: str) -> Path:
    return Path(__file__).resolve().parent / "data" / "labels" / f"{name}.csv"


def resolve_labels(path: str | os.PathLike) -> Path:
    """A labels file, or a shipped set's file for one of LABEL_SETS (a real file of that name wins)."""
    given = Path(path)
    if str(path) in LABEL_SETS and not given.exists():
        return label_set_path(str(path))
    return given


def read_labels(path: str | os.PathLike, split_camel: bool = False) -> list[str]:
    from apclip.fileio import read_user_text

    path = resolve_labels(path)
    text = read_user_text(path, f"labels file {path}", LabelsError)
    return parse_labels(text, str(path), split_camel)


def labels_sha256(labels: list[str]) -> str:
    """Order-sensitive hash of a label list (its JSON form)."""
    return hashlib.sha256(json.dumps(list(labels), ensure_ascii=False).encode("utf-8")).hexdigest()
