"""How benchmarks/gpu_check.sh and gpu_backends_check.py report: PASS, FAIL, SKIP or TIMEOUT, never a skip as a pass.

Every check step exits with one of these codes, which the script records one line per step
("name<TAB>exit code<TAB>seconds") and this module turns into the summary and the script's exit status:

    0  PASS     every check of the step ran and passed
    1  FAIL     a check ran and failed (or the step crashed)
    2  SKIP     the step could not run here (no GPU, a package missing): nothing was checked
    3  PARTIAL  what ran passed, but some checks were skipped (reported as SKIP with the step's reason)
    124/137     TIMEOUT (killed by the step's time limit)

    python -m apclip.benchmarks.check_summary steps.tsv     prints the summary; exit 0 all PASS,
                                                            1 a FAIL or TIMEOUT, 2 nothing failed but something was skipped
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

EXIT_PASS, EXIT_FAIL, EXIT_SKIP, EXIT_PARTIAL = 0, 1, 2, 3
INFORMATIONAL = {"nvidia-smi"}  # a step that only prints what the machine is: its SKIP does not make a run incomplete


@dataclass(frozen=True)
class StepResult:
    name: str
    exit_code: int
    seconds: float = 0.0

    @property
    def status(self) -> str:
        if self.exit_code == EXIT_PASS:
            return "PASS"
        if self.exit_code in (124, 137):
            return "TIMEOUT"
        if self.exit_code == EXIT_SKIP:
            return "SKIP"
        if self.exit_code == EXIT_PARTIAL:
            return "SKIP (partly: what ran passed)"
        return "FAIL"


def check_exit_code(verdicts: Iterable[str]) -> int:
    """A check script's exit code from its own checks' verdicts (PASS, FAIL or SKIP each)."""
    verdicts = list(verdicts)
    if any(v == "FAIL" for v in verdicts):
        return EXIT_FAIL
    if verdicts and all(v == "SKIP" for v in verdicts):
        return EXIT_SKIP
    return EXIT_PARTIAL if any(v == "SKIP" for v in verdicts) else EXIT_PASS


def plugin_verdict(rows: Sequence[dict]) -> str:
    """The MAKA plugin check: PASS only when every row ran and passed its parity; a skipped row is SKIP."""
    if not rows or any(row.get("skipped") for row in rows):
        return "SKIP"
    return "PASS" if all(row.get("passed") is True for row in rows) else "FAIL"


def summarize(results: Sequence[StepResult]) -> tuple[list[str], int]:
    """(lines of the summary, exit status): 0 only when every step passed; 1 when one failed or timed out;
    2 when nothing failed but a check was skipped (the run is incomplete, not a pass)."""
    lines = [f"{r.name}: {r.status} in {r.seconds:.0f} s" for r in results]
    counted = [r for r in results if r.name not in INFORMATIONAL]
    failed = [r.name for r in counted if r.status in ("FAIL", "TIMEOUT")]
    skipped = [r.name for r in counted if r.status.startswith("SKIP")]
    passed = [r.name for r in counted if r.status == "PASS"]
    lines.append(f"{len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped"
                 + (f" (failed: {', '.join(failed)})" if failed else "")
                 + (f" (skipped: {', '.join(skipped)})" if skipped else ""))
    if failed:
        return lines + ["RESULT: FAIL"], EXIT_FAIL
    if skipped or not counted:
        return lines + ["RESULT: INCOMPLETE (skipped checks are not passes)"], EXIT_SKIP
    return lines + ["RESULT: PASS"], EXIT_PASS


def read_steps(path: str | Path) -> list[StepResult]:
    results = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            name, code, seconds = line.split("\t")
            results.append(StepResult(name, int(code), float(seconds)))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m apclip.benchmarks.check_summary steps.tsv", file=sys.stderr)
        return 2
    lines, code = summarize(read_steps(argv[0]))
    print("\n".join(lines))
    return code


if __name__ == "__main__":
    sys.exit(main())
