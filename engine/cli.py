"""apclip-infer: recognise actions in a video file, image folder, camera or stream (no torch needed)."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import IO, Iterable, Iterator

from apclip.errors import ApclipError
from apclip.fileio import AtomicFile

from apclip.engine.predictions import Prediction, WindowPrediction
from apclip.engine.runners import BACKENDS
from apclip.engine.scorers import SCORERS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="apclip-infer",
                                description="Recognise actions with an apclip bundle (from apclip-export).")
    p.add_argument("source", help="video file, image folder, camera index (0) or rtsp/http(s) URL")
    p.add_argument("--bundle", default="bundle", help="bundle directory (default: bundle)")
    p.add_argument("--labels", help="labels file; labels not in the bundle are encoded at run time")
    p.add_argument("--prompts", help="prompt bank JSON for labels not in the bundle (else the template)")
    p.add_argument("--template", help="text of run-time labels without bank entries, {} marks the label, e.g. "
                                      "\"a photo of a {}.\" (default: the bundle's)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="vision/text runner (default auto: ORT CUDA when available, else ORT CPU)")
    p.add_argument("--scorer", default="auto", choices=SCORERS,
                   help="MAKA scorer (default auto: Triton kernel on CUDA, else numpy)")
    p.add_argument("--ckpt", help="checkpoint the bundle was exported from (only for --backend torch)")
    p.add_argument("--base", help="base OpenAI CLIP file for a ViFi-CLIP --ckpt")
    p.add_argument("--topk", type=int, default=5, help="classes to show (default 5)")
    p.add_argument("--mode", choices=("clip", "stream"),
                   help="clip: one multi-view prediction (default for files and folders); "
                        "stream: a prediction per sliding window (default for cameras and URLs)")
    p.add_argument("--window", type=float, default=2.0, help="stream window span in seconds (default 2)")
    p.add_argument("--stride", type=float, default=1.0, help="stream window stride in seconds (default 1)")
    p.add_argument("--json", dest="json_out", help="write one JSON object per prediction (JSON lines)")
    p.add_argument("--out-video", help="write the input with the current top-k drawn on each frame")
    p.add_argument("--explain", action="store_true", help="best-matching prompt of every frame per top class")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                   help="cache encoded run-time labels on disk (default on; $APCLIP_CACHE_DIR)")
    p.add_argument("--quiet", action="store_true", help="print only predictions")
    p.add_argument("--bpe-vocab", help="CLIP's bpe_simple_vocab_16e6.txt.gz (default: $APCLIP_BPE_VOCAB, "
                                       "else the installed open_clip_torch's)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def is_live(source: str) -> bool:
    return (source.isdigit() and not os.path.exists(source)) or ("://" in source and not source.startswith("file://"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr))
    mode = args.mode or ("stream" if is_live(args.source) else "clip")
    # Overlay needs every window; otherwise keep only the last, so a camera can run for days.
    predictions: list[Prediction] = []
    count = 0
    json_file = None
    interrupted = False
    start = time.perf_counter()
    try:
        with _one_line_diagnostics(args.debug):
            check_arguments(args, mode)
            if args.bpe_vocab:
                from apclip.tokenizer import use_vocab

                use_vocab(args.bpe_vocab)
            from apclip.labels import read_labels

            from apclip.engine.recognizer import Recognizer

            labels = read_labels(args.labels) if args.labels else None
            rec = Recognizer.from_bundle(args.bundle, args.backend, labels, prompts=args.prompts, scorer=args.scorer,
                                         threads=args.threads, ckpt=args.ckpt, base=args.base, topk=args.topk,
                                         use_cache=args.cache, template=args.template, log=log)
            log(f"bundle {args.bundle}: {len(rec.labels)} classes, runner {rec.backend}, scorer {rec.scorer.name}, "
                f"mode {mode}")
            json_file = (_LiveLines if is_live(args.source) else _AtomicLines)(args.json_out) if args.json_out else None
            try:
                if mode == "clip":
                    with _stage_bar(args) as on_stage:
                        pred = rec.predict(args.source, explain=args.explain, on_stage=on_stage)
                    predictions, count = [pred], 1
                    print(format_prediction(pred, explain=args.explain))
                    if json_file:
                        json_file.write(pred.to_dict())
                else:
                    for pred in _with_progress(rec.stream(args.source, window=args.window, stride=args.stride,
                                                          explain=args.explain), args, mode):
                        if args.out_video:
                            predictions.append(pred)
                        else:
                            predictions = [pred]
                        count += 1
                        print(format_window(pred), flush=True)
                        if json_file:
                            json_file.write(pred.to_dict())
            except KeyboardInterrupt:
                interrupted = True
            if json_file and count:
                json_file.commit()
            elif json_file:  # interrupted before the first prediction: no file rather than an empty one
                json_file.discard()
            if args.out_video and predictions:
                from apclip.engine.overlay import write_overlay

                frames = write_overlay(args.source, args.out_video, predictions, args.topk)
                log(f"wrote {args.out_video} ({frames} frames)")
    except (ApclipError, OSError) as exc:
        if json_file:
            json_file.discard()
        if args.debug:
            raise
        print(f"apclip-infer: error: {_one_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, ImportError) else 1
    except KeyboardInterrupt:
        if json_file:
            json_file.discard()
        interrupted = True
    if mode == "stream":
        elapsed = time.perf_counter() - start
        log(f"{'interrupted: ' if interrupted else ''}{count} window(s) in {elapsed:.1f}s"
            + (f", covering {predictions[-1].end:.1f}s of {args.source}" if predictions else ""))
    return 130 if interrupted and mode == "clip" else 0


def check_arguments(args: argparse.Namespace, mode: str) -> None:
    """Refuse what cannot work before loading a bundle or decoding a frame."""
    if args.topk < 1:
        raise ApclipError(f"--topk {args.topk}: show at least 1 class")
    if args.window <= 0 or args.stride <= 0:
        raise ApclipError(f"--window {args.window:g} / --stride {args.stride:g}: both must be positive seconds")
    if args.template is not None:
        from apclip.scoring_protocol import check_template

        try:
            check_template(args.template)
        except ValueError as exc:
            raise ApclipError(f"--template: {exc}") from None
    if args.threads is not None and args.threads < 1:
        raise ApclipError(f"--threads {args.threads}: use 1 or more (or leave it out for all cores)")
    if mode == "clip" and is_live(args.source):
        raise ApclipError(f"{args.source} is a live source without an end: use --mode stream")
    if not is_live(args.source) and "://" not in args.source and not os.path.exists(args.source):
        # Before the bundle's files are hashed (hundreds of MB for ViT-B/16).
        raise ApclipError(f"video file not found: {args.source}")
    if args.out_video:
        from apclip.engine.overlay import overlay_fourcc

        overlay_fourcc(args.out_video)
        if is_live(args.source):
            raise ApclipError(f"--out-video needs a file or image folder, not the live source {args.source}")


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, ApclipError) and exc.filename:
        # os.replace(tmp, target) names the target second: the user knows the target, not the tmp file
        return f"{exc.filename2 or exc.filename}: {exc.strerror or exc}"
    return " ".join(str(exc).split())


@contextlib.contextmanager
def _one_line_diagnostics(debug: bool) -> Iterator[None]:
    """Warnings as one `apclip-infer: warning:` line; OpenCV's and FFmpeg's own console noise off
    (the errors raised for the same causes already name the source), unless --debug."""
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _show_warning
            os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # read by OpenCV on every open; -8: quiet
            with contextlib.suppress(Exception):
                import cv2

                cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        yield


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"apclip-infer: warning: {' '.join(str(message).split())}", file=sys.stderr)


def format_prediction(pred: Prediction, explain: bool = False) -> str:
    approx = " (approximate sampling: frame count unknown or wrong)" if pred.approximate else ""
    timings = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in pred.timings.items())
    lines = [f"{pred.source}: {pred.frames} frames, {pred.backend} + {pred.scorer} ({pred.protocol}){approx} "
             f"[{timings}]",
             f"  {'rank':>4s}  {'score':>8s}  label"]
    lines += [f"  {i + 1:4d}  {t.score:8.4f}  {t.label}" for i, t in enumerate(pred.top)]
    if explain and pred.explanations:
        for e in pred.explanations:
            if e.views is not None:  # vificlip: ViFi-CLIP scores views, not frames
                lines.append(f"  why '{e.label}' ({e.score:.4f}): per view, softmax probability (summed)")
                lines += [f"    view {v.view} frames {v.first_frame}-{v.last_frame} @ {v.start:7.2f}-{v.end:.2f}s  "
                          f"cos {v.similarity:.3f}  p {v.probability:.4f}  {v.prompt}" for v in e.views]
                continue
            lines.append(f"  why '{e.label}' ({e.score:.4f}): best prompt per frame")
            for f in e.frames:
                lines.append(f"    view {f.view} frame {f.frame:5d} @ {f.time:7.2f}s  {f.similarity:.3f}  {f.prompt}")
    return "\n".join(lines)


def format_window(pred: WindowPrediction) -> str:
    top = " | ".join(f"{t.label} {t.score:.3f}" for t in pred.top)
    return f"[{pred.start:8.2f}s - {pred.end:8.2f}s]  {top}"


@contextlib.contextmanager
def _stage_bar(args):
    """Clip mode's progress (decode, encode, score) on stderr, for files when stdout is a terminal."""
    if args.quiet or is_live(args.source) or not sys.stdout.isatty():
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


