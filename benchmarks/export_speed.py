"""Export benchmark: the export steps of a random-weight model, a K x P class-matrix compile, and the
vision encode of ONNX Runtime CPU vs PyTorch eager fp32 timed side by side in one run.

    python -m apclip.benchmarks.export_speed [--preset ViT-B-16] [--classes 400 --prompts 36] [--runs 5]

The encode comparison is `apclip-bench latency BUNDLE --ckpt CKPT --backends ort,torch` (same
clip, interleaved runs); the export steps come from export_bundle's own step timings. Writes JSON.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="ViT-B-16")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int)
    p.add_argument("--classes", type=int, default=400, help="K of the class-matrix compile (0: skip)")
    p.add_argument("--prompts", type=int, default=36, help="P of the class-matrix compile")
    p.add_argument("--json", default="bench_export_speed.json")
    args = p.parse_args(argv)

    from apclip.benchmarks.inputs import latency_video
    from apclip.benchmarks.latency import LatencySettings, format_table, run_latency
    from apclip.benchmarks.machine import describe
    from apclip.benchmarks.timing import timed
    from apclip.benchmarks.workload import ensure_bundle
    from apclip.fileio import atomic_write

    workdir = Path(tempfile.mkdtemp(prefix="apclip-export-speed-"))
    bundle, ckpt, export_seconds = ensure_bundle(workdir, args.preset, scorer=False)
    result: dict = {"benchmark": "export_speed", "preset": args.preset, "export_seconds": export_seconds}
    if args.classes > 0:
        from apclip.class_matrix import encode_class_matrix
        from apclip.checkpoint import load_model
        from apclip.export.api import trimmed_text_encoder

        # Prompts of realistic length (about 30-40 tokens each).
        words = "person moves arms quickly while standing on grass near a wooden fence in bright daylight".split()
        rng = np.random.default_rng(1)
        labels = [f"action {k}" for k in range(args.classes)]
        prompts = [[f"a video of {labels[k]}. " + " ".join(rng.choice(words, size=18)) + "."
                    for _ in range(args.prompts)] for k in range(args.classes)]
        encode = trimmed_text_encoder(load_model(ckpt))
        _, ms = timed(lambda: encode_class_matrix(labels, prompts, encode, progress=True))
        result["class_matrix"] = {"classes": args.classes, "prompts": args.prompts, "seconds": ms / 1e3}
    video = latency_video(workdir, seconds=2.0)
    report = run_latency(bundle, video, backends="ort,torch", checkpoint=ckpt,
                         settings=LatencySettings(runs=args.runs, threads=args.threads, stream=False, large_classes=0))
    print(f"\n{args.preset} random weights; {describe(report.machine)}")
    print("export: " + ", ".join(f"{k} {v:.1f} s" for k, v in (export_seconds or {}).items()))
    if "class_matrix" in result:
        cm = result["class_matrix"]
        print(f"class matrix {cm['classes']} x {cm['prompts']} prompts: {cm['seconds']:.1f} s")
    print(format_table(report))
    result["latency"] = report.to_dict()
    with atomic_write(args.json) as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
