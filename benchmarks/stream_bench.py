"""apclip-bench stream: throughput, encoder work, lag, drops and memory of stream mode, per model and backend.

    apclip-bench stream [--bundle DIR ... | --presets tiny,ViT-B-16] [--backends ort] [--sources N]
                        [--seconds 10] [--window 2 --stride 0.5] [--baseline] [--processes] [--realtime]

Rows, each run in its own process(es) so that memory is the row's own:
  once       N sources in one process: lattice sampling, each frame encoded once, frames of all sources in
             shared encoder batches (engine/stream/engine.py)
  reencode   today's stream path before encode-once, one source: every window's T x C images encoded anew
             (iter_window_clips + Recognizer.encode_clip), as a baseline (--baseline)
  reencode xN  N processes of it, one source each (--processes): the model once per process
Each source is a generated 320x240 MJPG video of --seconds at 25 fps; --realtime paces it like a camera
(then lag is the time from a window's last frame to its scores, and windows the encoder cannot keep up
with are dropped and counted; the re-encoding rows are never paced). Columns: windows/s over all
sources, sampled frames encoded per window, lag p50/p99 (ms, once rows with --realtime), dropped windows, and the peak of the summed resident memory of the row's
processes (sampled every 0.2 s). Writes JSON with the machine, versions and RSS samples; never asserts.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

FPS = 25.0
SIZE = (320, 240)


# -- inputs --------------------------------------------------------------------------------------------------
def stream_video(workdir: Path, seconds: float) -> Path:
    video = workdir / f"stream-{seconds:g}s-{FPS:g}fps.avi"
    if not video.is_file():
        from apclip.testing.videos import write_test_video

        write_test_video(video, frames=int(round(seconds * FPS)), size=SIZE, fps=FPS, codec="MJPG")
    return video


def preset_bundle(workdir: Path, preset: str, log) -> Path:
    """A random-weight bundle of a model preset (tiny, ViT-B-16, ...), exported once into workdir."""
    out = workdir / f"bundle-{preset}"
    if not (out / "manifest.json").is_file():
        log(f"exporting a random-weight {preset} bundle to {out}")
        # In a child process: export imports torch, which has no business in the measured processes.
        code = (f"from pathlib import Path; from apclip.export.api import export_bundle; "
                f"from apclip.testing.assets import write_demo_assets; "
                f"a = write_demo_assets(Path({str(workdir / ('assets-' + preset))!r}), preset={preset!r}, frames=8); "
                f"export_bundle(a['checkpoint'], out={str(out)!r}, labels=a['labels'], prompts=a['bank'], "
                f"verify=False, progress=False, log=lambda m: None)")
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return out


# -- what one child process measures ------------------------------------------------------------------------------
def child_once(bundle: str, backend: str, videos: list[str], window: float, stride: float, realtime: bool,
               max_batch: int, threads: int | None) -> dict[str, Any]:
    from apclip.engine import Recognizer
    from apclip.engine.stream.engine import StreamSettings
    from apclip.engine.stream.feeds import FeedOptions

    rec = Recognizer.from_bundle(bundle, backend=backend, scorer="numpy", threads=threads)
    settings = StreamSettings(window, stride, max_batch=max_batch, feed=FeedOptions(realtime=realtime))
    engine = rec.stream_many(videos, settings)
    start = time.time()
    windows = sum(1 for _ in engine)
    end = time.time()
    stats = [s.to_dict() for s in engine.stats]
    lags = np.concatenate([np.array(s.lags) for s in engine.stats if s.lags]) * 1000 if windows else np.zeros(0)
    return {"windows": windows, "start": start, "end": end, "dropped": sum(s["dropped"] for s in stats),
            "frames_encoded": sum(s["frames_encoded"] for s in stats), "encoder_calls": engine.encoder_calls,
            "images_encoded": engine.images_encoded, "encoder_seconds": engine.encoder_seconds,
            "lag_ms": _percentiles(lags), "sources": stats, "backend": rec.backend}


def child_reencode(bundle: str, backend: str, video: str, window: float, stride: float,
                   threads: int | None) -> dict[str, Any]:
    """Today's path before encode-once: every window decoded into a Clip and all its images encoded."""
    from apclip.engine import Recognizer
    from apclip.engine.predictions import WindowPrediction
    from apclip.engine.recognizer import _prefetch
    from apclip.engine.video.windows import iter_window_clips

    rec = Recognizer.from_bundle(bundle, backend=backend, scorer="numpy", threads=threads)
    spec = rec.manifest.preprocessing.with_clips(1)
    windows = iter_window_clips(video, spec, span=window, stride=stride, workers=rec.workers)
    start = time.time()
    count = images = 0
    encode = 0.0
    for index, (clip, decode_s) in enumerate(_prefetch(lambda: iter(windows))):
        pred = WindowPrediction(source=clip.source.name, top=[], scores=np.zeros(0), index=index,
                                start=float(clip.start), end=float(clip.end))
        rec._fill(pred, clip, {"decode+preprocess": decode_s}, rec.topk, False)
        count += 1
        images += pred.frames
        encode += pred.timings["encode"]
    end = time.time()
    return {"windows": count, "start": start, "end": end, "dropped": 0, "frames_encoded": images // spec.crops,
            "images_encoded": images, "encoder_seconds": encode, "lag_ms": None, "backend": rec.backend}


