"""apclip-bench kernel: the fused Triton MAKA kernel vs eager PyTorch, torch.compile, matmul, memory floor.

    apclip-bench kernel [--k 400 600] [--b 1 8 64 256] [--views pool] [--no-compile] [--json kernel.json]
    (python -m apclip.benchmarks.kernel_maka is the same command)

Shapes: K classes of P = 36 prompts, E = 512, V x T = 4 x 8 = 32 frames per video, B videos. Each method
is timed with the class matrix hot in L2 (CUDA-graph replays of back-to-back calls) and cold (L2 flushed before every call,
triton.testing.do_bench); medians with 20th/80th percentiles over the runs. The memory floor is the bytes
the kernel must move (class matrix + videos + counts + output) over the copy bandwidth measured here.
Goals from the issue: >= 3x faster than eager fp16 at every B, faster than torch.compile, <= 1.5x the
floor at B = 1. This script reports; it never asserts a time.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Sequence

P, E, V, T = 36, 512, 4, 8
QUANTILES = (0.5, 0.2, 0.8)
METHODS = ("triton", "eager_fp32", "eager_fp16", "compile_fp16", "matmul_fp16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--k", type=int, nargs="+", default=[400, 600], help="numbers of classes")
    parser.add_argument("--b", type=int, nargs="+", default=[1, 8, 64, 256], help="batch sizes (videos)")
    parser.add_argument("--views", default="pool", choices=("pool", "mean"))
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="include torch.compile(mode='max-autotune') (minutes of autotuning per shape)")
    parser.add_argument("--warmup-ms", type=float, default=25.0)
    parser.add_argument("--rep-ms", type=float, default=200.0)
    parser.add_argument("--json", default="kernel_maka.json", help="where to write the results")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from apclip.benchmarks.contenders import cuda_reason

    reason = cuda_reason()
    if reason is not None:
        print(f"apclip-bench kernel: skipped, {reason}: this benchmark needs a CUDA GPU and a CUDA build of "
              "torch. The kernel's CPU tests are `pytest tests/kernels` (TRITON_INTERPRET=1).", file=sys.stderr)
        return 2
    import torch

    from apclip.benchmarks.machine import record

    bandwidth = copy_bandwidth_gbs(torch)
    rows = []
    for k in args.k:
        for b in args.b:
            rows += bench_shape(torch, b, k, args.views, args.compile, args.warmup_ms, args.rep_ms, bandwidth)
    print_table(rows, bandwidth)
    report = {
        "benchmark": "kernel", "copy_bandwidth_gbs": bandwidth,
        "shape": {"P": P, "E": E, "V": V, "T": T, "views": args.views, "dtype": "float16"},
        "rows": flat_rows(rows), "shapes": rows, "machine": record(),
    }
    from apclip.fileio import atomic_write

    with atomic_write(args.json) as f:
        json.dump(report, f, indent=1)
    print(f"wrote {args.json}")
    return 0


def flat_rows(rows: list[dict]) -> list[dict]:
    """One row per (method, shape) in apclip-bench's common form: contender, stage, median_ms, ..."""
    out = []
    for r in rows:
        for name in METHODS:
            if name in r:
                out.append({"contender": name, "stage": f"K={r['K']} B={r['B']} L2 {r['l2']}", **r[name],
                            "floor_ms": r["floor_ms"], "rel_l2_vs_float64": r["rel_l2_vs_float64"].get(name)})
    return out


def copy_bandwidth_gbs(torch: Any) -> float:
    """Device-to-device copy bandwidth (read + write bytes per second), 1 GiB, median of do_bench."""
    import triton.testing

    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * src.numel() / (ms * 1e-3) / 1e9


