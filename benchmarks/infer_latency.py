"""Thin wrapper: apclip-infer latency per stage for a random-weight ViT-B/16 bundle on a generated 720p video.

    python -m apclip.benchmarks.infer_latency [--workdir DIR] [--preset ViT-B-16] [--seconds 10] [--runs 5]
                                              [--backends ort,numpy] [--json bench_infer_latency.json]

The bundle and video are made once in --workdir (apclip.benchmarks.workload), then this is
`apclip-bench latency BUNDLE --video V --backends ...` (decode, preprocess, encode, score with the bundle's
K and with K=400 x P=36, end to end, stream windows/s).
"""
from __future__ import annotations

import argparse
import os
import tempfile

from apclip.benchmarks.cli import main as bench_main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "apclip-bench-infer"))
    p.add_argument("--preset", default="ViT-B-16")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the generated 720p video")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int)
    p.add_argument("--backends", default="ort,numpy")
    p.add_argument("--json", default="bench_infer_latency.json")
    args = p.parse_args(argv)

    from apclip.benchmarks.inputs import latency_video
    from apclip.benchmarks.workload import ensure_bundle

    bundle, ckpt, _ = ensure_bundle(args.workdir, args.preset, scorer=True)
    video = latency_video(args.workdir, seconds=args.seconds, fps=args.fps)
    argv = ["latency", str(bundle), "--ckpt", str(ckpt), "--video", str(video), "--backends", args.backends,
            "--runs", str(args.runs), "--json", args.json, "--workdir", args.workdir]
    return bench_main(argv + (["--threads", str(args.threads)] if args.threads else []))


if __name__ == "__main__":
    raise SystemExit(main())
