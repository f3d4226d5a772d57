"""apclip-infer's output files: JSON lines (file or stdout) and CSV. apclip.output_guard keeps every
output away from the inputs before the run starts."""
from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path
from typing import IO

from apclip.cli_common import UsageError
from apclip.fileio import AtomicFile

STDOUT = "-"


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
