"""apclip-infer (ONNX Runtime), apclip-infer --backend openvino and apclip-infer-native side by side, in one run.

    python -m apclip.benchmarks.native_bench --work bench-native [--videos 6] [--preset ViT-B-16]

Each contender is a fresh process given the same bundle and videos (clip mode, JSON lines on stdout). Per
contender: start-up time to the first result (process start -> first JSON line, which includes loading the
bundle, compiling the graph and the first video), per-clip latency (median and p90 of the time between
consecutive results after the first: what a long queue of videos sees, decode overlapping encode where the
Python engine prefetches; and the median encode time it reports), start-up (the first result less its
own clip's stages: loading and compiling), and peak RSS of the process (wait4's
ru_maxrss). The bundle is a random-weight export of `--preset` (made once in --work and reused), with
8 frames x 1 clip x 1 crop so that a ViT-B/16 run stays in minutes on two cores. Nothing is asserted: it
prints a table and writes --out JSON with the machine record. Needs the native build (cmake, docs/native.md).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def make_inputs(work: Path, preset: str, videos: int) -> tuple[Path, list[Path]]:
    """The bundle (exported once) and `videos` generated videos (320x240, 90 frames)."""
    from apclip.testing.videos import write_test_video

    bundle = work / "bundle"
    if not (bundle / "manifest.json").is_file():
        from apclip.checkpoint import save_checkpoint
        from apclip.export.api import export_bundle
        from apclip.model import build_preset
        from apclip.testing.assets import LABELS

        work.mkdir(parents=True, exist_ok=True)
        ckpt = save_checkpoint(work / "model.pt", build_preset(preset, seed=0), labels=LABELS,
                               preprocessing={"normalize": "clip", "frames": 8, "clips": 1, "crops": 1},
                               train_config={"note": "random weights for a benchmark"})
        (work / "labels.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
        export_bundle(ckpt, out=bundle, labels=work / "labels.txt", verify=False, progress=False, log=print)
    paths = []
    for i in range(videos):
        path = work / f"video{i}.mp4"
        if not path.is_file():
            write_test_video(path, frames=90 + 7 * i, size=(320, 240), fps=30.0, codec="mp4v")
        paths.append(path)
    return bundle, paths


def contenders(bundle: Path, videos: list[Path], native: Path, cache: Path) -> dict[str, list[str]]:
    """name -> command. The native CLI runs cold (compiling the graph, as the Python processes do every time)
    and warm (OpenVINO's compiled-model cache, its default, filled by the cold run)."""
    sources = [str(v) for v in videos]
    python = [sys.executable, "-m", "apclip", "infer", "--bundle", str(bundle), *sources, "--json", "-", "--quiet",
              "--no-cache"]
    native_run = [str(native), str(bundle), *sources, "--json", "-"]
    return {
        "apclip-infer (ort)": [*python, "--backend", "ort"],
        "apclip-infer --backend openvino": [*python, "--backend", "openvino"],
        "apclip-infer-native (cold)": [*native_run, "--cache-dir", str(cache)],
        "apclip-infer-native (cached)": [*native_run, "--cache-dir", str(cache)],
    }


def run_one(command: list[str]) -> dict[str, Any]:
    """Run `command`, timestamp each JSON line it prints, and read its peak RSS when it exits."""
    env = dict(os.environ, ORT_DISABLE_TELEMETRY="1")
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    arrivals, records = [], []
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("{"):
            arrivals.append(time.perf_counter() - start)
            records.append(json.loads(line))
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0 or not records:
        return {"ok": False, "error": " ".join(stderr.strip().splitlines()[-1:]) or f"exit {proc.returncode}"}
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    encode = [r["timings_ms"].get("encode", float("nan")) for r in records[1:]] or [float("nan")]
    first_clip_s = sum(records[0]["timings_ms"].values()) / 1000
    return {
        "ok": True, "results": len(records), "first_result_s": arrivals[0], "total_s": arrivals[-1],
        "startup_s": arrivals[0] - first_clip_s,  # to the first result, less that clip's own stages
        "per_clip_ms_p50": 1000 * statistics.median(gaps) if gaps else None,
        "per_clip_ms_p90": 1000 * sorted(gaps)[int(0.9 * (len(gaps) - 1))] if gaps else None,
        "encode_ms_p50": statistics.median(encode), "peak_rss_mib": usage.ru_maxrss / 1024,
        "top1": [r["top"][0]["label"] for r in records],
    }


def interleaved_encode(bundle: Path, repeats: int, batch: int = 8) -> dict[str, list[float]]:
    """Seconds per `batch`-image vision call of ONNX Runtime and OpenVINO (the library apclip-infer-native runs,
    with the same settings), alternated in one process so that other load on the machine weighs on both alike."""
    import numpy as np

    from apclip.bundle import read_manifest
    from apclip.engine.runners.encoders import ort_runners
    from apclip.engine.runners.openvino import openvino_runners

    manifest = read_manifest(bundle, verify=False)
    runners = {"ort": ort_runners(manifest, cuda=False, threads=None, batch_size=batch)[0],
               "openvino": openvino_runners(manifest, batch_size=batch)[0]}
    r = manifest.preprocessing.resolution
    pixels = np.random.default_rng(0).standard_normal((batch, 3, r, r)).astype(np.float32)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for runner in runners.values():
        runner(pixels)  # warm-up
    for _ in range(repeats):
        for name, runner in runners.items():
            start = time.perf_counter()
            runner(pixels)
            times[name].append(time.perf_counter() - start)
    return times


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print(f"{'contender':34s} {'first result s':>14s} {'start-up s':>10s} {'per clip ms p50':>15s} {'p90':>7s} "
          f"{'encode ms':>9s} {'peak RSS MiB':>12s}")
    for name, r in results.items():
        if not r["ok"]:
            print(f"{name:34s} unavailable: {r['error']}")
            continue
        print(f"{name:34s} {r['first_result_s']:14.2f} {r['startup_s']:10.2f} {r['per_clip_ms_p50']:15.1f} "
              f"{r['per_clip_ms_p90']:7.1f} "
              f"{r['encode_ms_p50']:9.1f} {r['peak_rss_mib']:12.0f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=Path("bench-native"), help="folder for the bundle and videos (reused)")
    p.add_argument("--preset", default="ViT-B-16", help="model preset of the random-weight bundle")
    p.add_argument("--videos", type=int, default=6, help="videos per contender (the first one is start-up)")
    p.add_argument("--native", type=Path, default=ROOT / "build" / "apclip-infer-native", help="the built native CLI")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--encode-repeats", type=int, default=0,
                   help="also time ORT and OpenVINO vision calls alternated in one process, this many times each")
    args = p.parse_args(argv)
    if not args.native.is_file():
        print(f"native_bench: {args.native} does not exist: build it (cmake -S . -B build && cmake --build build)",
              file=sys.stderr)
        return 1
    from apclip.benchmarks.machine import record

    bundle, videos = make_inputs(args.work, args.preset, args.videos)
    if args.videos == 0:  # only the interleaved encoder timing
        for name, seconds in interleaved_encode(bundle, max(1, args.encode_repeats)).items():
            print(f"interleaved vision call, 8 images, {name:8s}: median {1000 * statistics.median(seconds):8.1f} ms "
                  f"over {len(seconds)} (min {1000 * min(seconds):.1f})")
        return 0
    cache = args.work / "openvino-cache"
    shutil.rmtree(cache, ignore_errors=True)  # the cold run fills it
    load_before = list(os.getloadavg())
    results = {name: run_one(command) for name, command in contenders(bundle, videos, args.native, cache).items()}
    print_table(results)
    tops = {tuple(r["top1"]) for r in results.values() if r["ok"]}
    print(f"top-1 labels agree across contenders: {len(tops) == 1}")
    encode = interleaved_encode(bundle, args.encode_repeats) if args.encode_repeats > 0 else {}
    for name, seconds in encode.items():
        print(f"interleaved vision call, 8 images, {name:8s}: median {1000 * statistics.median(seconds):8.1f} ms "
              f"over {len(seconds)} (min {1000 * min(seconds):.1f})")
    if args.out:
        from apclip.fileio import atomic_write

        payload = {"machine": record(load_before), "preset": args.preset, "videos": len(videos), "results": results,
                   "interleaved_encode_s": encode}
        with atomic_write(args.out) as f:
            json.dump(payload, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
