"""apclip-bench: accuracy parity against the PyTorch reference, per-stage latency, comparisons, kernel.

    apclip-bench backends [BUNDLE] [--ckpt best.pt]                  what can run here, and why not the rest
    apclip-bench parity BUNDLE --ckpt best.pt [--backends LIST] [--videos DIR|LIST] [--json F]
    apclip-bench latency BUNDLE [--backends LIST] [--video V] [--batch N] [--runs N] [--warmup N] [--json F] [--plot F.png]
    apclip-bench compare A.json B.json [...] [--plot F.png]
    apclip-bench kernel [--k 400 600] [--b 1 8 64 256] [--json F]
    apclip-bench stream [--presets tiny,ViT-B-16] [--sources N] [--baseline] [--processes] [--realtime] [--json F]

Exit codes: 0 ok; 1 a contender failed parity (or an error); 2 usage, missing optional package or
missing GPU (kernel); 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from apclip.cli_common import UsageError, run_command
from apclip.errors import ApclipError



def _workdir_default() -> str:
    return os.path.join(tempfile.gettempdir(), "apclip-bench")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="apclip-bench", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    def common(q: argparse.ArgumentParser, ckpt_help: str) -> None:
        q.add_argument("bundle", help="bundle directory (from apclip-export)")
        q.add_argument("--ckpt", help=ckpt_help)
        q.add_argument("--base", help="base OpenAI CLIP file for a ViFi-CLIP --ckpt")
        q.add_argument("--backends", help="comma list of contenders, e.g. ort,torch-cuda:fp16,numpy "
                                          "(default: every one; see apclip-bench backends)")
        q.add_argument("--threads", type=int, help="CPU threads of ONNX Runtime (default: all cores)")
        q.add_argument("--json", dest="json_out", help="write everything measured to this JSON file")
        q.add_argument("--workdir", default=_workdir_default(), help="where generated videos are kept")
        q.add_argument("--quiet", action="store_true", help="no progress lines on stderr")

    q = sub.add_parser("backends", help="the backend x precision table: what can run here, and why not the rest")
    q.add_argument("bundle", nargs="?", help="bundle directory (some rows depend on its files; without one, "
                                             "only this machine's packages and devices are checked)")
    q.add_argument("--ckpt", help="checkpoint (the torch rows need one)")
    q.add_argument("--base", help="base OpenAI CLIP file for a ViFi-CLIP --ckpt")
    q.add_argument("--json", dest="json_out")

    q = sub.add_parser("parity", help="every contender against the torch fp32 reference")
    common(q, "the checkpoint the bundle was exported from (required: the reference)")
    q.add_argument("--videos", help="folder of videos or a text file listing them (default: a generated varied set)")
    q.add_argument("--count", type=int, default=16, help="generated videos without --videos (default 16)")
    q.add_argument("--reference-device", default="cpu", help="device of the torch fp32 reference (default cpu)")
    q.add_argument("--batch", type=int, default=32, help="vision batch (default 32)")
    for flag, what in (("--min-cosine", "embedding cosine of every frame"),
                       ("--max-score-diff", "largest |score - reference| (fp32 default 1e-4)"),
                       ("--min-top1", "top-1 agreement share over the videos")):
        q.add_argument(flag, action="append", metavar="[PRECISION=]X",
                       help=f"threshold: {what}; X for every precision or e.g. fp16=X (repeatable)")

    q = sub.add_parser("latency", help="per-stage latency of every contender on one video")
    common(q, "checkpoint (needed by the torch-based contenders)")
    q.add_argument("--video", help="video to time (default: a generated 4 s 720p video)")
    q.add_argument("--batch", type=int, help="vision batch (default: the clip's V*T images at once)")
    q.add_argument("--runs", type=int, default=5, help="timed runs per stage (default 5)")
    q.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    q.add_argument("--window", type=float, default=2.0, help="stream window, seconds (default 2)")
    q.add_argument("--stride", type=float, default=1.0, help="stream stride, seconds (default 1)")
    q.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True, help="time stream mode")
    q.add_argument("--large-classes", type=int, default=400, help="K of the synthetic score row (0: none)")
    q.add_argument("--large-prompts", type=int, default=36, help="P of the synthetic score row")
    q.add_argument("--plot", help="write a PNG of stage latency per contender")

    q = sub.add_parser("compare", help="ratios of benchmark JSON files, per stage and contender")
    q.add_argument("files", nargs="+", help="JSON files from --json (the first is the baseline)")
    q.add_argument("--json", dest="json_out")
    q.add_argument("--plot", help="write a PNG of the medians")

    q = sub.add_parser("kernel", help="the Triton MAKA kernel vs eager, torch.compile and the memory floor (GPU)")
    from apclip.benchmarks.kernel import add_arguments

    add_arguments(q)

    q = sub.add_parser("stream", help="stream mode: windows/s, frames encoded per window, lag, drops, RSS "
                                      "(many sources, encode-once vs re-encoding)")
    from apclip.benchmarks.stream_bench import add_arguments as add_stream_arguments

    add_stream_arguments(q)
    return p


def _write_json(path: str, data: dict[str, Any]) -> None:
    from apclip.fileio import atomic_write

    with atomic_write(path) as f:
        json.dump(data, f, indent=1, default=str)
        f.write("\n")


def _check_out(path: str | None, flag: str) -> None:
    """Fail before minutes of measuring, not after, when an output cannot be written."""
    if path and not Path(path).resolve().parent.is_dir():
        raise ApclipError(f"{flag} {path}: the folder {Path(path).parent} does not exist")


def check_output_paths(args: argparse.Namespace) -> None:
    """No output of any subcommand may be an input (apclip.output_guard), checked before measuring."""
    from apclip.output_guard import Input, Output, check_outputs

    outputs = [Output("--json", getattr(args, "json_out", None)), Output("--plot", getattr(args, "plot", None))]
    if getattr(args, "workdir", None) and not getattr(args, "videos", None) and not getattr(args, "video", None):
        outputs.append(Output("--workdir", args.workdir, "into"))  # generated videos are written there
    bundles = getattr(args, "bundle", None)
    bundles = bundles if isinstance(bundles, list) else [bundles]  # `stream --bundle` repeats
    inputs = [Input("BUNDLE", b, "tree") for b in bundles]
    inputs += [Input("--ckpt", getattr(args, "ckpt", None)), Input("--base", getattr(args, "base", None)),
               Input("--video", getattr(args, "video", None))]
    videos = getattr(args, "videos", None)
    if videos:
        inputs.append(Input("--videos", videos, "folder" if Path(videos).is_dir() else "file"))
    inputs += [Input("FILES", f) for f in getattr(args, "files", None) or ()]
    check_outputs(outputs, inputs)


def cmd_backends(args: argparse.Namespace) -> int:
    """The backend table (engine/runners/table.py) as it stands on this machine for this bundle, then the scorers.

    Without a bundle every row is still printed, "available" meaning this machine has the packages and
    devices; the rows' files (int8 graphs, TensorRT engines, the scorer graph) are checked only with one."""
    from apclip.bundle import read_manifest
    from apclip.benchmarks.contenders import probe, scorers
    from apclip.engine.runners.table import Context, describe

    ctx = Context(read_manifest(args.bundle) if args.bundle else None, args.ckpt, args.base)
    rows = describe(ctx)
    print(f"{'backend':<11} {'precision':<9} {'device':<6} {'extra':<8} {'file':<44} status")
    for row in rows:
        status = "available" if row["available"] else f"unavailable: {row['reason']}"
        if row["available"] and not row["files_checked"]:
            status += " (machine only)"
        tags = "".join(f" [{tag}]" for tag in ("auto", "reference") if row[tag])
        print(f"{row['backend']:<11} {row['precision']:<9} {row['device']:<6} {row['extra']:<8} "
              f"{row['file'] or '(the --ckpt checkpoint)':<44} {status}{tags}")
    scorer_rows = []
    for c in scorers():
        reason = probe(c, ctx)
        scorer_rows.append({"scorer": c.backend, "precision": c.precision, "device": c.device,
                            "available": reason is None, "reason": reason})
        print(f"scorer {c.backend:<10} {c.precision:<9} {c.device:<6} "
              f"{'available' if reason is None else 'unavailable: ' + reason}")
    if ctx.manifest is None:
        print("no bundle given: availability is this machine's packages and devices only; the rows' files "
              "(int8 graphs, TensorRT engines, scorer.onnx) are checked with a bundle: apclip-bench backends BUNDLE")
    if args.json_out:
        _write_json(args.json_out, {"benchmark": "backends", "rows": rows, "scorers": scorer_rows})
    return 0


