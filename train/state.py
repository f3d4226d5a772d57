"""A run folder: resolved config, JSON-lines log, resumable training state, best.pt.

    run/config.json   the resolved TrainConfig plus what the run derived (classes, videos, updates, tools)
    run/log.jsonl     one JSON object per logged update and per epoch (appended, flushed line by line)
    run/last.pt       everything `--resume` needs, rewritten atomically after every epoch and on Ctrl-C
    run/best.pt       apclip's checkpoint format (apclip.checkpoint.save_checkpoint), best validation top-1

last.pt holds the model, optimizer, scheduler and grad-scaler states, the position in the epoch (at an
optimizer-update boundary), torch's generator state and the bad videos met so far (every other random
draw is a function of the seed and the position). It is read back with torch.load(weights_only=True).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from apclip.errors import ApclipError
from apclip.fileio import atomic_write

STATE_FORMAT = "apclip-train-state"
STATE_VERSION = 1
CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
STATE_FILE = "last.pt"
BEST_FILE = "best.pt"


class RunError(ApclipError):
    """A run folder that cannot be started or resumed."""


def write_config(run: Path, config: dict[str, Any]) -> None:
    with atomic_write(run / CONFIG_FILE) as f:
        f.write(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def read_config(run: Path) -> dict[str, Any]:
    path = run / CONFIG_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{run} is not a training run (no {CONFIG_FILE}); start one without --resume") from None
    except (OSError, ValueError) as exc:
        raise RunError(f"run config {path} is unreadable ({exc})") from None


def save_state(run: Path, state: dict[str, Any]) -> Path:
    payload = {"format": STATE_FORMAT, "version": STATE_VERSION, **state}
    path = run / STATE_FILE
    with atomic_write(path, "wb") as f:
        torch.save(payload, f)
    return path


def load_state(run: Path) -> dict[str, Any]:
    path = run / STATE_FILE
    if not path.is_file():
        raise RunError(f"run {run} has no {STATE_FILE} to resume from (it stopped before its first checkpoint): "
                       "start it again without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file fails anywhere inside torch's reader
        raise RunError(f"training state {path} is unreadable ({type(exc).__name__}); start the run again") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or state.get("version", 0) > STATE_VERSION:
        raise RunError(f"{path} is not an apclip training state this version reads")
    return state


class JsonLog:
    """Appends one JSON object per line; every line is flushed, so the log can be followed live."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self._file = open(path, "a", encoding="utf-8") if enabled else None

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        record = {"time": round(time.time(), 3), **record}
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def memory_mb(device: torch.device) -> float:
    """Peak memory: CUDA allocator peak on a GPU, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    except (ImportError, OSError):
        return float("nan")
