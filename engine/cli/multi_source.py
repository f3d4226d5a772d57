"""Many sources in one run: the bundle loaded once, the next video decoding while the current one
encodes (Recognizer.predict_many), a bad source reported in one line and skipped, and a summary.

`prediction_record(pred, item)` is the JSON-lines record of one source's prediction; apclip-infer's
--json and --csv (and apclip-batch / apclip-serve) use it so every tool emits the same fields.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from apclip.errors import ApclipError

from apclip.engine.predictions import Prediction
from apclip.engine.video.sources_list import SourceItem

CSV_FIELDS = ["source", "expected", "rank1", "score1", "top", "frames", "distinct_frames", "approximate",
              "decode_ms", "encode_ms", "score_ms", "status", "error"]


def prediction_record(pred: Prediction, item: SourceItem | None = None) -> dict[str, Any]:
    """The JSON object of one prediction: Prediction.to_dict() with the source path as given
    (and `expected`, the class index an mmaction2 list gave, when there was one)."""
    record = pred.to_dict()
    if item is not None:
        record["source"] = item.path
        if item.expected is not None:
            record["expected"] = item.expected
    return record


def csv_row(record: dict[str, Any]) -> dict[str, Any]:
    """A flat row of a prediction_record for --csv (top-k as `label:score;...`)."""
    timings = record.get("timings_ms", {})
    top = record.get("top", [])
    return {
        "source": record["source"], "expected": record.get("expected", ""),
        "rank1": top[0]["label"] if top else "", "score1": top[0]["score"] if top else "",
        "top": ";".join(f"{t['label']}:{t['score']:.6f}" for t in top),
        "frames": record.get("frames", ""), "distinct_frames": record.get("distinct_frames", ""),
        "approximate": record.get("approximate", ""),
        "decode_ms": timings.get("decode+preprocess", ""), "encode_ms": timings.get("encode", ""),
        "score_ms": timings.get("score", ""), "status": "ok", "error": "",
    }


def skipped_row(item: SourceItem, reason: str) -> dict[str, Any]:
    return {"source": item.path, "expected": item.expected or "", "status": "skipped", "error": reason}


@dataclass
class RunSummary:
    done: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, one-line reason)
    clips: int = 0  # multi-view clips scored (one per video)
    seconds: float = 0.0
    interrupted: bool = False

    def line(self) -> str:
        rate = f", {self.clips / self.seconds:.2f} clips/s" if self.seconds > 0 and self.clips else ""
        head = "interrupted: " if self.interrupted else ""
        return f"{head}{self.done} done, {len(self.skipped)} skipped in {self.seconds:.1f}s{rate}"


class StopRun(ApclipError):
    """--strict: the first source that fails ends the run."""


def one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, ApclipError) and exc.filename:
        return f"{exc.filename2 or exc.filename}: {exc.strerror or exc}"
    return " ".join(str(exc).split())


def run_sources(rec, items: Sequence[SourceItem], *, explain: bool = False, fps: float | None = None,
                strict: bool = False, on_prediction: Callable[[Prediction, SourceItem], None],
                on_skip: Callable[[SourceItem, str], None]) -> RunSummary:
    """Predict every item in order with `rec` (a Recognizer); the callbacks see each result as it comes.

    A missing or undecodable source calls on_skip (and, with strict, raises StopRun after it)."""
    summary = RunSummary()
    start = time.perf_counter()
    runnable = [i for i, item in enumerate(items) if not item.missing]
    position = 0  # predict_many reports results and errors in source order: runnable[position] is next
    reported = 0  # items[:reported] have been reported, so missing ones are said in their place

    def report_missing_before(index: int) -> None:
        nonlocal reported
        for item in items[reported:index]:
            _skip(summary, item, f"{item.path}: {item.missing}", on_skip, strict)
        reported = max(reported, index + 1)

    def next_item() -> SourceItem:
        nonlocal position
        index = runnable[position]
        position += 1
        report_missing_before(index)
        return items[index]

    def failed(source, exc: Exception) -> None:
        _skip(summary, next_item(), one_line(exc), on_skip, strict)

    try:
        for pred in rec.predict_many([items[i].path for i in runnable], explain=explain, fps=fps,
                                     on_error=failed):
            item = next_item()
            summary.done += 1
            summary.clips += 1
            on_prediction(pred, item)
        report_missing_before(len(items))
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        summary.seconds = time.perf_counter() - start
    return summary


def _skip(summary: RunSummary, item: SourceItem, reason: str, on_skip, strict: bool) -> None:
    summary.skipped.append((item.path, reason))
    on_skip(item, reason)
    if strict:
        raise StopRun(f"{reason} (--strict stops at the first bad source)")
