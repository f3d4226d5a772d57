"""Running apclip-infer in-process from the CLI tests, and reading its JSON lines back."""
from __future__ import annotations

import json
from pathlib import Path

from apclip.engine.cli.infer import main


def run(capsys, *argv) -> tuple[int, str, str]:
    """apclip-infer ARGV in this process -> (exit status, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
