"""INT8 accuracy: top-1 agreement of the int8 vision encoder with fp32, on random weights and on a
model given realistic activation outliers, and which layers to keep fp32 if int8 breaks.

    python -m apclip.benchmarks.int8_accuracy [--work DIR] [--videos 16] [--classes 30]

Random CLIP weights lack the few huge activation channels of trained CLIP (the reason per-tensor
activation quantization fails on some trained transformers), so a second model is made from the
same weights with `--outlier-blocks` blocks whose LayerNorm (ln_1, ln_2) gains and MLP c_fc rows are
scaled by 10-50x in 4 channels each. Both are exported, dynamically quantized with the export's
settings and compared with their own fp32 ONNX on generated videos (decoded and preprocessed by
the engine, one 8-frame clip each) against a class matrix of synthetic prompts. If the outlier
model's int8 fails the int8 thresholds, the MatMuls reading the outlier channels are excluded
(kept fp32) and it is measured again. Never asserts anything.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from apclip.bundle import VISION_INPUT

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def varied_videos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` short MJPG videos, each its own smooth colour field with moving shapes and its own size."""
    import cv2

    rng = np.random.default_rng(seed)
    paths = []
    for v in range(count):
        w, h = int(rng.integers(160, 400)), int(rng.integers(120, 300))
        low = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
        background = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
        shapes = [(rng.integers(0, w), rng.integers(0, h), rng.integers(10, 60), rng.integers(-6, 7),
                   rng.integers(-6, 7), tuple(int(c) for c in rng.integers(0, 256, 3))) for _ in range(3)]
        path = folder / f"video{v}.avi"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (w, h))
        for t in range(40):
            frame = np.roll(background, t * int(rng.integers(0, 3)), axis=1).copy()
            for x, y, r, dx, dy, colour in shapes:
                cv2.circle(frame, (int(x + dx * t) % w, int(y + dy * t) % h), int(r), colour, -1)
            writer.write(frame)
        writer.release()
        paths.append(path)
    return paths


def add_outliers(model, blocks: int, seed: int = 0) -> dict:
    """Scale 4 channels of ln_1/ln_2 gains and c_fc output rows by 10-50x in the first `blocks` blocks."""
    import torch

    rng = np.random.default_rng(seed)
    touched = {}
    with torch.no_grad():
        for i, block in enumerate(model.visual.transformer.resblocks[:blocks]):
            width = block.ln_1.weight.shape[0]
            channels = rng.choice(width, size=4, replace=False)
            factors = rng.uniform(10, 50, size=4)
            for c, f in zip(channels, factors):
                block.ln_1.weight[c] *= float(f)
                block.ln_2.weight[c] *= float(f)
                block.mlp.c_fc.weight[int(rng.integers(0, 4 * width))] *= float(f)
            touched[i] = {"channels": channels.tolist(), "factors": [round(float(f), 1) for f in factors]}
    return touched


