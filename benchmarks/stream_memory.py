"""Stream-mode memory: resident set size over a long generated stream, first minute vs last minute.

    python -m apclip.benchmarks.stream_memory [--minutes 10] [--fps 10] [--window 2 --stride 1]
                                              [--bundle DIR] [--workdir DIR] [--no-cli]

A 320x240 video of --minutes is written once into --workdir, with the tiny random-weight bundle
(or --bundle). Two runs over it in stream mode:
  api   Recognizer.stream in this process; VmRSS and VmHWM read from /proc/self/status after every
        window (the decode thread, ONNX Runtime and numpy included)
  cli   the apclip-infer console script with --json, its /proc/<pid>/status polled every 0.1 s, each
        sample placed in video time by the last window written to the --json temporary file
Goal: flat, i.e. the last minute's peak no higher than the first minute's plus noise (a few MiB).
Prints a table, writes JSON with the machine, versions and every sample. Never asserts a number.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from apclip.benchmarks.machine import record


def status_kib(pid: str | int = "self") -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS) of a process in KiB."""
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def ensure_inputs(workdir: Path, minutes: float, fps: float, bundle: str | None) -> tuple[Path, Path]:
    video = workdir / f"stream-{minutes:g}min-{fps:g}fps.avi"
    if not video.is_file():
        print(f"writing {video}")
        from apclip.testing.videos import write_test_video

        write_test_video(video, frames=int(round(minutes * 60 * fps)), size=(320, 240), fps=fps, codec="MJPG")
    if bundle:
        return video, Path(bundle)
    from apclip.benchmarks.stream_bench import preset_bundle

    return video, preset_bundle(workdir, "tiny", print)


def minute_peaks(times: list[float], rss_kib: list[int], first_end: float, last_start: float) -> dict[str, float]:
    first = [r for t, r in zip(times, rss_kib) if t <= first_end]
    last = [r for t, r in zip(times, rss_kib) if t >= last_start]
    if not first or not last:
        raise RuntimeError(f"no RSS sample in the first or the last minute ({len(first)}, {len(last)} samples): "
                           "use a longer or slower stream")
    return {"first_minute_peak_mib": max(first) / 1024, "last_minute_peak_mib": max(last) / 1024,
            "growth_mib": (max(last) - max(first)) / 1024, "minute_samples": [len(first), len(last)]}


def run_api(video: Path, bundle: Path, window: float, stride: float, duration: float) -> dict:
    from apclip.engine import Recognizer

    rec = Recognizer.from_bundle(bundle, backend="ort", scorer="numpy")
    ends, rss, hwm, wall = [], [], [], []
    start = time.perf_counter()
    before = status_kib()
    for pred in rec.stream(video, window=window, stride=stride):
        s = status_kib()
        ends.append(pred.end)
        rss.append(s["VmRSS"])
        hwm.append(s["VmHWM"])
        wall.append(time.perf_counter() - start)
    peaks = minute_peaks(ends, rss, 60.0, duration - 60.0)
    # least-squares slope of RSS against video time, in MiB per hour of stream
    slope = float(np.polyfit(np.array(ends) / 3600, np.array(rss) / 1024, 1)[0]) if len(ends) > 2 else 0.0
    return {"windows": len(ends), "seconds": wall[-1] if wall else 0.0, "rss_before_mib": before["VmRSS"] / 1024,
            "final_hwm_mib": hwm[-1] / 1024 if hwm else None, "slope_mib_per_hour": slope, **peaks,
            "samples": {"video_end_s": ends, "rss_kib": rss, "hwm_kib": hwm, "wall_s": wall}}


def _last_window_end(folder: Path, name: str) -> float | None:
    """End (video seconds) of the last window apclip-infer has written to its --json temporary file."""
    for tmp in folder.glob(f".{name}.*.tmp"):
        try:
            lines = tmp.read_bytes().splitlines()
        except OSError:
            return None
        for line in reversed(lines):
            try:
                return float(json.loads(line)["end"])
            except (ValueError, KeyError):  # a line being written
                continue
    return None


