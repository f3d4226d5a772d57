"""Calibrated, gated int8 vs today's dynamic int8, fp32 ORT and eager fp32, on random, outlier and demo models.

    python -m apclip.benchmarks.int8_calibrated [--models tiny,tiny-trained,tiny-outliers,vit-b-16-outliers,vit-b-16]
           [--clips 200] [--calibration-clips 24] [--work DIR] [--json bench_int8_calibrated.json]

For each model: a checkpoint is written, `apclip-export --precision fp32,int8 --calibrate` runs on
`--calibration-clips` generated videos (the gate's held-out clips are a quarter of them), and today's
dynamic int8 (ONNX Runtime quantize_dynamic, no session options) is made from the same vision.onnx.
Then `--clips` other generated videos, decoded and preprocessed by the engine (one clip each), go
through every contender one clip at a time: per-clip time (median), embedding cosine against ORT fp32
(min over all frames, and mean), MAKA top-1 agreement over the bundle's class matrix. Eager fp32 (torch)
is timed on the first 20 clips only (it is the reference ORT fp32 was verified against to 1e-5).
ViT-B/16 clips are 2 frames (1 view) to keep the run within minutes; the tiny models use 8.
Never asserts anything; writes JSON with the machine record.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
EAGER_CLIPS = 20


def make_bundle(name: str, work: Path, calibration: list[Path], log) -> tuple[Path, object, dict]:
    from apclip.checkpoint import save_checkpoint
    from apclip.model import build_preset
    from apclip.prompt_bank import PromptBank, save_prompt_bank
    from apclip.testing.outliers import add_outliers

    from apclip.benchmarks.cpu_precision import synthetic_prompts
    from apclip.export.api import export_bundle

    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    if name == "tiny-trained":
        ckpt, bank_path, model = trained_tiny(folder, log)
        changed = {}
    else:
        preset = "ViT-B-16" if name.startswith("vit-b-16") else "tiny"
        model = build_preset(preset, seed=0).eval()
        changed = add_outliers(model) if name.endswith("outliers") else {}
        frames = 2 if preset == "ViT-B-16" else 8
        labels, texts = synthetic_prompts(30, 4, seed=7)
        ckpt = save_checkpoint(folder / "best.pt", model, labels=labels,
                               preprocessing={"normalize": "clip", "frames": frames, "clips": 1, "crops": 1})
        bank = PromptBank.from_dict({
            "format": "apclip-prompt-bank", "format_version": 1, "strategy": "synthetic", "model": None,
            "settings": {}, "graph": None, "review": None,
            "classes": [{"label": label, "prompts": [{"aspect": None, "attribute": None, "llm_prompt": 0, "text": t}
                                                     for t in rows]} for label, rows in zip(labels, texts)]}, "bench")
        bank_path = save_prompt_bank(bank, folder / "bank.json")
    started = time.perf_counter()
    export_bundle(ckpt, out=folder / "bundle", prompts=bank_path, precisions=("fp32", "int8"), force=True,
                  calibrate=tuple(str(p) for p in calibration), progress=False, log=log)
    return folder / "bundle", model, {"outliers": changed, "export_seconds": time.perf_counter() - started}


def trained_tiny(folder: Path, log) -> tuple[Path, Path, object]:
    """The demo's trained tiny model (scripts/demo.sh): the generated action dataset, apclip-train (about a
    minute); returns (checkpoint, prompt bank, the model loaded back)."""
    import subprocess
    import sys

    from apclip.checkpoint import load_checkpoint

    data, run = folder / "data", folder / "run"
    if not (run / "best.pt").exists():
        subprocess.run([sys.executable, "-m", "apclip.train.synthetic", "--out", str(data)], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run([sys.executable, "-m", "apclip.train.cli", "--output", str(run), "--preset", "tiny",
                        "--train", str(data / "train.txt"), "--val", str(data / "val.txt"), "--root", str(data),
                        "--labels", str(data / "labels.txt"), "--prompts", str(data / "bank.json"), "--workers", "1"],
                       check=True, stdout=subprocess.DEVNULL)
    return run / "best.pt", data / "bank.json", load_checkpoint(run / "best.pt").model.eval()


def contenders(bundle: Path, model) -> dict:
    """name -> callable(pixels [N, 3, R, R]) -> embeddings [N, E]."""
    import torch

    from apclip.model import ImageEmbedder

    from apclip.benchmarks.cpu_precision import session
    from apclip.export.int8.quantize import quantize_encoder

    threads = os.cpu_count() or 1
    manifest = json.loads((bundle / "manifest.json").read_text())
    record = manifest["precisions"]["int8"]
    dynamic = bundle.parent / "vision.dynamic.onnx"
    quantize_encoder(bundle / "vision.onnx", dynamic)
    out = {}
    eager = ImageEmbedder(model).eval()

    def run_eager(x):
        with torch.inference_mode():
            return eager(torch.from_numpy(x)).numpy()

    out["eager fp32"] = run_eager
    calibrated_config = (record.get("session_configs") or {}).get("vision.int8.onnx", record.get("session_config"))
    for name, path, config in (("ORT fp32", bundle / "vision.onnx", None),
                               ("dynamic int8 (today)", dynamic, None),
                               ("calibrated int8", bundle / "vision.int8.onnx", calibrated_config)):
        if not path.exists():
            continue
        s = session(path, threads)
        if config is not None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.intra_op_num_threads = threads
            for key, value in config.items():
                options.add_session_config_entry(key, value)
            s = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        out[name] = (lambda sess: (lambda x: sess.run(None, {"pixels": x})[0]))(s)
    return out


def measure(runs: dict, clips: list[np.ndarray], matrix) -> dict:
    from apclip.scoring import maka_score

    classes = matrix.embeddings.astype(np.float64)

    def top1(e):
        u = e.astype(np.float64) / np.linalg.norm(e, axis=-1, keepdims=True)
        return int(maka_score(u[None], classes, matrix.counts).argmax())

    results, embeddings = {}, {}
    for name, fn in runs.items():
        fn(clips[0])  # warm-up
        subset = clips[:EAGER_CLIPS] if name == "eager fp32" else clips
        times, outs = [], []
        for x in subset:
            t = time.perf_counter()
            outs.append(fn(x))
            times.append(time.perf_counter() - t)
        embeddings[name] = outs
        results[name] = {"clips": len(subset), "ms_per_clip": 1e3 * statistics.median(times)}
    reference = embeddings["ORT fp32"]
    for name, outs in embeddings.items():
        cos = np.concatenate([np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
                              for a, b in zip(reference, outs)])
        agree = np.mean([top1(a) == top1(b) for a, b in zip(reference, outs)])
        results[name].update(min_cosine=float(cos.min()), mean_cosine=float(cos.mean()), top1_agreement=float(agree),
                             speed_vs_ort_fp32=results["ORT fp32"]["ms_per_clip"] / results[name]["ms_per_clip"])
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="tiny,tiny-trained,tiny-outliers,vit-b-16-outliers")
    p.add_argument("--clips", type=int, default=200)
    p.add_argument("--calibration-clips", type=int, default=24)
    p.add_argument("--work", default="bench-int8-calibrated")
    p.add_argument("--json", default="bench_int8_calibrated.json")
    args = p.parse_args(argv)

    import torch

    from apclip.bundle import read_manifest
    from apclip.class_matrix import load_class_matrix

    from apclip.benchmarks.cpu_precision import cpu_record
    from apclip.benchmarks.int8_accuracy import varied_videos
    from apclip.engine.video.clips import load_clip
    from apclip.engine.video.preprocess import flatten_views

    torch.set_num_threads(os.cpu_count() or 1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cpu = cpu_record()
    cpu["vnni"] = any("vnni" in f for f in cpu["simd"])
    result = {"cpu": cpu, "models": {}}
    log_lines: list[str] = []

    def log(message: str) -> None:
        log_lines.append(message)
        if message.startswith("int8"):
            print("   ", message, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "cal").mkdir()
        (Path(tmp) / "eval").mkdir()
        calibration = varied_videos(Path(tmp) / "cal", args.calibration_clips, seed=1)
        evaluation = varied_videos(Path(tmp) / "eval", args.clips, seed=2)
        for name in args.models.split(","):
            print(f"== {name}", flush=True)
            bundle, model, info = make_bundle(name, work, calibration, log)
            manifest = read_manifest(bundle)
            matrix = load_class_matrix(bundle / "classes.safetensors", manifest.labels)
            clips = [flatten_views(load_clip(v, manifest.preprocessing).views) for v in evaluation]
            figures = measure(contenders(bundle, model), clips, matrix)
            int8 = manifest.raw["precisions"]["int8"]
            result["models"][name] = {"contenders": figures, "export_seconds": info["export_seconds"],
                                      "int8_record": {k: int8.get(k) for k in
                                                      ("method", "methods", "files", "refused", "fallback_layers",
                                                       "outlier_channels", "candidates", "gate")}}
            print(f"  shipped int8: {int8.get('methods')}; refused: {list(int8.get('refused') or {})}; "
                  f"float layers: {int8.get('fallback_layers')}; outlier channels: {int8.get('outlier_channels')}",
                  flush=True)
            for contender, row in figures.items():
                print(f"  {contender:22s} {row['ms_per_clip']:9.1f} ms/clip  x{row['speed_vs_ort_fp32']:.2f}  "
                      f"min cos {row['min_cosine']:.5f}  mean cos {row['mean_cosine']:.5f}  "
                      f"top-1 {row['top1_agreement']:.1%} of {row['clips']}", flush=True)
    result["load_average_end"] = os.getloadavg()
    Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    print(f"cpu {cpu['model']} ({cpu['cores']} cores, VNNI: {cpu['vnni']}), load {cpu['load_average']} -> "
          f"{result['load_average_end']}; wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
