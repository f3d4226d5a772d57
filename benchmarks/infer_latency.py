"""apclip-infer latency per clip, split by stage: ViT-B/16 (random weights), ONNX Runtime CPU, clip mode
(8 frames x 2 temporal clips x 2 crops = 32 images) on a generated 720p video.

    python -m apclip.benchmarks.infer_latency [--workdir DIR] [--seconds 10] [--fps 30] [--repeats 5]
                                              [--threads N] [--classes 400 --prompts 36]

Rows (medians over --repeats rounds after one warm-up; in each round every stage runs once, alone):
  decode                    the whole file decoded, the 16 sampled frames colour-converted (load_clip's
                            decoding work, nothing else)
  preprocess                resize, 2 crops, normalise of those 16 frames, from frames already decoded
  decode+preprocess         load_clip with workers=0 (inline) and with the engine's resize thread
  encode                    the vision runner on the clip's 32 images (batches of 32)
  score                     numpy MAKA against the bundle's labels, and against a K x P class matrix
                            the size of Kinetics-400 with 36 prompts per class (random rows)
  predict                   Recognizer.predict, end to end, one video at a time
  predict_many              per clip in a run of several: the next video decodes while this one encodes
The bundle is exported once into --workdir (verify off) and reused by later runs. Prints a table,
writes JSON with the machine, versions and load average (another job on the machine shows up there).
Never asserts a time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

LABELS = ["abseiling", "playing guitar", "riding a bike", "juggling balls", "surfing water", "archery",
          "bowling", "dribbling basketball"]


def interleaved(stages: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of every stage, run in rounds (one run of each stage per round), after one warm-up run
    each: a job that starts or stops on the machine meanwhile then skews all stages alike."""
    for fn in stages.values():
        fn()  # warm-up: page cache, codec and ORT initialisation, thread pools
    times: dict[str, list[float]] = {name: [] for name in stages}
    for _ in range(repeats):
        for name, fn in stages.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"median_ms": statistics.median(ordered) * 1e3,
            "p90_ms": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1e3,
            "min_ms": ordered[0] * 1e3, "runs": len(ordered)}


def ensure_bundle(workdir: Path, preset: str, log: Callable[[str], None]) -> Path:
    bundle = workdir / f"bundle-{preset}"
    if (bundle / "manifest.json").is_file():
        log(f"reusing {bundle}")
        return bundle
    from apclip.checkpoint import save_checkpoint
    from apclip.export.api import export_bundle
    from apclip.model import build_preset

    log(f"exporting {preset} (random weights) to {bundle}; once per --workdir")
    labels = workdir / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    ckpt = save_checkpoint(workdir / f"{preset}.pt", build_preset(preset, seed=0), labels=LABELS,
                           preprocessing={"normalize": "clip", "frames": 8, "clips": 2, "crops": 2})
    t = time.perf_counter()
    export_bundle(ckpt, out=bundle, labels=labels, verify=False, progress=False, log=lambda message: None)
    log(f"exported in {time.perf_counter() - t:.0f}s")
    return bundle


def ensure_video(workdir: Path, seconds: float, fps: float) -> Path:
    from apclip.testing.videos import write_test_video

    path = workdir / f"720p-{seconds:g}s-{fps:g}fps.mp4"
    if not path.is_file():
        write_test_video(path, frames=int(round(seconds * fps)), size=(1280, 720), fps=fps, codec="mp4v")
    return path


def machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": memory, "python": platform.python_version(),
            "platform": platform.platform()}


