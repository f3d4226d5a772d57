"""Video ingest benchmark: decode and preprocessing throughput on a generated 720p video.

    python -m apclip.benchmarks.video_ingest [--seconds 10] [--fps 30] [--codec mp4v] [--workers 2]
                                             [--encode-ms MS]

Rows, each single-threaded (cv2.setNumThreads(1), one FFmpeg thread) and with a small thread pool
(OpenCV's and FFmpeg's default threads, `--workers` resize threads):
  decode            every frame decoded and colour-converted (frames/s)
  decode + resize   every frame also resized to a 224 short side, as dense windows need (frames/s)
  clip, whole video load_clip of one 8-frame x (2 clips x 2 crops) clip: the whole file decoded,
                    16 frames converted and preprocessed (ms per clip)
  clip, preprocess  the same clip from 16 already-decoded 720p frames: resize, crop, normalise (ms)
  windows           iter_window_clips, 2 s span, 1 s stride, 8 frames x 2 crops (windows/s)
`--encode-ms` (the ViT-B/16 ONNX Runtime CPU time for the clip's 32 images, from
apclip.benchmarks.export_speed) adds the ingest share of encode time. Medians over --repeats runs
after one warm-up; prints a table and writes JSON with the machine and versions. Never asserts a time.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import cv2

from apclip.engine.video.clips import FrameResizer, load_clip
from apclip.engine.video.windows import iter_window_clips
from apclip.preprocessing import Preprocessing
from apclip.engine.video.preprocess import make_views
from apclip.engine.video.sampling import sample_segment_indices
from apclip.engine.video.sources import open_source
from apclip.testing.videos import write_test_video
from apclip.benchmarks.machine import record
from apclip.benchmarks.timing import host_timer, measure, summarize

SPEC = Preprocessing(frames=8, clips=2, crops=2, resolution=224)


def _times(fn: Callable[[], object], repeats: int) -> list[float]:
    """Seconds of fn() over `repeats` runs after one warm-up (page cache, codec init, thread pools)."""
    return [ms / 1e3 for ms in measure({"run": host_timer(fn)}, repeats, warmup=1)["run"]]


def _summary(seconds: list[float]) -> dict[str, float]:
    stats = summarize([s * 1e3 for s in seconds])
    return {"median_s": stats["median_ms"] / 1e3, "p90_s": stats["p90_ms"] / 1e3, "min_s": stats["min_ms"] / 1e3}


def _decode(path: Path, threads: int | None, resize_workers: int | None) -> int:
    """Decode every frame; resize each too when resize_workers is not None. Returns frames seen."""
    resizer = FrameResizer(SPEC, resize_workers) if resize_workers is not None else None
    count = 0
    with open_source(path, threads=threads) as source:
        for frame in source.frames():
            if resizer is not None:
                resizer.submit(frame.image)  # the pool keeps at most 2 * workers frames waiting
            count += 1
    if resizer is not None:
        resizer.close()  # waits for the last resizes
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the generated video")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--codec", default="mp4v", help="FOURCC; mp4v -> .mp4, MJPG -> .avi, FFV1 -> .mkv")
    parser.add_argument("--workers", type=int, default=2, help="resize threads of the pooled rows")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--encode-ms", type=float, default=None,
                        help="ViT-B/16 ORT CPU encode time of the clip's 32 images, for the ingest share")
    parser.add_argument("--json", default="bench_video_ingest.json")
    args = parser.parse_args(argv)

    suffix = {"mp4v": ".mp4", "MJPG": ".avi", "FFV1": ".mkv"}.get(args.codec, ".avi")
    workdir = Path(tempfile.mkdtemp(prefix="apclip-ingest-"))
    frames = int(round(args.seconds * args.fps))
    path = write_test_video(workdir / f"bench720p{suffix}", frames=frames, size=(1280, 720), fps=args.fps,
                            codec=args.codec)
    with open_source(path) as probe:
        decoded = [f.image for f in probe.frames()]
    clip_frames = [[decoded[i] for i in row] for row in sample_segment_indices(len(decoded), SPEC.frames, SPEC.clips)]
    del decoded

    def preprocess_only(workers: int) -> None:
        resizer = FrameResizer(SPEC, workers)
        handles = [[resizer.submit(f) for f in row] for row in clip_frames]
        make_views([[resizer.get(h) for h in row] for row in handles], SPEC.resolution, SPEC.crops,
                   SPEC.normalization)
        resizer.close()

    def whole_video(threads: int | None, workers: int) -> None:
        with open_source(path, threads=threads) as source:
            load_clip(source, SPEC, workers=workers)

    def windows(threads: int | None, workers: int) -> int:
        spec = Preprocessing(frames=8, clips=1, crops=2, resolution=224)
        with open_source(path, threads=threads) as source:
            return sum(1 for _ in iter_window_clips(source, spec, span=2.0, stride=1.0, workers=workers))

    default_threads = cv2.getNumThreads()
    results: dict[str, dict[str, dict[str, float]]] = {}
    # (OpenCV threads, FFmpeg decoding threads (None: its default), resize workers)
    modes = {"single thread": (1, 1, 0), "thread pool": (default_threads, None, args.workers)}
    num_windows = 0
    for mode, (cv_threads, ff, workers) in modes.items():
        cv2.setNumThreads(cv_threads)
        rows = {
            "decode": _times(lambda: _decode(path, ff, None), args.repeats),
            "decode + resize": _times(lambda: _decode(path, ff, workers), args.repeats),
            "clip, whole video": _times(lambda: whole_video(ff, workers), args.repeats),
            "clip, preprocess": _times(lambda: preprocess_only(workers), args.repeats),
            "windows": _times(lambda: windows(ff, workers), args.repeats),
        }
        num_windows = windows(ff, workers)
        results[mode] = {name: _summary(t) for name, t in rows.items()}
    cv2.setNumThreads(default_threads)

    per_frame = {"decode", "decode + resize"}
    print(f"\n720p {args.codec}{suffix}, {frames} frames ({args.seconds:g} s at {args.fps:g} fps); clip = "
          f"{SPEC.frames} frames x {SPEC.views} views at {SPEC.resolution} px; {os.cpu_count()} cores; "
          f"pool = {default_threads} OpenCV threads + {args.workers} resize workers")
    print(f"{'row':20s} {'mode':14s} {'median':>10s} {'p90':>10s} {'throughput':>18s}")
    for mode, rows in results.items():
        for name, stat in rows.items():
            median = stat["median_s"]
            if name in per_frame:
                rate = f"{frames / median:8.0f} frames/s"
            elif name == "windows":
                rate = f"{num_windows / median:7.1f} windows/s"
            else:
                rate = f"{1 / median:9.1f} clips/s"
            print(f"{name:20s} {mode:14s} {median * 1e3:8.1f}ms {stat['p90_s'] * 1e3:8.1f}ms {rate:>18s}")
    share: dict[str, float] | None = None
    if args.encode_ms:
        share = {row: min(results[m][row]["median_s"] for m in results) * 1e3 / args.encode_ms
                 for row in ("clip, whole video", "clip, preprocess")}
        print(f"share of the {args.encode_ms:.0f} ms encode of the clip's {SPEC.frames * SPEC.views} images "
              f"(faster mode): whole {args.seconds:g} s video decoded + clip preprocessed "
              f"{share['clip, whole video']:.1%}; preprocessing alone {share['clip, preprocess']:.1%}")

    result = {
        "benchmark": "video_ingest", "machine": record(), "opencv_threads": default_threads,
        "video": {"codec": args.codec, "frames": frames, "fps": args.fps, "size": [1280, 720]},
        "clip": SPEC.to_dict(), "workers": args.workers, "repeats": args.repeats, "windows": num_windows,
        "results": results, "encode_ms": args.encode_ms, "share_of_encode": share,
    }
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
