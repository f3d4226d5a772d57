"""GPU check of the torch-cuda backend and the MAKA TensorRT plugin (benchmarks/gpu_check.sh calls it).

    python -m apclip.benchmarks.gpu_backends_check [--json gpu_backends.json] [--no-compile] [--batch 32]

On ViT-B/16 (random init: speed and parity do not depend on trained weights), one clip of 32 frames:
  1. peak bf16 matmul TFLOP/s measured here -> the matmul floor (35.1 GFLOP per image, DESIGN.md);
  2. eager fp32 vs torch-cuda fp16 and bf16 (CUDA graphs), fp16 without graphs, and fp16 through
     torch.compile(mode="reduce-overhead"): ms per batch (median of CUDA-event timings after warm-up),
     speed-up over eager fp32 (goal >= 3x for fp16), ratio to the floor (goal <= 2x), peak memory;
  3. parity of each against eager fp32 on the same inputs (embedding cosine >= 0.999, DESIGN.md);
  4. host -> embeddings with float32 upload vs uint8 upload + GPU normalisation (pinned, non-blocking);
  5. the MAKA plugin: its AOT PTX (what TensorRT embeds) loaded with the CUDA driver and launched with
     exactly TensorRT's argument list, against the float64 reference at serving sizes.
Reports and writes JSON with the machine and versions; it never asserts a time. Exit codes as
benchmarks/check_summary.py: 0 every check passed, 1 a parity or plugin check failed, 2 no GPU,
3 what ran passed but the plugin check was skipped (cuda-python missing): a skip is never a pass.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import json
import platform
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

GFLOP_PER_IMAGE = 35.1  # ViT-B/16 at 224 px (DESIGN.md)
COSINE_MIN = 0.999


def cuda_ms(torch, fn: Callable[[], Any], warmup: int = 5, reps: int = 30) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return {"median_ms": statistics.median(times), "p10_ms": times[len(times) // 10],
            "p90_ms": times[(9 * len(times)) // 10]}


def peak_bf16_tflops(torch, n: int = 8192) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    t = cuda_ms(torch, lambda: a @ b, warmup=3, reps=10)["median_ms"]
    return 2 * n ** 3 / (t * 1e-3) / 1e12


def cosine_min(a, b) -> float:
    a, b = a.double(), b.double()
    return float(((a * b).sum(1) / a.norm(dim=1) / b.norm(dim=1)).min())


def encoder_rows(torch, batch: int, with_compile: bool) -> tuple[list[dict], dict]:
    from apclip.engine.runners.torch_cuda import TorchCudaRunner, cast_for_inference
    from apclip.model import ImageEmbedder, build_preset

    base = build_preset("ViT-B-16", seed=0)
    r = base.config.image_resolution
    pixels = np.random.default_rng(0).standard_normal((batch, 3, r, r)).astype(np.float32)
    device_pixels = torch.from_numpy(pixels).cuda()
    fp32 = ImageEmbedder(copy.deepcopy(base)).cuda().eval()
    with torch.inference_mode():
        reference = fp32(device_pixels).float()
    rows = []

    def record(name: str, fn: Callable[[], Any], output) -> None:
        torch.cuda.reset_peak_memory_stats()
        timing = cuda_ms(torch, fn)
        rows.append({"method": name, **timing, "peak_mib": torch.cuda.max_memory_allocated() / 2**20,
                     "cosine_min": cosine_min(output, reference)})

    with torch.inference_mode():
        record("eager fp32", lambda: fp32(device_pixels), reference)
        # TF32 matmuls: what a user gets with torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = True
        record("eager fp32 (tf32)", lambda: fp32(device_pixels), fp32(device_pixels).float())
        torch.backends.cuda.matmul.allow_tf32 = False
    from apclip.engine.runners.table import precisions

    # every torch-cuda row of the backend table (fp32 included: it must equal eager), and fp16 without graphs
    for precision, graphs in [(p, True) for p in precisions("torch-cuda")] + [("fp16", False)]:
        model = ImageEmbedder(cast_for_inference(copy.deepcopy(base), precision))
        runner = TorchCudaRunner(model, tail=(3, r, r), input_dtype=torch.float32, batch_size=batch, graphs=graphs)
        out = runner.embed_on_device(pixels)
        # device-resident timing: the forward pass only (graph replay or eager), inputs already on the GPU
        host = runner._staging(batch, "float", torch.float32, (3, r, r))
        host.copy_(torch.from_numpy(pixels))
        record(f"torch-cuda {precision}{'' if graphs else ' (no graphs)'}",
               lambda runner=runner, host=host: runner._forward(host, batch, "float"), out.float())
    if with_compile:
        model = ImageEmbedder(cast_for_inference(copy.deepcopy(base), "fp16")).cuda().eval()
        compiled = torch.compile(model, mode="reduce-overhead")
        with torch.inference_mode():
            started = time.perf_counter()
            out = compiled(device_pixels)
            compile_s = time.perf_counter() - started
            record("torch.compile fp16 reduce-overhead", lambda: compiled(device_pixels), out.float())
            rows[-1]["compile_s"] = compile_s
    upload = upload_rows(torch, base, pixels)
    return rows, upload


def upload_rows(torch, base, pixels: np.ndarray) -> dict:
    """Host arrays -> host embeddings, float32 upload vs uint8 upload normalised on the GPU."""
    from apclip.config import NORMALIZATIONS
    from apclip.engine.video.preprocess import normalize
    from apclip.engine.runners.torch_cuda import GpuNormalize, TorchCudaRunner, cast_for_inference
    from apclip.model import ImageEmbedder

    batch, r = len(pixels), pixels.shape[-1]
    norm = NORMALIZATIONS["clip"]
    frames = np.random.default_rng(1).integers(0, 256, (batch, r, r, 3), dtype=np.uint8)
    floats = normalize(frames, norm)
    runner = TorchCudaRunner(ImageEmbedder(cast_for_inference(copy.deepcopy(base), "fp16")), tail=(3, r, r),
                             input_dtype=torch.float32, batch_size=batch,
                             normalize=GpuNormalize(norm, "cuda", torch.float16))
    a, b = runner(floats), runner.encode_uint8(frames)
    result = {"float32 upload": cuda_ms(torch, lambda: runner(floats)),
              "uint8 upload + GPU normalise": cuda_ms(torch, lambda: runner.encode_uint8(frames)),
              "bytes float32": floats.nbytes, "bytes uint8": frames.nbytes,
              "max_abs_diff": float(np.abs(a - b).max())}
    return result


def plugin_rows(torch) -> list[dict]:
    """The plugin's PTX through the CUDA driver with TensorRT's argument list (no TensorRT needed)."""
    from cuda.bindings import driver

    from apclip.kernels.maka_trt_plugin import compile_plugin_kernel
    from apclip.testing.kernel_cases import MAX_REL_L2, Case, make_inputs, reference, relative_l2

    capability = torch.cuda.get_device_capability()
    torch.cuda.init()
    rows = []
    for b, k in ((1, 400), (64, 600), (256, 600)):
        case = Case(b, 4, 8, k, 36, 512, "pool")
        video, classes, counts = make_inputs(case, seed=5, device="cuda", padding="nan")
        kernel = compile_plugin_kernel(capability, b, 4, 8, k, 36, 512, "pool")
        err, module = driver.cuModuleLoadData(kernel.ptx.encode() + b"\0")
        assert int(err) == 0, f"cuModuleLoadData: {err}"
        err, function = driver.cuModuleGetFunction(module, kernel.name.encode())
        assert int(err) == 0, f"cuModuleGetFunction: {err}"
        if kernel.shared_bytes > 48 * 1024:
            attribute = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            driver.cuFuncSetAttribute(function, attribute, kernel.shared_bytes)
        out = torch.full((b, k), float("nan"), device="cuda")
        scalars = [b if value is None else value for value in kernel.scalars.values()]
        values = ([ctypes.c_uint64(t.data_ptr()) for t in (video, classes, counts.int())]
                  + [ctypes.c_int32(v) for v in scalars] + [ctypes.c_uint64(out.data_ptr())])
        params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        grid_y = -(-b // kernel.block_b)
        stream = driver.CUstream(torch.cuda.current_stream().cuda_stream)
        err, = driver.cuLaunchKernel(function, kernel.grid_classes, grid_y, 1, kernel.threads, 1, 1,
                                     kernel.shared_bytes, stream, ctypes.addressof(params), 0)
        torch.cuda.synchronize()
        ref = reference(video, classes, counts, "pool")
        written = bool(out.isfinite().all())
        error = relative_l2(out, ref) if written else float("inf")
        rows.append({"B": b, "K": k, "launch": int(err), "all_written": written, "rel_l2": error,
                     "ptx_params": kernel.ptx_params, "passed": int(err) == 0 and written and error <= MAX_REL_L2})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="frames per batch (one clip of 4 x 8 by default)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="include torch.compile(mode='reduce-overhead') (a minute or two of compiling)")
    parser.add_argument("--json", default="gpu_backends.json")
    args = parser.parse_args(argv)
    import torch

    from apclip.benchmarks.check_summary import EXIT_SKIP, check_exit_code, plugin_verdict

    if not torch.cuda.is_available():
        print("SKIP: no CUDA GPU, nothing checked (this script runs on the GPU machine)", file=sys.stderr)
        return EXIT_SKIP
    name = torch.cuda.get_device_name()
    peak = peak_bf16_tflops(torch)
    floor_ms = args.batch * GFLOP_PER_IMAGE / (peak * 1e3)
    rows, upload = encoder_rows(torch, args.batch, args.compile)
    base_ms = rows[0]["median_ms"]
    print(f"{name}: peak bf16 matmul {peak:.0f} TFLOP/s -> ViT-B/16 floor {floor_ms:.2f} ms for {args.batch} images")
    print(f"{'method':<36} {'ms':>8} {'p90':>8} {'x fp32':>7} {'x floor':>8} {'MiB':>7} {'cos min':>9}")
    for row in rows:
        row["speedup_vs_fp32"] = base_ms / row["median_ms"]
        row["x_floor"] = row["median_ms"] / floor_ms
        print(f"{row['method']:<36} {row['median_ms']:8.2f} {row['p90_ms']:8.2f} {row['speedup_vs_fp32']:7.2f} "
              f"{row['x_floor']:8.2f} {row['peak_mib']:7.0f} {row['cosine_min']:9.6f}")
    print(f"upload: float32 {upload['float32 upload']['median_ms']:.2f} ms vs uint8 "
          f"{upload['uint8 upload + GPU normalise']['median_ms']:.2f} ms (max |diff| {upload['max_abs_diff']:.2e})")
    try:
        plugin = plugin_rows(torch)
    except ImportError as exc:
        plugin = [{"skipped": f"cuda-python is not installed ({exc})"}]
    for row in plugin:
        print("MAKA plugin PTX via the CUDA driver:", row)
    verdicts = {"encoder parity": "PASS" if all(row["cosine_min"] >= COSINE_MIN for row in rows) else "FAIL",
                "plugin parity": plugin_verdict(plugin)}
    code = check_exit_code(verdicts.values())
    with open(args.json, "w") as f:
        json.dump({"gpu": name, "torch": torch.__version__, "python": platform.python_version(),
                   "peak_bf16_tflops": peak, "floor_ms": floor_ms, "batch": args.batch, "encoder": rows,
                   "upload": upload, "plugin": plugin, "checks": verdicts, "ok": code == 0}, f, indent=1)
    print("; ".join(f"{check} {verdict}" for check, verdict in verdicts.items()) + f"; wrote {args.json}")
    return code


if __name__ == "__main__":
    sys.exit(main())
