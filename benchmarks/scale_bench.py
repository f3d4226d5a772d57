"""Scale-out benchmark, all contenders in one run on this machine:

  batch: a plain `apclip-infer` loop (one process per video, as a shell loop runs it), the same
         videos through one in-process Recognizer (predict_many), and apclip-batch on a local Ray
         instance with 1 and 2 encode workers (wall time including Ray's start, and after it);
  serve: apclip-serve (tritonserver) requests/s and latency p50/p99 over HTTP at concurrency 1, 4, 16
         against in-process Recognizer calls on the same frames.

    python -m apclip.benchmarks.scale_bench [--bundle B] [--videos 16] [--requests 48]

Needs the scale extra and the server environment (.venv-serve or $APCLIP_TRITON_ENV). Prints a table
and writes JSON with the machine's load average. Never asserts a time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _tiny_bundle(work: Path) -> Path:
    from apclip.export.api import export_bundle
    from apclip.testing.assets import write_demo_assets

    assets = write_demo_assets(work / "assets")
    out = work / "bundle"
    export_bundle(assets["checkpoint"], out=out, labels=assets["labels"], prompts=assets["bank"], progress=False,
                  log=lambda message: None)
    return out


def _videos(folder: Path, count: int) -> list[Path]:
    from apclip.testing.videos import write_test_video

    folder.mkdir(parents=True, exist_ok=True)
    return [write_test_video(folder / f"v{i:03d}.avi", frames=64, size=(160, 120), fps=25.0) for i in range(count)]


def _ray_env(work: Path) -> dict[str, str]:
    home = work / "home"
    home.mkdir(exist_ok=True)
    (home / "ray_bootstrap_config.yaml").write_text("")
    return dict(os.environ, HOME=str(home), RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
                RAY_TMPDIR=tempfile.mkdtemp(prefix="rayb", dir="/tmp"))


def bench_batch(bundle: Path, videos: list[Path], work: Path, threads: int) -> dict:
    results = {}
    t = time.perf_counter()
    for video in videos:
        subprocess.run([sys.executable, "-m", "apclip.engine.cli.infer", str(video), "--bundle", str(bundle), "--quiet",
                        "--threads", str(threads)], check=True, capture_output=True)
    results["apclip-infer loop (process per video)"] = {"seconds": time.perf_counter() - t}

    from apclip.engine.recognizer import Recognizer

    t = time.perf_counter()
    rec = Recognizer.from_bundle(bundle, threads=threads)
    for _ in rec.predict_many(videos):
        pass
    results["Recognizer.predict_many (one process)"] = {"seconds": time.perf_counter() - t}

    env = _ray_env(work)
    for workers in (1, 2):
        output = work / f"batch{workers}.parquet"
        command = [sys.executable, "-m", "apclip.scale.batch", str(bundle), "--input", str(videos[0].parent),
                   "--output", str(output), "--encode-workers", str(workers), "--threads", str(max(1, threads // workers)),
                   "--num-cpus", "4", "--cpus-per-worker", "1"]
        t = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        started, progress = None, []
        for line in proc.stderr:
            if started is None and "local Ray instance" in line:
                started = time.perf_counter()
            if re.match(r"\d+/\d+ videos", line):
                progress.append(time.perf_counter())  # one line per committed batch (one video each here)
        proc.wait()
        end = time.perf_counter()
        row = {"seconds": end - t, "after_ray_start_s": end - (started or t), "exit": proc.returncode}
        if len(progress) > 1:
            # Steady state: first to last committed video, without Ray's start and the actors' bundle load.
            row["steady_videos_per_s"] = (len(progress) - 1) / (progress[-1] - progress[0])
        results[f"apclip-batch, {workers} encode worker(s)"] = row
    shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    for row in results.values():
        row["videos_per_s"] = len(videos) / row["seconds"]
        if "after_ray_start_s" in row:
            row["videos_per_s_after_start"] = len(videos) / row["after_ray_start_s"]
    return results


def _percentiles(latencies: list[float]) -> dict:
    ms = np.array(latencies) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def bench_serve(bundle: Path, video: Path, work: Path, requests: int, threads: int) -> dict:
    import tritonclient.http as httpclient

    from apclip.engine.video.sources import open_source
    from apclip.engine.recognizer import Recognizer

    from apclip.scale.array_source import ArraySource

    with open_source(video) as source:
        bgr = np.stack([f.image for f in source.frames()])
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    results = {}
    rec = Recognizer.from_bundle(bundle, threads=threads)
    rec.predict(ArraySource(bgr))  # warm-up
    latencies = []
    t = time.perf_counter()
    for _ in range(requests):
        s = time.perf_counter()
        rec.predict(ArraySource(bgr))
        latencies.append(time.perf_counter() - s)
    results["in-process Recognizer, sequential"] = {"rps": requests / (time.perf_counter() - t), **_percentiles(latencies)}

    command = [sys.executable, "-m", "apclip.scale.serve", str(bundle), "--http-port", "0", "--grpc-port", "0",
               "--metrics-port", "0", "--threads", str(threads), "--max-batch", "16", "--max-queue-delay-us", "2000",
               "--work-dir", str(work / "serve")]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    url = None
    for line in proc.stderr:
        found = re.search(r"ready: http (\S+)", line)
        if found:
            url = found[1]
            break
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    try:
        if url is None:
            raise RuntimeError("apclip-serve did not start")

        def one(client) -> float:
            frames = httpclient.InferInput("frames", [1, *rgb.shape], "UINT8")
            frames.set_data_from_numpy(rgb[None])
            s = time.perf_counter()
            client.infer("apclip_clip", [frames])
            return time.perf_counter() - s

        def client_loop(count: int) -> list[float]:
            # tritonclient.http runs on gevent: a client is used only by the thread that made it.
            client = httpclient.InferenceServerClient(url)
            try:
                return [one(client) for _ in range(count)]
            finally:
                client.close()

        client_loop(2)  # warm-up
        for concurrency in (1, 4, 16):
            per_client = max(1, requests // concurrency)
            t = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                lists = list(pool.map(client_loop, [per_client] * concurrency))
            elapsed = time.perf_counter() - t
            latencies = [x for row in lists for x in row]
            results[f"apclip-serve HTTP, concurrency {concurrency}"] = {"rps": len(latencies) / elapsed,
                                                                       **_percentiles(latencies)}
        client = httpclient.InferenceServerClient(url)
        stats = client.get_inference_statistics("apclip_clip")["model_stats"][0]
        client.close()
        results["batch sizes seen by apclip_clip"] = {
            str(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", help="bundle to use (default: the tiny demo bundle, exported here)")
    p.add_argument("--videos", type=int, default=16)
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--skip", choices=("batch", "serve"), action="append", default=[])
    p.add_argument("--json", default="bench_scale.json")
    args = p.parse_args(argv)
    os.environ.setdefault("APCLIP_TRITON_ENV", str(ROOT / ".venv-serve"))
    with tempfile.TemporaryDirectory(prefix="apclip-scale-bench-") as tmp:
        work = Path(tmp)
        bundle = Path(args.bundle) if args.bundle else _tiny_bundle(work)
        videos = _videos(work / "videos", args.videos)
        report = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                              "loadavg_before": os.getloadavg()}, "bundle": str(bundle)}
        if "batch" not in args.skip:
            report["batch"] = bench_batch(bundle, videos, work, args.threads)
            print(json.dumps(report["batch"]), flush=True)
        if "serve" not in args.skip:
            report["serve"] = bench_serve(bundle, videos[0], work, args.requests, args.threads)
        report["machine"]["loadavg_after"] = os.getloadavg()
    for section in ("batch", "serve"):
        for name, row in report.get(section, {}).items():
            print(f"{section:6s} {name:45s} " + "  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                                          for k, v in row.items()))
    print(f"load average before {report['machine']['loadavg_before']}, after {report['machine']['loadavg_after']}")
    Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
