"""Per-clip cost of a clip-level vision graph (Open-VCLIP's expand_temporal_view) vs today's per-frame graph.

    python -m apclip.benchmarks.clip_graph_cost [--preset ViT-B-16] [--frames 8] [--runs 10] [--threads N]

Both graphs are exported from the same random-weight CLIP (the weights do not change the cost) with the
exporter the bundles use, and run on ONNX Runtime CPU side by side: one clip of T frames per call, calls
interleaved round by round (apclip.benchmarks.timing.measure), warm-up dropped. The FLOP ratio is counted
from the shapes: the temporal attention multiplies each query by 3L keys instead of L (QK^T and AV),
everything else is the same. Prints a table and writes JSON with the machine record.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np


def vision_flops(config, frames: int, key_frames: int) -> float:
    """FLOPs (2 per multiply-add) of the vision tower on `frames` frames whose attention sees key_frames x L keys."""
    width, layers = config.vision_width, config.vision_layers
    tokens = config.vision_grid ** 2 + 1
    keys = key_frames * tokens
    patch = 2 * (config.vision_grid ** 2) * width * 3 * config.vision_patch_size ** 2
    per_layer = (2 * tokens * width * 3 * width  # QKV projection
                 + 2 * tokens * keys * width * 2  # QK^T and attention x V over all heads
                 + 2 * tokens * width * width  # output projection
                 + 2 * tokens * width * 4 * width * 2)  # MLP
    return frames * (patch + layers * per_layer + 2 * width * config.embed_dim)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="ViT-B-16")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--threads", type=int)
    p.add_argument("--json", default="bench_clip_graph_cost.json")
    args = p.parse_args(argv)

    import onnxruntime as ort

    from apclip.benchmarks.machine import describe, record
    from apclip.benchmarks.timing import host_timer, measure, summarize
    from apclip.bundle import EMBEDDINGS_OUTPUT, VISION_INPUT
    from apclip.export.onnx_export import export_vision, export_vision_clip
    from apclip.model import build_preset

    load_before = list(os.getloadavg())
    model = build_preset(args.preset)
    config, t = model.config, args.frames
    r = config.image_resolution
    pixels = np.random.default_rng(0).standard_normal((t, 3, r, r)).astype(np.float32)  # one clip
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if args.threads:
        options.intra_op_num_threads = args.threads
    with tempfile.TemporaryDirectory(prefix="apclip-clip-cost-") as tmp:
        frame_path, clip_path = Path(tmp) / "frame.onnx", Path(tmp) / "clip.onnx"
        print(f"exporting the per-frame and clip-level {args.preset} vision graphs ...", flush=True)
        export_vision(model, frame_path, 17, batch_max=64)
        export_vision_clip(model, clip_path, 17, clips_max=8, frames=t, temporal="expand_temporal_view")
        sessions = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                    for name, path in (("per-frame", frame_path), ("clip-level", clip_path))}
        feeds = {"per-frame": pixels, "clip-level": pixels[None]}  # [T, 3, R, R] / [1, T, 3, R, R]
        def run(name: str) -> None:
            sessions[name].run([EMBEDDINGS_OUTPUT], {VISION_INPUT: feeds[name]})

        timers = {name: host_timer(lambda name=name: run(name)) for name in sessions}
        times = measure(timers, args.runs, warmup=2)
    flops = {"per-frame": vision_flops(config, t, 1), "clip-level": vision_flops(config, t, 3)}
    stats = {name: summarize(ms) for name, ms in times.items()}
    measured = stats["clip-level"]["median_ms"] / stats["per-frame"]["median_ms"]
    flop_ratio = flops["clip-level"] / flops["per-frame"]
    machine = record(load_before)
    print(f"{args.preset}, {t} frames per clip, ONNX Runtime {ort.__version__} CPU, {args.runs} interleaved runs; "
          f"{describe(machine)}")
    print(f"{'graph':12s} {'median ms/clip':>15s} {'p90':>9s} {'GFLOP/clip':>11s}")
    for name in sessions:
        print(f"{name:12s} {stats[name]['median_ms']:15.1f} {stats[name]['p90_ms']:9.1f} {flops[name] / 1e9:11.1f}")
    print(f"clip-level / per-frame: measured {measured:.3f}x, FLOPs {flop_ratio:.3f}x")
    result = {"preset": args.preset, "frames": t, "runs": args.runs, "stats": stats, "gflop_per_clip":
              {k: v / 1e9 for k, v in flops.items()}, "measured_ratio": measured, "flop_ratio": flop_ratio,
              "machine": machine}
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