def run_cli(video: Path, bundle: Path, window: float, stride: float, duration: float, workdir: Path) -> dict:
    """The console script's RSS, polled; each sample is placed in video time by the last window it wrote."""
    script = Path(sys.executable).with_name("apclip-infer")
    out = workdir / "stream.jsonl"
    command = [str(script) if script.exists() else "apclip-infer", str(video), "--bundle", str(bundle),
               "--mode", "stream", "--window", str(window), "--stride", str(stride), "--backend", "ort",
               "--json", str(out), "--quiet"]
    ends, rss, wall = [], [], []
    start = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        while proc.poll() is None:
            try:
                s = status_kib(proc.pid)
            except (OSError, ValueError):  # the process is exiting
                break
            end = _last_window_end(workdir, out.name)
            if end is not None and "VmRSS" in s:  # before the first window: start-up, not streaming
                ends.append(end)
                rss.append(s["VmRSS"])
                wall.append(time.perf_counter() - start)
            time.sleep(0.1)
        stderr = proc.stderr.read() if proc.stderr else ""
        code = proc.wait()
    if code != 0:
        raise RuntimeError(f"apclip-infer exited with {code}: {stderr.strip()}")
    windows = sum(1 for _ in open(out, encoding="utf-8"))
    return {"windows": windows, "seconds": time.perf_counter() - start,
            **minute_peaks(ends, rss, 60.0, duration - 60.0),
            "samples": {"video_end_s": ends, "rss_kib": rss, "wall_s": wall}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--window", type=float, default=2.0)
    p.add_argument("--stride", type=float, default=1.0)
    p.add_argument("--bundle", help="bundle to use (default: the tiny demo bundle, exported into --workdir)")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "apclip-bench-stream"))
    p.add_argument("--cli", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure the apclip-infer console script (default on)")
    p.add_argument("--json", default="bench_stream_memory.json")
    args = p.parse_args(argv)
    if args.minutes < 2:
        p.error("--minutes must be at least 2, to compare a first and a last minute")

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    video, bundle = ensure_inputs(workdir, args.minutes, args.fps, args.bundle)
    load_before = os.getloadavg()
    runs = {"api": run_api(video, bundle, args.window, args.stride, args.minutes * 60)}
    if args.cli:
        runs["cli"] = run_cli(video, bundle, args.window, args.stride, args.minutes * 60, workdir)
    load_after = os.getloadavg()

    print(f"\nstream mode, {args.minutes:g} min 320x240 MJPG at {args.fps:g} fps, window {args.window:g} s, "
          f"stride {args.stride:g} s, bundle {bundle.name}; {record()['cpu']['cpu']}, {os.cpu_count()} cores; "
          f"load average {load_before[0]:.2f} -> {load_after[0]:.2f}")
    print(f"{'run':5s} {'windows':>8s} {'wall s':>8s} {'1st-min peak MiB':>17s} {'last-min peak MiB':>18s} "
          f"{'growth MiB':>11s} {'slope MiB/h':>12s}")
    for name, r in runs.items():
        slope = f"{r['slope_mib_per_hour']:12.2f}" if "slope_mib_per_hour" in r else f"{'':12s}"
        print(f"{name:5s} {r['windows']:8d} {r['seconds']:8.1f} {r['first_minute_peak_mib']:17.1f} "
              f"{r['last_minute_peak_mib']:18.1f} {r['growth_mib']:11.1f} {slope}")
    if "final_hwm_mib" in runs["api"]:
        print(f"api: RSS {runs['api']['rss_before_mib']:.1f} MiB before the stream, VmHWM "
              f"{runs['api']['final_hwm_mib']:.1f} MiB at the end")
    result = {"benchmark": "stream_memory", "machine": record(),
              "video": {"minutes": args.minutes, "fps": args.fps, "size": [320, 240], "codec": "MJPG"},
              "window": args.window, "stride": args.stride, "bundle": str(bundle),
              "load_average": {"before": load_before, "after": load_after}, "runs": runs}
    Path(args.json).write_text(json.dumps(result))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
