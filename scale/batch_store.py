"""Exactly-once results for apclip-batch: committed part files, a completed set, one merged output.

While a job runs, every batch of rows the driver receives is committed as its own Parquet part file
(`<output>.parts/part-*.parquet`, written with atomic_write: a part is either whole or absent). The
completed set is the `path` column of the committed parts plus the merged output of earlier runs, so
a rerun after a kill skips exactly the videos already written and redoes the rest. When every input
has a row, the parts and the previous output are merged (deduplicated by path, sorted) into the
output file, Parquet or JSON lines by its suffix, then the parts are removed. A crash between the
merge and the removal leaves rows that the next merge deduplicates.
"""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterable

from apclip.errors import ApclipError
from apclip.extras import require
from apclip.fileio import atomic_write

PART_GLOB = "part-*.parquet"


def _schema():
    pa = require("pyarrow", "scale", "apclip-batch")
    top = pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))
    # The fields of apclip-infer --json (Prediction.to_dict), then the batch job's own.
    return pa.schema([
        ("source", pa.string()), ("top", top), ("backend", pa.string()), ("scorer", pa.string()),
        ("protocol", pa.string()),
        ("frames", pa.int64()), ("approximate", pa.bool_()), ("distinct_frames", pa.int64()),
        ("timings_ms", pa.map_(pa.string(), pa.float64())),
        ("path", pa.string()), ("duration", pa.float64()), ("error", pa.string()),
    ])


class ResultStore:
    def __init__(self, output: str | Path):
        self.output = Path(output)
        if self.output.suffix.lower() not in (".parquet", ".jsonl"):
            raise ApclipError(f"--output {output}: name a .parquet or .jsonl file")
        if self.output.is_dir():
            raise ApclipError(f"--output {output} is a folder: name a .parquet or .jsonl file")
        self.parts = self.output.with_name(self.output.name + ".parts")
        self.schema = _schema()

    # -- reading --------------------------------------------------------------------------------
    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob(PART_GLOB)) if self.parts.is_dir() else []

    def _read_output(self) -> list[dict[str, Any]]:
        if not self.output.exists():
            return []
        try:
            if self.output.suffix.lower() == ".jsonl":
                with open(self.output, encoding="utf-8") as f:
                    return [_from_json(json.loads(line)) for line in f if line.strip()]
            pq = require("pyarrow.parquet", "scale", "apclip-batch")
            return pq.read_table(self.output).to_pylist()
        except (OSError, ValueError) as exc:
            raise ApclipError(f"cannot read the existing output {self.output} ({exc}); move it away to start over") from None

    def _read_parts(self) -> list[dict[str, Any]]:
        pq = require("pyarrow.parquet", "scale", "apclip-batch")
        return [row for part in self._part_files() for row in pq.read_table(part).to_pylist()]

    def completed(self) -> set[str]:
        """Paths that already have a committed row (this run's parts and earlier runs' output)."""
        return {row["path"] for row in self._read_output()} | {row["path"] for row in self._read_parts()}

    # -- writing --------------------------------------------------------------------------------
    def commit(self, rows: Iterable[dict[str, Any]]) -> int:
        """Commit rows as one new part file; returns how many rows it holds."""
        pa = require("pyarrow", "scale", "apclip-batch")
        pq = require("pyarrow.parquet", "scale", "apclip-batch")
        rows = list(rows)
        if not rows:
            return 0
        self.parts.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(rows, schema=self.schema)
        with atomic_write(self.parts / f"part-{uuid.uuid4().hex}.parquet", mode=None) as tmp:
            pq.write_table(table, str(tmp))
        return len(rows)

    def merge(self) -> int:
        """Earlier output + committed parts -> the output file (one row per path, sorted); parts removed."""
        from apclip.engine.cli.outputs import finite_json

        pa = require("pyarrow", "scale", "apclip-batch")
        pq = require("pyarrow.parquet", "scale", "apclip-batch")
        by_path: dict[str, dict[str, Any]] = {}
        for row in self._read_output() + self._read_parts():
            by_path.setdefault(row["path"], row)
        rows = [by_path[p] for p in sorted(by_path)]
        self.output.parent.mkdir(parents=True, exist_ok=True)
        if self.output.suffix.lower() == ".jsonl":
            with atomic_write(self.output, "w") as f:
                for row in rows:
                    f.write(json.dumps(finite_json(_to_json(row)), ensure_ascii=False, allow_nan=False) + "\n")
        else:
            with atomic_write(self.output, mode=None) as tmp:
                pq.write_table(pa.Table.from_pylist(rows, schema=self.schema), str(tmp))
        shutil.rmtree(self.parts, ignore_errors=True)
        return len(rows)


def _to_json(row: dict[str, Any]) -> dict[str, Any]:
    """A row as apclip-infer --json writes it (timings_ms an object), plus path, duration, error."""
    out = dict(row)
    timings = out.get("timings_ms")
    out["timings_ms"] = dict(timings) if timings is not None else {}
    return out


def _from_json(record: dict[str, Any]) -> dict[str, Any]:
    row = dict(record)
    row["timings_ms"] = list((record.get("timings_ms") or {}).items())
    return row
