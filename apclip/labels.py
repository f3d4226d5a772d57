"""Class-label files: one label per line (mmaction2 style) or ViFi-CLIP's CSV `id,name`."""
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


class LabelsError(ApclipError):
    pass


def parse_labels(text: str, source: str = "<labels>") -> list[str]:
    """Labels in file order. Blank lines and `#` comments are ignored; duplicates are an error."""
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise LabelsError(f"labels file {source} has no labels (one label per line, or CSV with id,name)")
    has_header = lines[0].replace(" ", "").lower() == "id,name"
    rows = lines[1:] if has_header else lines
    if has_header or all(_CSV_ROW.match(line) for line in rows):
        labels = _parse_csv(rows, source)
    else:
        labels = [" ".join(line.split()) for line in rows]
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


def read_labels(path: str | os.PathLike) -> list[str]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LabelsError(f"labels file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelsError(f"labels file {path} is unreadable: {exc}") from None
    return parse_labels(text, str(path))


def labels_sha256(labels: list[str]) -> str:
    """Order-sensitive hash of a label list (its JSON form)."""
    return hashlib.sha256(json.dumps(list(labels), ensure_ascii=False).encode("utf-8")).hexdigest()
