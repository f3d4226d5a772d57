"""apclip-infer: recognise actions in video files, image folders, a camera or a stream (no torch needed).

This module parses the command line; engine/cli/infer_run.py runs it (sources from engine/video/sources_list.py,
many sources through engine/cli/multi_source.py, outputs in engine/cli/outputs.py and engine/cli/report_html.py).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from typing import Iterator

from apclip.cli_common import EXIT_FAILURE, EXIT_INTERRUPTED, add_version, exit_code, silence_broken_pipe
from apclip.errors import ApclipError

from apclip.engine.cli.infer_run import DEFAULT_STRIDE, DEFAULT_WINDOW, InferRun, format_prediction, format_window  # noqa: F401
from apclip.engine.runners.table import backend_choices, precision_choices
from apclip.engine.scoring.scorers import SCORERS
from apclip.engine.video.sources_list import is_live  # noqa: F401  (kept importable from here)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="apclip-infer",
                                description="Recognise actions with an apclip bundle (from apclip-export).",
                                epilog="SOURCE: video files, globs ('clips/*.mp4'), folders of videos (--recursive "
                                       "for subfolders), a folder holding only images (one video), @list.txt "
                                       "(one path per line, or mmaction2 'path label'), a camera index (0) or an "
                                       "rtsp/http(s) URL. Exit status: 0 ok, 1 failure or a skipped source, "
                                       "2 usage or missing package, 130 interrupted.")
    p.add_argument("sources", nargs="*", metavar="SOURCE", help="what to recognise (see below)")
    p.add_argument("--stream", nargs="+", metavar="SRC",
                   help="stream mode over one or many sources at once (files, cameras, rtsp/http URLs, any mix): "
                        "one model, frames of all sources encoded in shared batches, a JSON line per window "
                        "(docs/streaming.md)")
    p.add_argument("--max-batch", type=int, default=32,
                   help="--stream: most frame crops per encoder call, over all sources (default 32)")
    p.add_argument("--bundle", default="bundle", help="bundle directory (default: bundle)")
    p.add_argument("--labels", help="labels file; labels not in the bundle are encoded at run time")
    p.add_argument("--split-camel-case", action="store_true",
                   help="split CamelCase labels into words (UCF-101 classInd.txt: ApplyEyeMakeup -> Apply Eye Makeup)")
    p.add_argument("--prompts", help="prompt bank JSON for labels not in the bundle (else the template)")
    p.add_argument("--template", help="text of run-time labels without bank entries, {} marks the label, e.g. "
                                      "\"a photo of a {}.\" (default: the bundle's)")
    p.add_argument("--backend", default="auto", choices=backend_choices(),
                   help="vision/text runner (default auto: the fastest that runs here, trt > torch-cuda > ort-cuda "
                        "> ort; apclip-bench backends lists them and why not)")
    p.add_argument("--scorer", default="auto", choices=SCORERS,
                   help="MAKA scorer (default auto: Triton kernel on CUDA, else numpy)")
    p.add_argument("--precision", default="auto", choices=precision_choices(),
                   help="encoder precision (default auto: the backend's own, fp16 on trt and torch-cuda, else "
                        "fp32); int8 runs on ort (a bundle from apclip-export --precision fp32,int8) or trt")
    p.add_argument("--ckpt", help="checkpoint the bundle was exported from (for --backend torch and torch-cuda)")
    p.add_argument("--base", help="base OpenAI CLIP file for a ViFi-CLIP --ckpt")
    p.add_argument("--topk", type=int, default=5, help="classes to show (default 5)")
    p.add_argument("--mode", choices=("clip", "stream"),
                   help="clip: one multi-view prediction per source (default for files and folders); "
                        "stream: a prediction per sliding window (default for cameras and URLs; one source)")
    p.add_argument("--window", type=float, help=f"stream window span in seconds (default {DEFAULT_WINDOW:g})")
    p.add_argument("--stride", type=float, help=f"stream window stride in seconds (default {DEFAULT_STRIDE:g})")
    p.add_argument("--fps", type=float, help="frame rate of image-folder sources (default 30)")
    p.add_argument("--recursive", action="store_true", help="folders: also the videos in their subfolders")
    p.add_argument("--strict", action="store_true", help="stop at the first source that fails (default: skip it)")
    p.add_argument("--json", dest="json_out", help="write one JSON object per prediction (JSON lines; - for stdout, "
                                                   "which moves the table to stderr)")
    p.add_argument("--csv", dest="csv_out", help="write one CSV row per source (clip mode)")
    p.add_argument("--out-video", help="write the input with the current top-k drawn on each frame (one source)")
    p.add_argument("--explain", action="store_true",
                   help="per top class, the prompts its frames matched best (full detail in --json / --report)")
    p.add_argument("--report", help="write a self-contained HTML page: frames, top-k bars and the best prompt "
                                    "per frame per class (clip mode)")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                   help="cache encoded run-time labels on disk (default on; $APCLIP_CACHE_DIR)")
    p.add_argument("--quiet", action="store_true", help="print only predictions")
    p.add_argument("--bpe-vocab", help="CLIP's bpe_simple_vocab_16e6.txt.gz for bundles without their own copy "
                                       "(default: $APCLIP_BPE_VOCAB, else the installed open_clip_torch's)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return add_version(p)


def main(argv: list[str] | None = None) -> int:
    # Intermixed: `apclip-infer a.mp4 --bundle b c.mp4` gives both videos as SOURCE.
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if not args.sources and not args.stream:
        parser.error("give a SOURCE, or --stream SRC [SRC ...]")
    log = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr))
    run = InferRun(args, log)
    if args.stream:
        from apclip.engine.cli.stream_run import StreamRun

        run = StreamRun(args, log)
    try:
        with _one_line_diagnostics(args.debug):
            run.prepare()
            return run.execute()
    except BrokenPipeError:
        run.discard()
        return silence_broken_pipe()
    except (ApclipError, OSError) as exc:
        run.discard()
        if args.debug:
            raise
        print(f"apclip-infer: error: {_one_line(exc)}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        run.discard()
        print("apclip-infer: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug, not a user error: still one line unless --debug
        run.discard()
        if args.debug:
            raise
        print(f"apclip-infer: internal error: {type(exc).__name__}: {_one_line(exc)} "
              f"(run with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILURE


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


if __name__ == "__main__":
    sys.exit(main())