def make_eager_maka(torch: Any, counts: Any, num_prompts: int, views: str) -> Callable[[Any, Any], Any]:
    """The reference math in plain torch (matmul + amax + mean), in the inputs' dtype."""
    k, p = counts.shape[0], num_prompts
    real = torch.arange(p, device=counts.device)[None, :] < counts[:, None]  # [K, P]
    pad_bias = {dtype: torch.zeros(k, p, dtype=dtype, device=counts.device).masked_fill(~real, float("-inf"))
                for dtype in (torch.float16, torch.float32)}  # [K, P]: -inf on padded prompts

    def eager_maka(video: Any, classes: Any) -> Any:
        b, v, t, e = video.shape
        groups = 1 if views == "pool" else v
        frames = video.reshape(b * v * t, e)  # [B, V, T, E] -> [B*V*T, E]
        sim = (frames @ classes.reshape(k * p, e).T).view(b, groups, v * t // groups, k, p)  # [B, G, F, K, P]
        best_prompt = (sim + pad_bias[sim.dtype]).amax(dim=4).float().mean(dim=(1, 2))  # [B, K]
        best_frame = sim.amax(dim=2).float().masked_fill(~real, 0.0)  # [B, G, K, P]
        mean_best_frame = (best_frame.sum(dim=3) / counts).mean(dim=1)  # [B, K]
        return 0.5 * (best_prompt + mean_best_frame)

    return eager_maka


def bench_shape(torch: Any, b: int, k: int, views: str, with_compile: bool, warmup_ms: float, rep_ms: float,
                bandwidth_gbs: float) -> list[dict]:
    from apclip.testing.kernel_cases import Case, make_inputs, reference, relative_l2
    from apclip.kernels.maka import choose_blocks, maka_score_triton

    video, classes, counts = make_inputs(Case(b, V, T, k, P, E, views, "float16"), seed=b * 1000 + k,
                                         device="cuda")
    video32, classes32 = video.float(), classes.float()
    eager = make_eager_maka(torch, counts, P, views)
    out = torch.empty(b, k, device="cuda")
    methods: dict[str, Callable[[], Any]] = {
        "triton": lambda: maka_score_triton(video, classes, counts, views=views, out=out),
        "eager_fp32": lambda: eager(video32, classes32),
        "eager_fp16": lambda: eager(video, classes),
        "matmul_fp16": lambda: video.view(-1, E) @ classes.view(-1, E).T,
    }
    if with_compile:
        compiled = torch.compile(eager, mode="max-autotune", dynamic=False)
        methods["compile_fp16"] = lambda: compiled(video, classes)

    ref = reference(video, classes, counts, views)
    errors = {name: relative_l2(methods[name](), ref) for name in methods if name != "matmul_fp16"}
    floor_bytes = (classes.numel() * classes.element_size() + video.numel() * video.element_size()
                   + counts.numel() * counts.element_size() + b * k * 4)
    blocks = choose_blocks(torch.cuda.get_device_capability(), b, V, T, k, P, E, 2)
    rows = []
    for l2 in ("hot", "cold"):
        row = {"K": k, "B": b, "l2": l2, "floor_ms": floor_bytes / (bandwidth_gbs * 1e9) * 1e3,
               "floor_bytes": floor_bytes, "gflop": 2 * b * V * T * k * P * E / 1e9, "blocks": blocks.__dict__,
               "rel_l2_vs_float64": errors}
        for name, fn in methods.items():
            median, p20, p80, how = time_ms(torch, fn, flush_l2=(l2 == "cold"), warmup_ms=warmup_ms,
                                            rep_ms=rep_ms)
            row[name] = {"median_ms": median, "p20_ms": p20, "p80_ms": p80, "timed_with": how,
                         "videos_per_s": b / (median * 1e-3), "peak_extra_mib": peak_extra_mib(torch, fn)}
        rows.append(row)
        print(f"K={k} B={b} L2 {l2}: " + ", ".join(f"{n} {row[n]['median_ms'] * 1e3:.1f} us" for n in methods),
              flush=True)
    return rows


def time_ms(torch: Any, fn: Callable[[], Any], flush_l2: bool, warmup_ms: float, rep_ms: float
            ) -> tuple[float, float, float, str]:
    """(median, p20, p80) milliseconds of one call and how they were taken.

    cold: triton.testing.do_bench, which zeroes a 256 MB buffer before every call (L2 flushed; the flush
    also keeps the GPU busy while the next call is launched). hot: replays of a CUDA graph of back-to-back
    calls (the class matrix stays in L2, no launch overhead), or, where a graph cannot be captured,
    CUDA events around each of many back-to-back calls.
    """
    import triton.testing

    quantiles = list(QUANTILES)
    if flush_l2:
        return (*triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=quantiles), "do_bench")
    try:
        return (*triton.testing.do_bench_cudagraph(fn, rep=rep_ms, quantiles=quantiles), "cuda graph")
    except Exception as exc:  # e.g. torch.compile's own CUDA graphs refusing an outer capture
        torch.cuda.synchronize()
        print(f"  (no CUDA graph for this method: {type(exc).__name__}; timing calls with events)")
    from apclip.benchmarks.timing import cuda_timer, measure, quantiles_ms

    times = measure({"call": cuda_timer(torch, fn)}, runs=200, warmup=max(3, int(warmup_ms)))["call"]
    return (*quantiles_ms(times, QUANTILES), "events")


def peak_extra_mib(torch: Any, fn: Callable[[], Any]) -> float:
    """Device memory one call allocates beyond what is already held (the similarity matrix, for eager)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def print_table(rows: list[dict], bandwidth_gbs: float) -> None:
    names = [n for n in METHODS if n in rows[0]]
    print(f"copy bandwidth {bandwidth_gbs:.0f} GB/s; medians in microseconds; hot: CUDA-graph replays, "
          "cold: do_bench with L2 flushed")
    header = f"{'K':>4} {'B':>4} {'L2':>4} " + " ".join(f"{n:>12}" for n in names)
    header += f" {'floor':>8} {'fp16/trit':>9} {'comp/trit':>9} {'trit/floor':>10}"
    print(header)
    for r in rows:
        t = {n: r[n]["median_ms"] * 1e3 for n in names}
        line = f"{r['K']:>4} {r['B']:>4} {r['l2']:>4} " + " ".join(f"{t[n]:>12.1f}" for n in names)
        compile_ratio = f"{t['compile_fp16'] / t['triton']:>9.2f}" if "compile_fp16" in t else f"{'-':>9}"
        line += (f" {r['floor_ms'] * 1e3:>8.1f} {t['eager_fp16'] / t['triton']:>9.2f} {compile_ratio}"
                 f" {t['triton'] / (r['floor_ms'] * 1e3):>10.2f}")
        print(line)


if __name__ == "__main__":
    sys.exit(main())