def _with_progress(preds: Iterable[WindowPrediction], args, mode: str) -> Iterable[WindowPrediction]:
    """A progress bar (on stderr, so stdout stays parseable) for files when stdout is a terminal."""
    if args.quiet or is_live(args.source) or not sys.stdout.isatty():
        yield from preds
        return
    from tqdm import tqdm

    with tqdm(desc="windows", unit="win", file=sys.stderr, leave=False) as bar:
        for pred in preds:
            bar.update(1)
            yield pred


def _json_target(path: str) -> Path:
    target = Path(path)
    if target.is_dir():
        raise ApclipError(f"--json {path} is a folder: give a file name, e.g. {target / 'predictions.jsonl'}")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


class _AtomicLines:
    """JSON lines written to a temporary file and renamed into place when the run ends."""

    def __init__(self, path: str):
        self.path = _json_target(path)
        self._target = AtomicFile(self.path, "w")
        self.file: IO[str] = self._target.file

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()

    def commit(self) -> None:
        self._target.commit()

    def discard(self) -> None:
        self._target.discard()


class _LiveLines(_AtomicLines):
    """For cameras and streams, which may run for days: lines are appended to the target itself and
    flushed one by one, so it can be followed while it grows; each line is a whole JSON object."""

    def __init__(self, path: str):
        self.path = _json_target(path)
        self.file = open(self.path, "a", encoding="utf-8")

    def commit(self) -> None:
        self.file.close()

    def discard(self) -> None:
        self.file.close()


if __name__ == "__main__":
    sys.exit(main())