def versions() -> dict[str, str]:
    import cv2
    import onnxruntime

    from apclip import __version__

    return {"apclip": __version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
            "opencv": cv2.__version__}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "apclip-bench-infer"),
                   help="where the bundle and video are made once and reused")
    p.add_argument("--preset", default="ViT-B-16")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the generated 720p video")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: ORT's, all cores)")
    p.add_argument("--classes", type=int, default=400, help="K of the large synthetic class matrix")
    p.add_argument("--prompts", type=int, default=36, help="P of the large synthetic class matrix")
    p.add_argument("--many", type=int, default=4, help="videos in the predict_many run")
    p.add_argument("--json", default="bench_infer_latency.json")
    args = p.parse_args(argv)

    from apclip.class_matrix import ClassMatrix
    from apclip.engine import Recognizer
    from apclip.engine.clips import load_clip
    from apclip.engine.preprocess import resize_frame, spec_views
    from apclip.engine.sampling import sample_segment_indices
    from apclip.engine.scorers import NumpyScorer
    from apclip.engine.sources import open_source

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    bundle = ensure_bundle(workdir, args.preset, print)
    video = ensure_video(workdir, args.seconds, args.fps)
    rec = Recognizer.from_bundle(bundle, backend="ort", scorer="numpy", threads=args.threads)
    spec = rec.spec
    with open_source(video) as probe:
        frame_count = probe.info.frame_count
    wanted = set(sample_segment_indices(frame_count, spec.frames, spec.clips).ravel().tolist())

    def decode_only() -> list[np.ndarray]:
        with open_source(video) as src:
            return [f.image for f in src.frames(lambda index, timestamp: index in wanted)]

    decoded = decode_only()
    by_index = dict(zip(sorted(wanted), decoded))
    rows_of_frames = [[by_index[int(i)] for i in row]
                      for row in sample_segment_indices(frame_count, spec.frames, spec.clips)]

    def preprocess_only() -> np.ndarray:
        resized = [[resize_frame(f, spec) for f in row] for row in rows_of_frames]
        return spec_views(resized, spec)

    clip = load_clip(video, spec)
    rng = np.random.default_rng(0)
    big = rng.standard_normal((args.classes, args.prompts, rec.manifest.embed_dim)).astype(np.float32)
    big /= np.linalg.norm(big, axis=-1, keepdims=True)
    big_classes = ClassMatrix(big, np.full(args.classes, args.prompts, np.int32),
                              [f"class {k}" for k in range(args.classes)], [])
    numpy_scorer = NumpyScorer()

    emb = rec.encode_clip(clip)
    many = args.many
    stages = interleaved({
        "decode": decode_only,
        "preprocess": preprocess_only,
        "decode+preprocess, inline": lambda: load_clip(video, spec, workers=0),
        f"decode+preprocess, {rec.workers} resize thread": lambda: load_clip(video, spec, workers=rec.workers),
        "encode": lambda: rec.encode_clip(clip),
        f"score, K={rec.classes.num_classes} (bundle)": lambda: rec.score(emb),
        f"score, K={args.classes} x P={args.prompts}": lambda: numpy_scorer(emb[None], big_classes),
        "predict (end to end)": lambda: rec.predict(video),
        f"predict_many, {many} clips": lambda: list(rec.predict_many([video] * many)),
    }, args.repeats)
    stages[f"predict_many, per clip of {many}"] = [t / many for t in stages.pop(f"predict_many, {many} clips")]
    load_after = os.getloadavg()

    results = {name: summary(times) for name, times in stages.items()}
    encode_ms = results["encode"]["median_ms"]
    shares = {name: r["median_ms"] / encode_ms for name, r in results.items() if name.startswith(("decode", "preprocess"))}
    images = spec.frames * spec.views
    print(f"\n{args.preset} random weights, ORT CPU ({rec.backend}, threads {args.threads or 'default'}), "
          f"{spec.frames} frames x {spec.views} views = {images} images of {spec.resolution}px; "
          f"video 1280x720 mp4v, {frame_count} frames ({args.seconds:g} s at {args.fps:g} fps)")
    print(f"machine: {machine()['cpu']}, {os.cpu_count()} cores; load average before {load_before[0]:.2f}, "
          f"after {load_after[0]:.2f}")
    print(f"{'stage':36s} {'median ms':>10s} {'p90 ms':>10s} {'% of encode':>12s}")
    for name, r in results.items():
        share = f"{shares[name]:11.1%}" if name in shares else ""
        print(f"{name:36s} {r['median_ms']:10.1f} {r['p90_ms']:10.1f} {share:>12s}")
    print(f"encode throughput: {images / (encode_ms / 1e3):.2f} images/s")
    if load_after[0] > (os.cpu_count() or 1) + 0.5:
        print("note: the load average exceeds the core count: another job ran meanwhile; figures are noisy")

    result = {
        "benchmark": "infer_latency", "machine": machine(), "versions": versions(),
        "preset": args.preset, "backend": rec.backend, "threads": args.threads, "workers": rec.workers,
        "clip": spec.to_dict(), "images_per_clip": images,
        "video": {"size": [1280, 720], "codec": "mp4v", "frames": frame_count, "fps": args.fps},
        "classes": {"bundle": rec.classes.num_classes, "large": [args.classes, args.prompts]},
        "repeats": args.repeats, "load_average": {"before": load_before, "after": load_after},
        "results": results, "share_of_encode": shares, "raw_seconds": stages,
    }
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
