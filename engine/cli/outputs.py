"""apclip-infer's output files: JSON lines (file or stdout), CSV, and the checks that keep every
output away from the inputs (an --out-video equal to the input video would overwrite it)."""
from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path
from typing import IO, Iterable

from apclip.cli_common import UsageError
from apclip.fileio import AtomicFile

STDOUT = "-"


def refuse_inputs_as_outputs(outputs: dict[str, str | None], inputs: Iterable[str]) -> None:
    """UsageError when an output (flag -> path) is one of the inputs or another output, by resolved path."""
    resolved_inputs: dict[Path, str] = {}
    for source in inputs:
        if os.path.exists(source):
            resolved_inputs[Path(source).resolve()] = source
    seen: dict[Path, str] = {}
    for flag, path in outputs.items():
        if not path or path == STDOUT:
            continue
        target = Path(path).resolve()
        if target in resolved_inputs:
            raise UsageError(f"{flag} {path} is the input {resolved_inputs[target]}: it would be overwritten; "
                             f"choose another output name")
        for folder, source in resolved_inputs.items():
            if folder.is_dir() and folder in target.parents and Path(source).is_dir() and target.suffix.lower() in (
                    ".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"):
                raise UsageError(f"{flag} {path} would add a frame to the image-folder input {source}")
        if target in seen:
            raise UsageError(f"{flag} {path} is also the {seen[target]} output: give each output its own file")
        seen[target] = flag


def output_target(flag: str, path: str, example: str) -> Path:
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{flag} {path} is a folder: give a file name, e.g. {target / example}")
    return target


def finite_json(value):
    """`value` with every NaN/infinite float as null: json.dumps writes bare NaN, which is not JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


class AtomicLines:
    """JSON lines written to a temporary file and renamed into place when the run ends."""

    def __init__(self, path: str):
        self.path = output_target("--json", path, "predictions.jsonl")
        self._target = AtomicFile(self.path, "w")
        self.file: IO[str] = self._target.file

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(finite_json(record), ensure_ascii=False, allow_nan=False) + "\n")
        self.file.flush()

    def commit(self) -> None:
        self._target.commit()

    def discard(self) -> None:
        self._target.discard()


class LiveLines(AtomicLines):
    """For cameras and streams, which may run for days: lines are appended to the target itself and
    flushed one by one, so it can be followed while it grows; each line is a whole JSON object."""

    def __init__(self, path: str):
        self.path = output_target("--json", path, "predictions.jsonl")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a", encoding="utf-8")

    def commit(self) -> None:
        self.file.close()

    def discard(self) -> None:
        self.file.close()


class StdoutLines(AtomicLines):
    """`--json -`: each record on stdout as it comes (the human table then goes to stderr)."""

    def __init__(self, path: str = STDOUT):
        self.path = Path(STDOUT)
        self.file = sys.stdout

    def commit(self) -> None:
        self.file.flush()

    def discard(self) -> None:
        self.file.flush()


def json_lines(path: str, live: bool) -> AtomicLines:
    if path == STDOUT:
        return StdoutLines()
    return LiveLines(path) if live else AtomicLines(path)


class CsvResults:
    """`--csv results.csv`: one row per source (written atomically when the run ends)."""

    def __init__(self, path: str, fields: list[str]):
        self.path = output_target("--csv", path, "results.csv")
        self._target = AtomicFile(self.path, "w")
        self._writer = csv.DictWriter(self._target.file, fieldnames=fields, extrasaction="ignore")
        self._writer.writeheader()

    def write(self, row: dict) -> None:
        from apclip.safe_text import csv_safe

        self._writer.writerow({key: csv_safe(value) for key, value in row.items()})  # no formula injection

    def commit(self) -> None:
        self._target.commit()

    def discard(self) -> None:
        self._target.discard()
