"""apclip-infer --stream SRC [SRC ...]: many sources (files, cameras, RTSP/HTTP URLs) through one model.

Each window is a table line `source [start - end] top-k` and, with --json, a JSON line carrying the
source and its number (`stream`); what happens to the sources (opened, lost, reconnected, windows
dropped because encoding fell behind) is one line each on stderr; a summary per source ends the run.
Exit status: 0 when every source ran (Ctrl-C is how a camera run ends), 1 when one failed.
"""
from __future__ import annotations

import sys
import time

from apclip.cli_common import EXIT_FAILURE, EXIT_OK, UsageError
from apclip.safe_text import terminal_safe

from apclip.engine.cli.infer_run import DEFAULT_STRIDE, DEFAULT_WINDOW, InferRun, format_window
from apclip.engine.stream.feeds import FeedEvent, is_live_spec

_DROP_REPORT_SECONDS = 10.0  # at most one "dropped" line per source this often
_MAX_BATCH = 4096  # crops per encoder call: more only costs memory (4096 x 224 x 224 x 3 floats = 2.4 GB)


class StreamRun(InferRun):
    def prepare(self) -> None:
        args = self.args
        self.sources = list(args.stream) + list(args.sources)
        self.mode = "stream"
        if args.topk < 1:
            raise UsageError(f"--topk {args.topk}: show at least 1 class")
        from apclip.limits import MAX_FPS, MAX_SECONDS, MIN_SECONDS, check_range, max_threads

        check_range("--window", args.window, MIN_SECONDS, MAX_SECONDS, UsageError)
        check_range("--stride", args.stride, MIN_SECONDS, MAX_SECONDS, UsageError)
        check_range("--fps", args.fps, 0.1, MAX_FPS, UsageError)
        check_range("--max-batch", args.max_batch, 1, _MAX_BATCH, UsageError)
        if args.threads is not None and not 1 <= args.threads <= max_threads():
            raise UsageError(f"--threads {args.threads}: use 1 to {max_threads()} (or leave it out for all cores)")
        if args.mode == "clip":
            raise UsageError("--stream runs stream mode; drop --mode clip")
        for flag, value in (("--out-video", args.out_video), ("--report", args.report), ("--csv", args.csv_out)):
            if value:
                raise UsageError(f"{flag} is not written with --stream (use --json)")
        from apclip.engine.cli.outputs import refuse_inputs_as_outputs

        refuse_inputs_as_outputs({"--json": args.json_out},
                                 self.sources + [a for a in (args.bundle, args.labels, args.prompts, args.ckpt) if a])
        if args.json_out == "-":
            self.table = sys.stderr

    def execute(self) -> int:
        from apclip.engine.cli.outputs import json_lines
        from apclip.engine.stream.engine import StreamSettings
        from apclip.engine.stream.feeds import FeedOptions

        self.load()
        args = self.args
        window = args.window if args.window is not None else DEFAULT_WINDOW
        stride = args.stride if args.stride is not None else DEFAULT_STRIDE
        if args.json_out:
            self.json_file = json_lines(args.json_out, any(is_live_spec(s) for s in self.sources))
        settings = StreamSettings(window, stride, max_batch=args.max_batch, feed=FeedOptions(fps=args.fps))
        engine = self.rec.stream_many(self.sources, settings, topk=args.topk, explain=args.explain,
                                      on_event=self._event)
        if engine.lattice.snapped:
            self.warn.once("stride", f"--stride {stride:g} is no multiple of the frame spacing {window:g} / "
                                     f"{engine.lattice.frames} s: using {engine.lattice.stride:g} s so that windows "
                                     f"share frames")
        self._last_drop_line: dict[int, float] = {}
        count, interrupted, start = 0, False, time.perf_counter()
        try:
            for pred in engine:
                count += 1
                print(terminal_safe(f"{pred.source} {format_window(pred)}"), file=self.table, flush=True)
                if self.json_file:
                    self.json_file.write(pred.to_dict())
        except KeyboardInterrupt:
            interrupted = True
        self._finish_files(bool(count), bool(count))
        elapsed = time.perf_counter() - start
        for stats in engine.stats:
            self.log(terminal_safe(_summary(stats.to_dict())))
        self.log(f"{'interrupted: ' if interrupted else ''}{count} window(s) from {len(self.sources)} source(s) in "
                 f"{elapsed:.1f}s; {engine.frames_per_window:.2f} frames encoded per window, "
                 f"{engine.encoder_calls} encoder call(s)")
        if interrupted:
            return EXIT_OK  # Ctrl-C is how a camera run ends: the windows so far are kept
        return EXIT_FAILURE if any(s.status == "failed" for s in engine.stats) else EXIT_OK

    def _event(self, event: FeedEvent) -> None:
        if event.kind in ("opened", "ended"):
            self.log(terminal_safe(event.message))
            return
        if event.kind == "dropped":
            now = time.monotonic()
            if now - self._last_drop_line.get(event.feed, -1e9) < _DROP_REPORT_SECONDS:
                return
            self._last_drop_line[event.feed] = now
        prefix = "error" if event.kind == "failed" else "warning"
        print(terminal_safe(f"apclip-infer: {prefix}: {event.message}"), file=sys.stderr, flush=True)


def _summary(s: dict) -> str:
    lag = f", lag p50 {s['lag_ms']['p50']:.0f} ms p99 {s['lag_ms']['p99']:.0f} ms" if s["lag_ms"] else ""
    extra = "".join(f", {s[k]} {k}" for k in ("dropped", "interrupted", "reconnects") if s[k])
    error = f": {s['error']}" if s["error"] else ""
    return f"{s['source']}: {s['status']}{error}; {s['windows']} window(s){extra}{lag}"
