"""Export benchmark: ViT-B/16 (random weights) vision encoder, ONNX Runtime CPU vs PyTorch eager fp32
on the same 32 frames in one run, plus export time and class-matrix compile time.

    python -m apclip.benchmarks.export_speed [--preset ViT-B-16] [--frames 32] [--classes 400 --prompts 36]

Prints a table and writes JSON (machine, versions, medians, ratio). Never asserts a time.
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

import numpy as np


def _seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="ViT-B-16")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--classes", type=int, default=400)
    p.add_argument("--prompts", type=int, default=36)
    p.add_argument("--json", default="bench_export_speed.json")
    args = p.parse_args(argv)

    import onnxruntime as ort
    import torch

    from apclip.class_matrix import encode_class_matrix
    from apclip.config import ModelConfig
    from apclip.model import ImageEmbedder, build_preset
    from apclip.export.api import trimmed_text_encoder
    from apclip.export.onnx_export import export_text, export_vision

    torch.set_num_threads(args.threads)
    model = build_preset(args.preset)
    cfg: ModelConfig = model.config
    r = cfg.image_resolution
    workdir = Path(tempfile.mkdtemp(prefix="apclip-bench-"))
    t = time.perf_counter()
    export_vision(model, workdir / "vision.onnx", 17, 1024)
    vision_export_s = time.perf_counter() - t
    t = time.perf_counter()
    export_text(model, workdir / "text.onnx", 17, 4096)
    text_export_s = time.perf_counter() - t

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(workdir / "vision.onnx"), options, providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).standard_normal((args.frames, 3, r, r)).astype(np.float32)
    embedder = ImageEmbedder(model).eval()
    x = torch.from_numpy(pixels)

    def run_torch():
        with torch.inference_mode():
            return embedder(x).numpy()

    def run_ort():
        return session.run(None, {"pixels": pixels})[0]

    ref, got = run_torch(), run_ort()  # warm-up, and a parity figure for the record
    cosine = float(np.min(np.sum(ref * got, -1)))
    torch_t, ort_t = [], []
    for _ in range(args.repeats):  # interleaved so both see the same machine state
        torch_t.append(_seconds(run_torch))
        ort_t.append(_seconds(run_ort))
    torch_med, ort_med = statistics.median(torch_t), statistics.median(ort_t)
    gflop = 2 * _vision_macs(cfg) * args.frames / 1e9

    # Class matrix: K classes x P prompts of realistic length (about 30-40 tokens each).
    words = "person moves arms quickly while standing on grass near a wooden fence in bright daylight".split()
    rng = np.random.default_rng(1)
    labels = [f"action {k}" for k in range(args.classes)]
    prompts = [[f"a video of {labels[k]}. " + " ".join(rng.choice(words, size=18)) + "."
                for _ in range(args.prompts)] for k in range(args.classes)]
    t = time.perf_counter()
    encode_class_matrix(labels, prompts, trimmed_text_encoder(model), progress=True)
    class_s = time.perf_counter() - t

    rows = [
        ("vision encode, PyTorch eager fp32", torch_med, 1.0),
        ("vision encode, ONNX Runtime CPU", ort_med, torch_med / ort_med),
    ]
    print(f"\n{args.preset}, {args.frames} frames of {r}px, {args.threads} threads, "
          f"{gflop:.0f} GFLOP per run; ORT vs torch min cosine {cosine:.7f}")
    print(f"{'contender':38s} {'median s':>9s} {'GFLOP/s':>8s} {'speed-up':>9s}")
    for name, sec, ratio in rows:
        print(f"{name:38s} {sec:9.3f} {gflop / sec:8.1f} {ratio:8.2f}x")
    print(f"export: vision.onnx {vision_export_s:.1f}s, text.onnx {text_export_s:.1f}s; class matrix "
          f"{args.classes} x {args.prompts} prompts: {class_s:.1f}s")
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__},
        "preset": args.preset, "frames": args.frames, "threads": args.threads, "repeats": args.repeats,
        "torch_eager_s": torch_t, "ort_s": ort_t, "torch_median_s": torch_med, "ort_median_s": ort_med,
        "ort_speedup": torch_med / ort_med, "gflop_per_run": gflop, "min_cosine": cosine,
        "export_vision_s": vision_export_s, "export_text_s": text_export_s,
        "class_matrix": {"classes": args.classes, "prompts": args.prompts, "seconds": class_s},
    }
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return 0


def _vision_macs(c) -> float:
    """Multiply-accumulates of one image through the ViT (patch embed, blocks, projection)."""
    n = c.vision_grid ** 2 + 1
    w = c.vision_width
    per_block = n * (4 * w * w + 8 * w * w) + 2 * n * n * w  # qkv+out (4w^2), MLP (8w^2), attention
    return 3 * c.vision_patch_size ** 2 * w * (n - 1) + c.vision_layers * per_block + w * c.embed_dim


if __name__ == "__main__":
    raise SystemExit(main())