def matmul_roles(path: Path, width: int) -> list[tuple[str, int, str]]:
    """(node, block, role) of each weight MatMul, roles from the weight shape, blocks in graph order."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    roles = {(width, 3 * width): "in_proj", (width, width): "out_proj", (width, 4 * width): "c_fc",
             (4 * width, width): "c_proj"}
    out, block = [], -1
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in shapes:
            role = roles.get(shapes[node.input[1]], "proj")
            block += role == "in_proj"
            out.append((node.name, block, role))
    return out


def evaluate(fp32_path: Path, int8_path: Path, pixels: list[np.ndarray], matrix) -> dict:
    from apclip.scoring import maka_score

    from apclip.benchmarks.cpu_precision import min_cosine, session

    threads = os.cpu_count()
    a, b = session(fp32_path, threads), session(int8_path, threads)
    agree, cosines, margins = 0, [], []
    for x in pixels:
        ref, got = a.run(None, {VISION_INPUT: x})[0], b.run(None, {VISION_INPUT: x})[0]
        cosines.append(min_cosine(ref, got))
        s_ref = maka_score(ref[None].astype(np.float64), matrix.embeddings.astype(np.float64), matrix.counts)[0]
        s_got = maka_score(got[None].astype(np.float64), matrix.embeddings.astype(np.float64), matrix.counts)[0]
        agree += int(s_ref.argmax() == s_got.argmax())
        top2 = np.sort(s_ref)[-2:]
        margins.append(float(top2[1] - top2[0]))
    return {"videos": len(pixels), "top1_agreement": agree / len(pixels), "min_cosine": float(min(cosines)),
            "median_top1_margin": float(np.median(margins))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="bench-cpu-precision")
    p.add_argument("--videos", type=int, default=16)
    p.add_argument("--classes", type=int, default=30)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--outlier-blocks", type=int, default=4)
    p.add_argument("--json", default="bench_int8_accuracy.json")
    args = p.parse_args(argv)

    import torch

    from apclip.class_matrix import encode_class_matrix
    from apclip.config import normalization
    from apclip.model import build_preset
    from apclip.preprocessing import Preprocessing

    from apclip.benchmarks.cpu_precision import cpu_record, synthetic_prompts
    from apclip.engine.video.clips import load_clip
    from apclip.engine.video.preprocess import flatten_views
    from apclip.export.api import trimmed_text_encoder
    from apclip.export.onnx_export import export_vision
    from apclip.export.int8.quantize import QuantizationSettings, quantize_encoder

    torch.set_num_threads(os.cpu_count())
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result = {"cpu": cpu_record()}
    model = build_preset("ViT-B-16", seed=0).eval()
    labels, texts = synthetic_prompts(args.classes, args.prompts, seed=7)
    matrix = encode_class_matrix(labels, texts, trimmed_text_encoder(model))
    pre = Preprocessing(resolution=224, normalization=normalization("clip"), frames=8, clips=1, crops=1)
    with tempfile.TemporaryDirectory() as tmp:
        pixels = [flatten_views(load_clip(v, pre).views) for v in varied_videos(Path(tmp), args.videos)]

    fp32, int8 = work / "vision.onnx", work / "vision.int8.onnx"
    if not fp32.exists():
        export_vision(model, fp32, 17, 1024)
    if not int8.exists():
        quantize_encoder(fp32, int8)
    result["random weights"] = evaluate(fp32, int8, pixels, matrix)
    print("random weights:", result["random weights"], flush=True)

    result["outliers"] = add_outliers(model, args.outlier_blocks)
    out_fp32, out_int8 = work / "vision.outliers.onnx", work / "vision.outliers.int8.onnx"
    export_vision(model, out_fp32, 17, 1024)
    quantize_encoder(out_fp32, out_int8)
    result["outlier model"] = evaluate(out_fp32, out_int8, pixels, matrix)
    print("outlier model:", result["outlier model"], flush=True)
    if result["outlier model"]["min_cosine"] < 0.999 or result["outlier model"]["top1_agreement"] < 1.0:
        width = model.config.vision_width
        affected = set(result["outliers"])
        # The MatMuls that read an outlier channel: in_proj and c_fc (after ln_1/ln_2), c_proj (after c_fc).
        excluded = [(n, b, r) for n, b, r in matmul_roles(out_fp32, width)
                    if b in affected and r in ("in_proj", "c_fc", "c_proj")]
        settings = QuantizationSettings(exclude_nodes=tuple(n for n, _, _ in excluded))
        out_int8x = work / "vision.outliers.int8-excluded.onnx"
        quantize_encoder(out_fp32, out_int8x, settings)
        result["outlier model, affected blocks fp32"] = dict(
            evaluate(out_fp32, out_int8x, pixels, matrix),
            excluded=[f"block {b} {r} ({n})" for n, b, r in excluded])
        print("outlier model, affected blocks kept fp32:", result["outlier model, affected blocks fp32"])
    result["load_average_end"] = os.getloadavg()
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"load average {result['cpu']['load_average']} (start) {result['load_average_end']} (end); "
          f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
