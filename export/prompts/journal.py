"""An append-only, fsync'd journal of LLM answers, so that an interrupted generation can resume.

Format: JSON Lines. The first line is a header naming the request settings' hash; every other
line is one validated answer {"label", "llm_prompt", "answer"}. Each line is flushed and fsync'd as
soon as its answer arrives, so a crash, kill or Ctrl-C loses at most the requests in flight. A
line cut short by a crash (no final newline) is dropped and the file truncated before appending.
Answers are keyed by (label, llm_prompt). The generator only asks for keys the journal lacks a valid
answer for, so a key appears twice only when an earlier line stopped validating (a hand edit); the
last line wins.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from apclip.errors import ApclipError

JOURNAL_FORMAT = "apclip-prompts-journal"
JOURNAL_VERSION = 1

AnswerKey = tuple[str, int]


class JournalError(ApclipError):
    pass


def read_journal(path: str | Path, settings_sha256: str) -> dict[AnswerKey, Any]:
    """Answers recorded at `path` (empty when it does not exist); refuses another run's journal."""
    path = Path(path)
    if not path.exists():
        return {}
    answers, _ = _parse(path, settings_sha256)
    return answers


def _parse(path: Path, settings_sha256: str) -> tuple[dict[AnswerKey, Any], int]:
    """(answers, length in bytes of the complete lines) of an existing journal."""
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1  # bytes after the last newline are a line a crash cut short
    lines = data[:complete].split(b"\n")[:-1]
    if not lines:
        return {}, 0
    try:
        header = json.loads(lines[0])
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != JOURNAL_FORMAT:
        raise JournalError(f"{path} is not an apclip-prompts journal; move it away or pass another --journal")
    if header.get("settings_sha256") != settings_sha256:
        raise JournalError(
            f"journal {path} was written with other settings (strategy, model, graph, templates, temperature "
            f"or seed: {header.get('summary', '?')}); rerun with those settings, or delete the journal "
            f"(or pass another --journal) to start over")
    answers: dict[AnswerKey, Any] = {}
    for number, line in enumerate(lines[1:], start=2):
        try:
            record = json.loads(line)
            key = (str(record["label"]), int(record["llm_prompt"]))
            answer = record["answer"]
        except (ValueError, KeyError, TypeError):
            raise JournalError(f"journal {path} line {number} is corrupt; delete that line (its answer will "
                               f"be requested again) and rerun") from None
        answers[key] = answer
    return answers, complete


class Journal:
    """Open for appending; use as a context manager."""

    def __init__(self, path: str | Path, settings_sha256: str, summary: str = ""):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self.answers, complete = _parse(self.path, settings_sha256)
            with open(self.path, "r+b") as f:
                f.truncate(complete)  # drop a torn last line so the next append starts a fresh line
        else:
            self.answers, complete = {}, 0
        self._file = open(self.path, "ab")
        if complete == 0:
            self._write({"format": JOURNAL_FORMAT, "version": JOURNAL_VERSION,
                         "settings_sha256": settings_sha256, "summary": summary})
            _fsync_directory(self.path.parent)

    def append(self, label: str, llm_prompt: int, answer: Any) -> None:
        key = (label, llm_prompt)
        if key in self.answers:
            raise JournalError(f"answer for {key} is already in journal {self.path}")  # a generator bug
        self._write({"label": label, "llm_prompt": llm_prompt, "answer": answer})
        self.answers[key] = answer

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n"
        self._file.write(line.encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _fsync_directory(path: Path) -> None:
    # Makes the new file's directory entry durable too; not possible on every platform.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