def cmd_parity(args: argparse.Namespace, log) -> int:
    from apclip.benchmarks.inputs import generated_videos, read_video_list
    from apclip.benchmarks.parity import format_table, run_parity, thresholds_with

    if not args.ckpt:
        raise UsageError("parity needs --ckpt, the checkpoint the bundle was exported from (the reference)")
    _check_out(args.json_out, "--json")
    thresholds = thresholds_with(args.min_cosine, args.max_score_diff, args.min_top1)
    if args.videos:
        videos = read_video_list(args.videos)
    else:
        if args.count < 16:
            log(f"note: {args.count} generated videos (fewer than 16): top-1 agreement shares are coarse")
        videos = generated_videos(args.workdir, args.count)
    report = run_parity(args.bundle, args.ckpt, videos, base=args.base, backends=args.backends,
                        thresholds=thresholds, reference_device=args.reference_device, threads=args.threads,
                        batch_size=args.batch, log=log)
    from apclip.benchmarks.machine import describe

    print(f"parity of {args.bundle} against {report.reference} on {len(videos)} videos; {describe(report.machine)}")
    print(format_table(report))
    failed = report.failed
    print(f"{'FAIL' if failed else 'PASS'}: " + (", ".join(r.contender for r in failed) + " failed" if failed
                                                  else "every available contender is within its thresholds"))
    if args.json_out:
        _write_json(args.json_out, report.to_dict())
        log(f"wrote {args.json_out}")
    return 1 if failed else 0