def _percentiles(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99)),
            "max": float(values.max())}


# -- the parent: spawn, sample memory, collect ----------------------------------------------------------------------
def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_children(commands: list[list[str]], sample_every: float = 0.2) -> tuple[list[dict], list[tuple[float, int]]]:
    """Run child processes at once; (their JSON results, [(seconds, summed RSS KiB)] samples)."""
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    samples = []
    t0 = time.monotonic()
    while any(p.poll() is None for p in procs):
        samples.append((time.monotonic() - t0, sum(_rss_kib(p.pid) for p in procs if p.poll() is None)))
        time.sleep(sample_every)
    results = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"stream bench child failed ({p.returncode}): {err.strip()[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results, samples


def _child_command(kind: str, bundle: Path, backend: str, videos: list[Path], args) -> list[str]:
    command = [sys.executable, "-m", "apclip.benchmarks.stream_bench", kind, str(bundle), backend,
               json.dumps([str(v) for v in videos]), str(args.window), str(args.stride), str(int(args.realtime)),
               str(args.max_batch), str(args.threads or 0)]
    return command


def measure(kind: str, bundle: Path, backend: str, videos: list[Path], processes: int, args) -> dict[str, Any]:
    if kind == "once":
        commands = [_child_command("once", bundle, backend, videos, args)]
    else:
        commands = [_child_command("reencode", bundle, backend, [videos[0]], args) for _ in range(processes)]
    results, samples = run_children(commands)
    start, end = min(r["start"] for r in results), max(r["end"] for r in results)
    windows = sum(r["windows"] for r in results)
    seconds = end - start
    rss = [kib for _, kib in samples]
    lags = [r["lag_ms"] for r in results if r["lag_ms"]]
    return {"model": bundle.name.removeprefix("bundle-"), "backend": results[0]["backend"],
            "path": kind if processes == 1 else f"{kind} x{processes} processes",
            "sources": len(videos) if kind == "once" else processes,
            "windows": windows, "seconds": seconds, "windows_per_s": windows / seconds if seconds > 0 else None,
            "frames_per_window": sum(r["frames_encoded"] for r in results) / windows if windows else None,
            "images_per_s": sum(r["images_encoded"] for r in results) / seconds if seconds > 0 else None,
            "lag_ms": lags[0] if len(lags) == 1 else None, "dropped": sum(r["dropped"] for r in results),
            "rss_peak_mib": max(rss) / 1024 if rss else None, "rss_samples": samples, "children": results}


def format_table(rows: list[dict], realtime: bool = True) -> str:
    """One line per row; lag only for streams paced in real time (an unpaced file's frames wait in its queue)."""
    head = (f"{'model':10s} {'backend':8s} {'path':22s} {'src':>3s} {'windows':>7s} {'win/s':>7s} {'frames/win':>10s} "
            f"{'lag p50':>8s} {'lag p99':>8s} {'dropped':>7s} {'RSS MiB':>8s}")
    lines = [head]
    for r in rows:
        lag = r["lag_ms"] if realtime else None
        lines.append(f"{r['model']:10s} {r['backend']:8s} {r['path']:22s} {r['sources']:3d} {r['windows']:7d} "
                     f"{r['windows_per_s'] or 0:7.2f} {r['frames_per_window'] or 0:10.2f} "
                     f"{lag['p50'] if lag else float('nan'):8.0f} {lag['p99'] if lag else float('nan'):8.0f} "
                     f"{r['dropped']:7d} {r['rss_peak_mib'] or 0:8.0f}")
    return "\n".join(lines)


