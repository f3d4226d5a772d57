"""One apclip-infer run: checks before any work, the bundle loaded once, every source predicted,
outputs written (table, JSON lines, CSV, HTML report, overlay video), a summary at the end."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import IO, Callable, Iterable

from apclip.cli_common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, UsageError
from apclip.errors import ApclipError
from apclip.safe_text import terminal_safe

from apclip.engine.video.errors import SourceError
from apclip.engine.predictions import Prediction, WindowPrediction
from apclip.engine.video.sources_list import SourceItem, expand_sources, is_live

DEFAULT_WINDOW = 2.0
DEFAULT_STRIDE = 1.0


class _Warnings:
    """Each advisory said once per run (a stream can produce thousands of windows)."""

    def __init__(self) -> None:
        self._said: set[str] = set()

    def once(self, key: str, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            print(f"apclip-infer: warning: {message}", file=sys.stderr)


class InferRun:
    def __init__(self, args: argparse.Namespace, log: Callable[[str], None]):
        self.args = args
        self.log = log
        self.items: list[SourceItem] = []
        self.mode = "clip"
        self.warn = _Warnings()
        self.json_file = None
        self.csv_file = None
        # The human table goes to stderr when stdout carries JSON lines (--json -).
        self.table: IO[str] = sys.stdout
        self.rec = None
        self.bank = None

    # -- before any work --------------------------------------------------------------------
    def prepare(self) -> None:
        """Refuse what cannot work before loading a bundle or decoding a frame."""
        args = self.args
        if args.topk < 1:
            raise UsageError(f"--topk {args.topk}: show at least 1 class")
        from apclip.limits import MAX_FPS, MAX_SECONDS, MIN_SECONDS, check_range, max_threads

        for flag, value in (("--window", args.window), ("--stride", args.stride), ("--fps", args.fps)):
            if value is not None and value <= 0:
                raise UsageError(f"{flag} {value:g}: must be positive")
        check_range("--window", args.window, MIN_SECONDS, MAX_SECONDS, UsageError)
        check_range("--stride", args.stride, MIN_SECONDS, MAX_SECONDS, UsageError)
        check_range("--fps", args.fps, 0.1, MAX_FPS, UsageError)
        if args.threads is not None and args.threads > max_threads():
            raise UsageError(f"--threads {args.threads}: this machine has {os.cpu_count()} CPUs "
                             f"(use at most {max_threads()})")
        if args.template is not None:
            from apclip.scoring_protocol import check_template

            try:
                check_template(args.template)
            except ValueError as exc:
                raise UsageError(f"--template: {exc}") from None
        if args.threads is not None and args.threads < 1:
            raise UsageError(f"--threads {args.threads}: use 1 or more (or leave it out for all cores)")
        if args.ckpt and not _is_file(args.ckpt):
            raise UsageError(f"--ckpt {args.ckpt} does not exist")
        self.items = expand_sources(args.sources, recursive=args.recursive)
        if not self.items:
            raise UsageError("no sources to run")
        live = [item.path for item in self.items if is_live(item.path)]
        if live and len(self.items) > 1:
            raise UsageError(f"{live[0]} is a live source: run it on its own (one camera or stream per run)")
        self.mode = args.mode or ("stream" if live else "clip")
        single = len(self.items) == 1
        if self.mode == "clip" and live:
            raise UsageError(f"{live[0]} is a live source without an end: use --mode stream")
        if self.mode == "stream" and not single:
            raise UsageError(f"--mode stream runs one source; {len(self.items)} were given")
        if single and self.items[0].missing and not live:
            raise SourceError(f"video file not found: {self.items[0].path}" if self.items[0].missing == "not found"
                              else f"{self.items[0].path}: {self.items[0].missing}")
        if args.out_video:
            from apclip.engine.cli.overlay import overlay_fourcc

            overlay_fourcc(args.out_video)
            if not single:
                raise UsageError(f"--out-video draws one source; {len(self.items)} were given (use --report)")
            if live:
                raise UsageError(f"--out-video needs a file or image folder, not the live source {live[0]}")
        for flag, value in (("--report", args.report), ("--csv", args.csv_out)):
            if value and self.mode == "stream":
                raise UsageError(f"{flag} is written in clip mode; drop --mode stream")
        if args.report and not args.report.lower().endswith((".html", ".htm")):
            raise UsageError(f"--report {args.report}: give an .html file name")
        from apclip.engine.cli.outputs import refuse_inputs_as_outputs

        refuse_inputs_as_outputs({"--out-video": args.out_video, "--json": args.json_out, "--csv": args.csv_out,
                                  "--report": args.report},
                                 [item.path for item in self.items] + [a for a in (args.bundle, args.labels,
                                                                                   args.prompts, args.ckpt) if a])
        self._advise()
        if args.json_out == "-":
            self.table = sys.stderr

    def _advise(self) -> None:
        """Options that will have no effect, said once before the run."""
        args = self.args
        if self.mode == "clip" and (args.window is not None or args.stride is not None):
            self.warn.once("window", "--window/--stride apply to --mode stream only; clip mode samples the whole video")
        if self.mode == "stream" and args.explain and not args.json_out:
            self.warn.once("explain", "--explain in stream mode is written only to --json; add --json FILE")
        if args.prompts and not args.labels and not (args.report or args.explain):
            self.warn.once("prompts", "--prompts without --labels has no effect: the bundle's labels keep their "
                                      "exported prompts (--prompts serves labels added with --labels, and "
                                      "attributes in --explain / --report)")
        if args.fps is not None and not any(_is_dir(item.path) for item in self.items):
            self.warn.once("fps", "--fps applies to image-folder sources only; videos keep their own frame rate")

    # -- the run ------------------------------------------------------------------------------
    def load(self) -> None:
        args = self.args
        if args.bpe_vocab:
            from apclip.tokenizer import use_vocab

            use_vocab(args.bpe_vocab)
        from apclip.labels import read_labels

        from apclip.engine.recognizer import Recognizer

        labels = read_labels(args.labels, split_camel=args.split_camel_case) if args.labels else None
        self.rec = Recognizer.from_bundle(args.bundle, args.backend, labels, prompts=args.prompts,
                                          scorer=args.scorer, threads=args.threads, ckpt=args.ckpt, base=args.base,
                                          topk=args.topk, use_cache=args.cache, template=args.template,
                                          precision=getattr(args, "precision", "auto"),
                                          log=self.log)
        if args.prompts and (args.report or args.explain):
            from apclip.prompt_bank import load_prompt_bank

            self.bank = load_prompt_bank(args.prompts)
        self.log(f"bundle {args.bundle}: {len(self.rec.labels)} classes, runner {self.rec.backend}, "
                 f"scorer {self.rec.scorer.name}, mode {self.mode}")

    def execute(self) -> int:
        self.load()
        from apclip.engine.cli.outputs import CsvResults, json_lines

        args = self.args
        live = is_live(self.items[0].path)
        if args.json_out:
            self.json_file = json_lines(args.json_out, live)
        if args.csv_out:
            from apclip.engine.cli.multi_source import CSV_FIELDS

            self.csv_file = CsvResults(args.csv_out, CSV_FIELDS)
        if self.mode == "stream":
            return self._stream()
        return self._clips()

    def _clips(self) -> int:
        from apclip.engine.cli.explain_view import prompt_attributes
        from apclip.engine.cli.multi_source import csv_row, prediction_record, run_sources, skipped_row

        args = self.args
        results: list[tuple[Prediction, SourceItem]] = []
        explain = args.explain or bool(args.report)
        multi = len(self.items) > 1
        attributes = prompt_attributes(self.bank)
        seen = 0  # sources finished, done or skipped, for the [i/n] counter

        def on_prediction(pred: Prediction, item: SourceItem) -> None:
            nonlocal seen
            seen += 1
            results.append((pred, item))
            record = prediction_record(pred, item)
            if multi:
                print(format_row(pred, item, seen, len(self.items)), file=self.table, flush=True)
                if args.explain:
                    print(format_prediction(pred, explain=True, header=False, attributes=attributes), file=self.table,
                          flush=True)
            else:
                print(format_prediction(pred, explain=args.explain, attributes=attributes), file=self.table, flush=True)
            if self.json_file:
                self.json_file.write(record)
            if self.csv_file:
                self.csv_file.write(csv_row(record))

        def on_skip(item: SourceItem, reason: str) -> None:
            nonlocal seen
            seen += 1
            print(f"apclip-infer: skipped [{seen}/{len(self.items)}]: {reason}", file=sys.stderr)
            if self.csv_file:
                self.csv_file.write(skipped_row(item, reason))

        if not multi:
            item = self.items[0]
            with _stage_bar(self.args, item.path) as on_stage:
                try:
                    pred = self.rec.predict(item.path, explain=explain, on_stage=on_stage, fps=args.fps)
                except KeyboardInterrupt:
                    self.discard()
                    self.log("interrupted; nothing was written")
                    return EXIT_INTERRUPTED
            on_prediction(pred, item)
            skipped, interrupted = [], False
        else:
            summary = run_sources(self.rec, self.items, explain=explain, fps=args.fps, strict=args.strict,
                                  on_prediction=on_prediction, on_skip=on_skip)
            skipped, interrupted = summary.skipped, summary.interrupted
            if not args.quiet:
                print(summary.line(), file=sys.stderr)
        # A CSV of only skipped rows still says what failed; JSON lines hold predictions only.
        self._finish_files(bool(results), bool(results or skipped))
        if args.report and results:
            self._write_report(results)
        if args.out_video and results:
            self._write_overlay([results[0][0]])
        if interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILURE if skipped else EXIT_OK

    def _stream(self) -> int:
        args = self.args
        source = self.items[0].path
        window = args.window if args.window is not None else DEFAULT_WINDOW
        stride = args.stride if args.stride is not None else DEFAULT_STRIDE
        # Overlay needs every window; otherwise keep only the last, so a camera can run for days.
        predictions: list[Prediction] = []
        count = 0
        interrupted = False
        start = time.perf_counter()
        try:
            for pred in _with_progress(self.rec.stream(source, window=window, stride=stride, explain=args.explain,
                                                       fps=args.fps), args, source):
                if pred.distinct_frames < pred.sampled_frames:
                    self.warn.once("short-window", f"a {window:g}s window holds {pred.distinct_frames} distinct "
                                                   f"frame(s), fewer than the {pred.sampled_frames} it samples: "
                                                   f"frames repeat (use a longer --window)")
                predictions = predictions + [pred] if args.out_video else [pred]
                count += 1
                print(format_window(pred), file=self.table, flush=True)
                if self.json_file:
                    self.json_file.write(pred.to_dict())
        except KeyboardInterrupt:
            interrupted = True
        self._finish_files(bool(count), bool(count))
        if args.out_video and predictions:
            self._write_overlay(predictions)
        elapsed = time.perf_counter() - start
        self.log(f"{'interrupted: ' if interrupted else ''}{count} window(s) in {elapsed:.1f}s"
                 + (f", covering {predictions[-1].end:.1f}s of {source}" if predictions else ""))
        return EXIT_OK  # Ctrl-C is how a camera run ends: the windows so far are kept

    # -- outputs ----------------------------------------------------------------------------
    def _finish_files(self, any_prediction: bool, any_row: bool) -> None:
        for target, keep in ((self.json_file, any_prediction), (self.csv_file, any_row)):
            if target is None:
                continue
            if keep:
                target.commit()
            else:  # interrupted before the first prediction: no file rather than an empty one
                target.discard()
        self.json_file = self.csv_file = None

    def discard(self) -> None:
        for target in (self.json_file, self.csv_file):
            if target is not None:
                target.discard()
        self.json_file = self.csv_file = None

    def _write_report(self, results: list[tuple[Prediction, SourceItem]]) -> None:
        from apclip.engine.cli.explain_view import prompt_attributes
        from apclip.engine.cli.report_html import collect, write_report

        crops = self.rec.spec.crops
        videos = []
        for pred, item in results:
            try:
                videos.append(collect(pred, item.path, crops, self.args.fps))
            except ApclipError as exc:  # the prediction stands; only its thumbnails are missing
                print(f"apclip-infer: warning: no thumbnails for {item.path}: {exc}", file=sys.stderr)
                from apclip.engine.cli.report_html import ReportVideo

                videos.append(ReportVideo(item.path, pred, crops))
        write_report(self.args.report, videos, prompt_attributes(self.bank))
        self.log(f"wrote {self.args.report} ({len(videos)} video(s))")

    def _write_overlay(self, predictions: list[Prediction]) -> None:
        from apclip.engine.cli.overlay import CODEC_NAMES, write_overlay

        result = write_overlay(self.items[0].path, self.args.out_video, predictions, self.args.topk,
                               fps=self.args.fps)
        if result.note:
            print(f"apclip-infer: note: {result.note}", file=sys.stderr)
        self.log(f"wrote {self.args.out_video} ({result.frames} frames, {CODEC_NAMES.get(result.codec, result.codec)})")


def _is_file(path: str) -> bool:
    return os.path.isfile(path)


def _is_dir(path: str) -> bool:
    return os.path.isdir(path)


# -- what a person reads --------------------------------------------------------------------------
def distinct_note(pred: Prediction) -> str:
    if pred.sampled_frames and pred.distinct_frames < pred.sampled_frames:
        noun = "frame" if pred.distinct_frames == 1 else "frames"
        return f" ({pred.distinct_frames} distinct {noun} sampled {pred.sampled_frames} times)"
    return ""


def format_prediction(pred: Prediction, explain: bool = False, header: bool = True,
                      attributes: dict[tuple[str, str], str] | None = None) -> str:
    from apclip.engine.cli.explain_view import format_explain_summary

    approx = " (approximate sampling: frame count unknown or wrong)" if pred.approximate else ""
    timings = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in pred.timings.items())
    lines = []
    if header:
        lines = [f"{pred.source}: {pred.frames} frames{distinct_note(pred)}, {pred.backend} + {pred.scorer} "
                 f"({pred.protocol}){approx} [{timings}]", f"  {'rank':>4s}  {'score':>8s}  label"]
        lines += [f"  {i + 1:4d}  {t.score:8.4f}  {t.label}" for i, t in enumerate(pred.top)]
    if explain and pred.explanations:
        lines += format_explain_summary(pred.explanations, attributes=attributes)
    return "\n".join(terminal_safe(line) for line in lines)  # labels and prompts may carry escape sequences


def format_row(pred: Prediction, item: SourceItem, index: int, total: int) -> str:
    """One line per source when a run has many."""
    top = " | ".join(f"{t.label} {t.score:.4f}" for t in pred.top)
    width = len(str(total))
    return f"[{index:{width}d}/{total}] {item.path}: {top}{distinct_note(pred)}"


def format_window(pred: WindowPrediction) -> str:
    top = " | ".join(f"{t.label} {t.score:.3f}" for t in pred.top)
    return terminal_safe(f"[{pred.start:8.2f}s - {pred.end:8.2f}s]  {top}")


@contextlib.contextmanager
def _stage_bar(args, source: str):
    """Clip mode's progress (decode, encode, score) on stderr, for files when stdout is a terminal."""
    if args.quiet or is_live(source) or not sys.stdout.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=3, desc="decode", bar_format="{desc:8s} {bar} {n_fmt}/{total_fmt} [{elapsed}]",
              file=sys.stderr, leave=False) as bar:
        def on_stage(stage: str) -> None:
            if stage != "decode":
                bar.update(1)
            bar.set_description_str(stage)

        yield on_stage


def _with_progress(preds: Iterable[WindowPrediction], args, source: str) -> Iterable[WindowPrediction]:
    """A progress bar (on stderr, so stdout stays parseable) for files when stdout is a terminal."""
    if args.quiet or is_live(source) or not sys.stdout.isatty():
        yield from preds
        return
    from tqdm import tqdm

    with tqdm(desc="windows", unit="win", file=sys.stderr, leave=False) as bar:
        for pred in preds:
            bar.update(1)
            yield pred