def cmd_latency(args: argparse.Namespace, log) -> int:
    from apclip.benchmarks.inputs import latency_video
    from apclip.benchmarks.latency import LatencySettings, format_table, run_latency
    from apclip.benchmarks.machine import describe

    _check_out(args.json_out, "--json")
    _check_out(args.plot, "--plot")
    if args.plot:
        from apclip.extras import require

        require("matplotlib", "bench", "--plot")
    if args.runs < 1 or args.warmup < 0 or (args.batch is not None and args.batch < 1):
        raise UsageError("--runs and --batch must be >= 1 and --warmup >= 0")
    video = Path(args.video) if args.video else latency_video(args.workdir)
    if not video.is_file():
        raise ApclipError(f"--video {video} does not exist")
    settings = LatencySettings(runs=args.runs, warmup=args.warmup, batch=args.batch, threads=args.threads,
                               window=args.window, stride=args.stride, stream=args.stream,
                               large_classes=args.large_classes, large_prompts=args.large_prompts)
    report = run_latency(args.bundle, video, backends=args.backends, checkpoint=args.ckpt, base=args.base,
                         settings=settings, log=log)
    print(f"latency of {args.bundle} on {video.name} ({report.video['size'][0]}x{report.video['size'][1]}, "
          f"{report.video['frames']} frames), {report.images_per_clip} images per clip, {args.runs} runs after "
          f"{args.warmup} warm-up; ms; {describe(report.machine)}")
    print(format_table(report))
    if args.json_out:
        _write_json(args.json_out, report.to_dict())
        log(f"wrote {args.json_out}")
    if args.plot:
        from apclip.benchmarks.plot import plot_stages

        plot_stages(report.rows, args.plot, f"apclip-bench latency: {Path(args.bundle).name}, {video.name}")
        log(f"wrote {args.plot}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from apclip.benchmarks.compare import compare

    _check_out(args.json_out, "--json")
    table, data = compare(args.files)
    print(table)
    if args.json_out:
        _write_json(args.json_out, data)
    if args.plot:
        from apclip.benchmarks.plot import plot_stages

        rows = [{"contender": f"{Path(f).stem}: {r['contender']}", "stage": r["stage"], "median_ms": m}
                for r in data["rows"] for f, m in zip(args.files, r["median_ms"])]
        plot_stages(rows, args.plot, "apclip-bench compare")
    return 0


def cmd_stream(args: argparse.Namespace, log) -> int:
    from apclip.benchmarks.machine import describe
    from apclip.benchmarks.stream_bench import format_table, run_stream_bench

    _check_out(args.json_out, "--json")
    if args.sources < 1 or args.max_batch < 1 or args.seconds <= 0:
        raise UsageError("--sources and --max-batch must be >= 1 and --seconds positive")
    report = run_stream_bench(args, log)
    s = report["settings"]
    print(f"stream mode: {s['sources']} source(s) of {s['seconds']:g} s {s['size'][0]}x{s['size'][1]} at "
          f"{s['fps']:g} fps{' paced in real time' if s['realtime'] else ''}, windows of {s['window']:g} s every "
          f"{s['stride']:g} s; {describe(report['machine'])}")
    print(format_table(report["rows"], s["realtime"]))
    for name, drift in report["rss_drift"].items():
        if drift:
            print(f"{name}: RSS peak {drift['first_minute_peak_mib']:.0f} MiB in the first minute, "
                  f"{drift['last_minute_peak_mib']:.0f} MiB in the last ({drift['growth_mib']:+.1f} MiB)")
    if args.json_out:
        _write_json(args.json_out, report)
        log(f"wrote {args.json_out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    return run_command("apclip-bench", build_parser(), run, argv)


def run(args: argparse.Namespace) -> int:
    quiet = getattr(args, "quiet", False)
    log = (lambda message: None) if quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    check_output_paths(args)
    if args.command == "backends":
        return cmd_backends(args)
    if args.command == "parity":
        return cmd_parity(args, log)
    if args.command == "latency":
        return cmd_latency(args, log)
    if args.command == "compare":
        return cmd_compare(args)
    if args.command == "stream":
        return cmd_stream(args, log)
    from apclip.benchmarks.kernel import run as run_kernel

    return run_kernel(args)


if __name__ == "__main__":
    sys.exit(main())
