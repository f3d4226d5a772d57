"""CPU precisions benchmark: fp32 vs fusion vs int8 encoders, trimmed text, and the GEMM scorer.

    python -m apclip.benchmarks.cpu_precision [--work DIR] [--sections vision,text,scorer]
           [--frames 32] [--repeats 3] [--classes 20 --prompts 36] [--json bench_cpu_precision.json]

All in one run, contenders interleaved (round-robin) so they see the same machine state; medians,
ratios, and each vision contender's fraction of the CPU's peak computed from /proc/cpuinfo. ViT-B/16
with random weights (CLIP's init). ONNX files are cached in --work. Never asserts a time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from apclip.bundle import VISION_INPUT

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


# -- machine ---------------------------------------------------------------------------------------
def cpu_record() -> dict:
    """Model, clock, core count and SIMD flags from /proc/cpuinfo, and the peaks they imply.

    fp32: 2 FMA pipes x 8 lanes x 2 FLOP per cycle (AVX2/AVX-512 on Zen 4 are both 256 bits wide
    in the FMA units). int8: AVX-512 VNNI vpdpbusd, 2 x 256-bit per cycle = 64 u8s8 MACs = 128 ops.
    """
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    field = lambda key: next((line.split(":", 1)[1].strip() for line in text.splitlines()  # noqa: E731
                              if line.startswith(key)), "")
    flags = set(field("flags").split())
    mhz = float(field("cpu MHz") or 0.0)
    cores = os.cpu_count() or 1
    fp32_per_cycle = 32 if "fma" in flags else 8
    int8_per_cycle = 128 if "avx512_vnni" in flags or "avx_vnni" in flags else 64  # without VNNI: vpmaddubsw
    return {"model": field("model name"), "mhz": mhz, "cores": cores,
            "simd": sorted(f for f in flags if f.startswith(("avx", "fma"))),
            "fp32_peak_gflops": cores * mhz / 1e3 * fp32_per_cycle,
            "int8_peak_gops": cores * mhz / 1e3 * int8_per_cycle,
            "load_average": os.getloadavg()}


def vision_macs(c) -> float:
    """Multiply-accumulates of one image through the ViT (patch embed, blocks, projection)."""
    n = c.vision_grid ** 2 + 1
    w = c.vision_width
    per_block = n * (4 * w * w + 8 * w * w) + 2 * n * n * w  # qkv+out (4w^2), MLP (8w^2), attention
    return 3 * c.vision_patch_size ** 2 * w * (n - 1) + c.vision_layers * per_block + w * c.embed_dim


def interleaved(contenders: dict, repeats: int, warm: dict | None = None, progress: bool = False
                ) -> dict[str, list[float]]:
    """Each contender once per round, `repeats` rounds, after one warm-up call each (`warm[name]`,
    e.g. a smaller batch, when given)."""
    for name, fn in contenders.items():
        (warm or contenders)[name]()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for round_ in range(repeats):
        for name, fn in contenders.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
            if progress:
                print(f"  round {round_ + 1}: {name} {times[name][-1]:.2f}s", flush=True)
    return times


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def min_cosine(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.min(np.sum(ref * got, -1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1))))


# -- files -----------------------------------------------------------------------------------------
def encoder_files(model, work: Path) -> dict[str, Path]:
    """fp32, fused (ORT transformer optimizer, model type clip) and int8 variants of both encoders."""
    from apclip.export.fusion import fuse_encoder
    from apclip.export.onnx_export import export_text, export_vision
    from apclip.export.int8.quantize import QuantizationSettings, quantize_encoder

    work.mkdir(parents=True, exist_ok=True)
    files = {}
    for enc, export in (("vision", export_vision), ("text", export_text)):
        fp32 = work / f"{enc}.onnx"
        if not fp32.exists():
            export(model, fp32, 17, 4096 if enc == "text" else 1024)
        files[f"{enc} fp32"] = fp32
        fused = work / f"{enc}.fused.onnx"
        if not fused.exists():
            fuse_encoder(fp32, fused, model.config, enc)
        files[f"{enc} fp32+fusion"] = fused
        variants = {"int8": QuantizationSettings(), "int8 per-tensor": QuantizationSettings(per_channel=False),
                    "int8 reduce-range": QuantizationSettings(reduce_range=True)}
        for name, settings in variants.items():
            path = work / f"{enc}.{name.replace(' ', '-')}.onnx"
            if not path.exists():
                quantize_encoder(fp32, path, settings)
            files[f"{enc} {name}"] = path
        fused_int8 = work / f"{enc}.fused-int8.onnx"
        if not fused_int8.exists():
            quantize_encoder(fused, fused_int8)
        files[f"{enc} fusion+int8"] = fused_int8
    return files


def realistic_pixels(frames: int, resolution: int) -> np.ndarray:
    """[frames, 3, R, R]: frames of a generated video through the engine's decode and preprocessing."""
    from apclip.config import normalization
    from apclip.preprocessing import Preprocessing

    from apclip.export.verify import generated_video_pixels

    clips = max(1, frames // 16)
    pre = Preprocessing(resolution=resolution, normalization=normalization("clip"), frames=8, clips=clips, crops=2)
    pixels = generated_video_pixels(pre, frames=64)
    return np.ascontiguousarray(np.resize(pixels, (frames, *pixels.shape[1:])), dtype=np.float32)


# -- sections --------------------------------------------------------------------------------------
def bench_vision(model, files, args, cpu) -> dict:
    import torch

    from apclip.model import ImageEmbedder

    r = model.config.image_resolution
    pixels = realistic_pixels(args.frames, r)
    embedder = ImageEmbedder(model).eval()
    x = torch.from_numpy(pixels)

    def eager():
        with torch.inference_mode():
            return embedder(x).numpy()

    names = ["vision fp32", "vision fp32+fusion", "vision int8", "vision int8 per-tensor", "vision fusion+int8"]
    sessions = {n: session(files[n], args.threads) for n in names}
    small = pixels[:4]

    def eager_small():
        with torch.inference_mode():
            return embedder(torch.from_numpy(small)).numpy()

    contenders = {"torch eager fp32": eager}
    contenders.update({f"ORT {n[len('vision '):]}": (lambda s=s: s.run(None, {VISION_INPUT: pixels})[0])
                       for n, s in sessions.items()})
    warm = {"torch eager fp32": eager_small}
    warm.update({f"ORT {n[len('vision '):]}": (lambda s=s: s.run(None, {VISION_INPUT: small})[0])
                 for n, s in sessions.items()})
    # The first (timed) round's outputs are not kept: cosines come from 4 frames, then all 32 are timed.
    ref = eager_small()
    cosines = {name: (1.0 if name.startswith("torch") else min_cosine(ref, fn())) for name, fn in warm.items()}
    times = interleaved(contenders, args.repeats, warm=warm, progress=True)
    gflop = 2 * vision_macs(model.config) * args.frames / 1e9
    base = statistics.median(times["torch eager fp32"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        peak = cpu["int8_peak_gops"] if "int8" in name else cpu["fp32_peak_gflops"]
        rows.append({"contender": name, "median_s": med, "times_s": ts, "vs_eager": base / med,
                     "gflops": gflop / med, "fraction_of_peak": gflop / med / peak, "min_cosine": cosines[name]})
    return {"frames": args.frames, "gflop_per_run": gflop, "rows": rows}


def synthetic_prompts(classes: int, prompts: int, seed: int = 1) -> tuple[list[str], list[list[str]]]:
    """Prompt-bank-like texts: "a video of {label}. {description}", 28-50 CLIP tokens, varied lengths."""
    words = ("person moves arms quickly while standing on grass near a wooden fence in bright daylight "
             "the athlete bends knees and jumps over the bar holding a long pole with both hands outdoors "
             "a crowd watches from the stands as the player swings the racket towards the yellow ball").split()
    rng = np.random.default_rng(seed)
    labels = [f"action {k}" for k in range(classes)]
    texts = [[f"a video of {labels[k]}. " + " ".join(rng.choice(words, size=int(rng.integers(20, 42)))) + "."
              for _ in range(prompts)] for k in range(classes)]
    return labels, texts


def bench_text(model, files, args) -> dict:
    """Class-matrix compile: today's path (torch, batch cut at its last EOT) vs ORT variants."""
    from apclip.class_matrix import encode_class_matrix
    from apclip.tokenizer import get_tokenizer

    from apclip.engine.runners.encoders import OrtRunner
    from apclip.engine.runners.text_trim import TrimmedTextRunner
    from apclip.export.api import trimmed_text_encoder

    labels, texts = synthetic_prompts(args.classes, args.prompts)
    lengths = [get_tokenizer().count_tokens(t) for row in texts for t in row]
    n = len(lengths)
    runner = lambda name: OrtRunner(files[name], "tokens", threads=args.threads, batch_size=256)  # noqa: E731
    fixed77 = runner("text fp32")
    encoders = {
        "torch trimmed per batch (today's export path)": trimmed_text_encoder(model),
        "ORT fp32, 77 tokens (today's run-time path)": fixed77,
        "ORT fp32, trimmed per batch": TrimmedTextRunner(runner("text fp32"), bucket=None),
        "ORT fp32, trimmed, 64-row length buckets": TrimmedTextRunner(runner("text fp32"), bucket=64),
        "ORT int8, trimmed, buckets": TrimmedTextRunner(runner("text int8"), bucket=64),
    }
    times: dict[str, list[float]] = {name: [] for name in encoders}
    outputs = {}
    for round_ in range(args.text_rounds):  # round-robin: every path sees the same machine state
        for name, encode in encoders.items():
            t = time.perf_counter()
            matrix = encode_class_matrix(labels, texts, encode)
            times[name].append(time.perf_counter() - t)
            outputs[name] = matrix.embeddings
            print(f"  round {round_ + 1}: {name}: {times[name][-1]:.1f}s", flush=True)
    results = {name: statistics.median(ts) for name, ts in times.items()}
    ref = outputs["torch trimmed per batch (today's export path)"]
    base = results["torch trimmed per batch (today's export path)"]
    real = (np.arange(ref.shape[1])[None] < matrix.counts[:, None])
    rows = [{"contender": name, "seconds": sec, "prompts_per_s": n / sec, "vs_today": base / sec,
             "extrapolated_400x36_s": sec * 400 * 36 / n,
             "min_cosine": min_cosine(ref[real], outputs[name][real])} for name, sec in results.items()]
    return {"classes": args.classes, "prompts": args.prompts, "tokens_min": min(lengths),
            "tokens_max": max(lengths), "tokens_mean": float(np.mean(lengths)), "rows": rows}


def bench_scorer(work: Path, args) -> dict:
    from apclip.class_matrix import ClassMatrix
    from apclip.scoring import maka_score

    from apclip.engine.scoring.gemm_scorer import GemmClasses, maka_gemm
    from apclip.export.onnx_export import export_scorer

    k, p, e, nv = 400, 36, 512, 32
    rng = np.random.default_rng(0)
    counts = rng.integers(24, p + 1, size=k).astype(np.int32)
    classes = rng.standard_normal((k, p, e)).astype(np.float32)
    classes /= np.linalg.norm(classes, axis=-1, keepdims=True)
    classes[np.arange(p)[None] >= counts[:, None]] = 0
    frames = rng.standard_normal((1, nv, e)).astype(np.float32)
    frames /= np.linalg.norm(frames, axis=-1, keepdims=True)
    scorer_path = work / "scorer.onnx"
    if not scorer_path.exists():
        export_scorer(scorer_path, e, 17)
    s = session(scorer_path, args.threads)
    prepared = GemmClasses.prepare(classes, counts)
    matrix = ClassMatrix(classes, counts, [str(i) for i in range(k)], [])
    feeds = {"frames": frames, "classes": classes, "counts": counts.astype(np.int64)}
    contenders = {
        "numpy reference (einsum)": lambda: maka_score(frames, classes, counts),
        "numpy GEMM (NumpyScorer, prepared)": lambda: maka_gemm(frames, prepared),
        "numpy GEMM incl. prepare": lambda: maka_gemm(frames, GemmClasses.prepare(matrix.embeddings, counts)),
        "scorer.onnx (ORT)": lambda: s.run(None, feeds)[0],
    }
    ref64 = maka_score(frames.astype(np.float64), classes.astype(np.float64), counts)
    diffs = {name: float(np.abs(fn() - ref64).max()) for name, fn in contenders.items()}
    times = interleaved(contenders, max(20, args.repeats * 10))
    base = statistics.median(times["numpy reference (einsum)"])
    rows = [{"contender": name, "median_ms": 1e3 * statistics.median(ts), "vs_reference": base / statistics.median(ts),
             "max_abs_diff_vs_float64": diffs[name]} for name, ts in times.items()]
    return {"K": k, "P": p, "Nv": nv, "E": e, "rows": rows}


def print_tables(result: dict) -> None:
    cpu = result["cpu"]
    print(f"\n{cpu['model']} {cpu['mhz']:.0f} MHz x {cpu['cores']} cores; peaks fp32 "
          f"{cpu['fp32_peak_gflops']:.0f} GFLOP/s, int8 {cpu['int8_peak_gops']:.0f} GOP/s; load average "
          f"{' '.join(f'{x:.2f}' for x in cpu['load_average'])} (start) "
          f"{' '.join(f'{x:.2f}' for x in result['load_average_end'])} (end)")
    if "vision" in result:
        v = result["vision"]
        print(f"\nvision, ViT-B/16, {v['frames']} frames, {v['gflop_per_run']:.0f} GFLOP per run")
        print(f"| contender | median s | vs eager | GFLOP/s | of peak | min cosine |\n|---|---|---|---|---|---|")
        for r in v["rows"]:
            print(f"| {r['contender']} | {r['median_s']:.2f} | {r['vs_eager']:.2f}x | {r['gflops']:.0f} | "
                  f"{100 * r['fraction_of_peak']:.0f}% | {r['min_cosine']:.6f} |")
    if "text" in result:
        t = result["text"]
        print(f"\nclass matrix, {t['classes']} classes x {t['prompts']} prompts ({t['tokens_min']}-"
              f"{t['tokens_max']} tokens, mean {t['tokens_mean']:.1f})")
        print("| path | s | prompts/s | vs today | 400x36 extrapolated s | min cosine |\n|---|---|---|---|---|---|")
        for r in t["rows"]:
            print(f"| {r['contender']} | {r['seconds']:.1f} | {r['prompts_per_s']:.1f} | {r['vs_today']:.2f}x | "
                  f"{r['extrapolated_400x36_s']:.0f} | {r['min_cosine']:.6f} |")
    if "scorer" in result:
        s = result["scorer"]
        print(f"\nscorer, K={s['K']} x P={s['P']}, Nv={s['Nv']}, E={s['E']}")
        print("| scorer | median ms | vs reference | max abs diff vs float64 |\n|---|---|---|---|")
        for r in s["rows"]:
            print(f"| {r['contender']} | {r['median_ms']:.1f} | {r['vs_reference']:.2f}x | "
                  f"{r['max_abs_diff_vs_float64']:.1e} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="bench-cpu-precision", help="folder for the (cached) ONNX files")
    p.add_argument("--sections", default="vision,text,scorer")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--classes", type=int, default=20, help="class-matrix benchmark classes (400 in the paper)")
    p.add_argument("--prompts", type=int, default=36)
    p.add_argument("--text-rounds", type=int, default=2, help="class-matrix compiles per path (interleaved)")
    p.add_argument("--json", default="bench_cpu_precision.json")
    args = p.parse_args(argv)
    sections = set(args.sections.split(","))

    import onnxruntime as ort
    import torch

    from apclip.model import build_preset

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    result: dict = {"cpu": cpu_record(), "python": platform.python_version(),
                    "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__}}
    model = build_preset("ViT-B-16", seed=0).eval()
    if sections & {"vision", "text"}:
        files = encoder_files(model, work)
    for name, run in (("scorer", lambda: bench_scorer(work, args)),
                      ("vision", lambda: bench_vision(model, files, args, result["cpu"])),
                      ("text", lambda: bench_text(model, files, args))):
        if name in sections:
            print(f"{name} ...", flush=True)
            result[name] = run()
            Path(args.json).write_text(json.dumps(result, indent=2))  # partial results survive an interrupt
    result["load_average_end"] = os.getloadavg()
    print_tables(result)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
