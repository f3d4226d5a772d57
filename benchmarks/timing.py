"""The one timing loop of apclip-bench, and its summaries.

Host work (CPU runners, decoding, numpy) is timed with `time.perf_counter` around calls that return
when their work is done. Asynchronous GPU work is timed on the device: CUDA events around the call
(`cuda_timer`), or `triton.testing.do_bench` for kernels (`do_bench_ms`); never a host clock around
a launch. Warm-up rounds are run and dropped; stages run interleaved, one call of each per round, so
a job that starts or stops on a shared machine skews every stage alike.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

Timer = Callable[[], float]  # runs the work once and returns its milliseconds


def host_timer(fn: Callable[[], Any]) -> Timer:
    """Milliseconds of fn() on the host clock (for work that is finished when fn returns)."""
    def timed() -> float:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    return timed


def cuda_timer(torch: Any, fn: Callable[[], Any]) -> Timer:
    """Milliseconds of fn()'s device work, between CUDA events recorded on the current stream."""
    def timed() -> float:
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end)
    return timed


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), milliseconds) for one call of host work: a figure per item, not a benchmark loop."""
    start = time.perf_counter()
    result = fn()
    return result, (time.perf_counter() - start) * 1e3


def measure(timers: dict[str, Timer], runs: int, warmup: int = 1) -> dict[str, list[float]]:
    """Milliseconds of every timer over `runs` interleaved rounds, after `warmup` rounds (dropped)."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    for _ in range(warmup):
        for timer in timers.values():
            timer()
    times: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(runs):
        for name, timer in timers.items():
            times[name].append(float(timer()))
    return times


def do_bench_ms(fn: Callable[[], Any], warmup_ms: float = 25.0, rep_ms: float = 100.0) -> list[float]:
    """Every repetition's milliseconds from triton.testing.do_bench (L2 flushed between calls)."""
    import triton.testing

    times = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all")
    return [float(t) for t in times]


def summarize(ms: Sequence[float]) -> dict[str, float | int]:
    """median, p90, p99, min, max and mean (milliseconds) and the number of runs."""
    if not len(ms):
        raise ValueError("no timings to summarize")
    a = np.asarray(ms, dtype=np.float64)
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "min_ms": float(a.min()), "max_ms": float(a.max()),
            "mean_ms": float(a.mean()), "runs": int(a.size)}


def quantiles_ms(ms: Sequence[float], quantiles: Sequence[float]) -> list[float]:
    a = np.asarray(ms, dtype=np.float64)
    return [float(np.quantile(a, q)) for q in quantiles]
