"""apclip-bench compare: side-by-side ratios of benchmark JSON files (latency, kernel or parity).

Rows are matched by (contender, stage); the first file is the baseline and every other column is
its median over the baseline's. Separate invocations include whatever else the machines were doing
(the load averages are printed): ratios of contenders timed within one run are the steadier figure.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from apclip.errors import ApclipError


class CompareError(ApclipError):
    pass


def load_report(path: str | os.PathLike) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CompareError(f"{path} does not exist: pass JSON files written by apclip-bench --json") from None
    except (OSError, ValueError) as exc:
        raise CompareError(f"{path} is not readable JSON ({exc}); pass files written by apclip-bench --json") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise CompareError(f"{path} has no 'rows': it was not written by apclip-bench --json")
    return data


def medians(report: dict[str, Any]) -> dict[tuple[str, str], float]:
    """(contender, stage) -> milliseconds (latency and kernel rows: median_ms; parity rows: ms_per_clip)."""
    out = {}
    for row in report["rows"]:
        value = row.get("median_ms", row.get("ms_per_clip"))
        if isinstance(value, (int, float)):
            out[(str(row.get("contender")), str(row.get("stage", "ms per clip")))] = float(value)
    return out


def compare(paths: list[str | os.PathLike]) -> tuple[str, dict[str, Any]]:
    """The table and its JSON form."""
    if len(paths) < 2:
        raise CompareError("compare needs at least two JSON files (the first is the baseline)")
    reports = [load_report(p) for p in paths]
    kinds = {r.get("benchmark") for r in reports}
    if len(kinds) > 1:
        raise CompareError(f"these files hold different benchmarks ({', '.join(sorted(map(str, kinds)))}); "
                           "compare files of one kind")
    values = [medians(r) for r in reports]
    keys = list(values[0]) + [k for v in values[1:] for k in v if k not in values[0]]
    keys = list(dict.fromkeys(keys))
    names = [Path(p).name for p in paths]
    header = f"{'stage':<22} {'contender':<17} {names[0][:12]:>12}" + "".join(
        f" {n[:12]:>12} {'ratio':>7}" for n in names[1:])
    lines = [header]
    rows = []
    for contender, stage in keys:
        base = values[0].get((contender, stage))
        line = f"{stage:<22} {contender:<17} {_ms(base):>12}"
        row: dict[str, Any] = {"contender": contender, "stage": stage, "median_ms": [base]}
        row["ratio"] = [1.0 if base else None]
        for v in values[1:]:
            got = v.get((contender, stage))
            ratio = got / base if got is not None and base else None
            line += f" {_ms(got):>12} {('-' if ratio is None else f'{ratio:.2f}'):>7}"
            row["median_ms"].append(got)
            row["ratio"].append(ratio)
        lines.append(line)
        rows.append(row)
    lines.append("")
    lines.append("ratio = file / first file (medians, ms). Separate runs carry the machines' noise:")
    for name, report in zip(names, reports):
        machine = report.get("machine") or {}
        load = machine.get("load_average") or []
        cpu = (machine.get("cpu") or {}).get("cpu") or "unknown CPU"
        gpu = (machine.get("gpu") or {}).get("name") or "no GPU"
        lines.append(f"  {name}: {cpu}, {gpu}, load average {' '.join(f'{x:.2f}' for x in load) or 'unknown'}")
    return "\n".join(lines), {"benchmark": "compare", "files": [str(p) for p in paths], "rows": rows}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