def rss_drift(samples: list[tuple[float, int]], minute: float = 60.0) -> dict[str, float] | None:
    """Peak RSS of the first and the last minute of a run (after the first 10 s of start-up)."""
    if not samples or samples[-1][0] < 3 * minute:
        return None
    first = [k for t, k in samples if 10.0 <= t <= 10.0 + minute]
    last = [k for t, k in samples if t >= samples[-1][0] - minute]
    return {"first_minute_peak_mib": max(first) / 1024, "last_minute_peak_mib": max(last) / 1024,
            "growth_mib": (max(last) - max(first)) / 1024}


def run_stream_bench(args, log) -> dict[str, Any]:
    from apclip.benchmarks.machine import record

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    bundles = [Path(b) for b in args.bundle or []]
    bundles += [preset_bundle(workdir, p, log) for p in (args.presets.split(",") if args.presets else [])]
    if not bundles:
        bundles = [preset_bundle(workdir, "tiny", log)]
    video = stream_video(workdir, args.seconds)
    videos = [video] * args.sources
    rows = []
    for bundle in bundles:
        for backend in args.backends.split(","):
            plan = [("once", 1)]
            if args.baseline:
                plan.append(("reencode", 1))
            if args.processes and args.sources > 1:
                plan.append(("reencode", args.sources))
            for kind, processes in plan:
                log(f"{bundle.name} {backend}: {kind} x{processes} process(es), {len(videos)} source(s)")
                rows.append(measure(kind, bundle, backend, videos, processes, args))
                log(format_table(rows[-1:], args.realtime).splitlines()[1])
    # Only a paced run is steady for minutes; an unpaced one spends its first minute loading the model.
    drift = {f"{r['model']} {r['path']}": rss_drift(r["rss_samples"]) if args.realtime else None for r in rows}
    return {"benchmark": "stream", "machine": record(), "settings": {
        "window": args.window, "stride": args.stride, "seconds": args.seconds, "fps": FPS, "size": SIZE,
        "sources": args.sources, "realtime": args.realtime, "max_batch": args.max_batch, "threads": args.threads},
        "load_average": os.getloadavg(), "rows": rows, "rss_drift": drift}


def add_arguments(q) -> None:
    import argparse

    q.add_argument("--bundle", action="append", help="bundle to measure (repeatable)")
    q.add_argument("--presets", help="comma list of model presets to export random-weight bundles of, e.g. "
                                     "tiny,ViT-B-16 (default without --bundle: tiny)")
    q.add_argument("--backends", default="ort", help="comma list of --backend values (default ort)")
    q.add_argument("--sources", type=int, default=1, help="streams in one process (default 1)")
    q.add_argument("--seconds", type=float, default=10.0, help="length of each generated stream (default 10)")
    q.add_argument("--window", type=float, default=2.0)
    q.add_argument("--stride", type=float, default=0.5)
    q.add_argument("--max-batch", type=int, default=32, help="crops per encoder call (default 32)")
    q.add_argument("--threads", type=int, help="ONNX Runtime threads per process (default: all cores)")
    q.add_argument("--baseline", action="store_true", help="also today's re-encoding path, one source")
    q.add_argument("--processes", action="store_true", help="also --sources processes of the re-encoding path")
    q.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=False,
                   help="pace the streams like cameras (lag and drops are then meaningful)")
    q.add_argument("--json", dest="json_out", help="write everything measured to this JSON file")
    q.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "apclip-bench"))
    q.add_argument("--quiet", action="store_true")


def _child_main(argv: list[str]) -> int:
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    kind, bundle, backend, videos, window, stride, realtime, max_batch, threads = argv
    videos_list = json.loads(videos)
    if kind == "once":
        result = child_once(bundle, backend, videos_list, float(window), float(stride), bool(int(realtime)),
                            int(max_batch), int(threads) or None)
    else:
        result = child_reencode(bundle, backend, videos_list[0], float(window), float(stride), int(threads) or None)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(_child_main(sys.argv[1:]))
