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


STATS = ("median_ms", "p90_ms", "p99_ms", "min_ms", "max_ms", "mean_ms")


def summarize(ms: Sequence[float]) -> dict[str, float | int]:
    """median, p90, p99, min, max and mean (milliseconds) and the number of runs, all from the one sorted
    array of `ms` (every sample of one stage, in milliseconds), so min <= median <= p90 <= p99 <= max."""
    a = np.sort(np.asarray(ms, dtype=np.float64).ravel())
    if not a.size:
        raise ValueError("no timings to summarize")
    if not np.isfinite(a).all() or a[0] < 0:
        raise ValueError(f"timings must be finite, non-negative milliseconds, got {a.tolist()}")
    median, p90, p99 = np.quantile(a, (0.5, 0.9, 0.99))
    return {"median_ms": float(median), "p90_ms": float(p90), "p99_ms": float(p99), "min_ms": float(a[0]),
            "max_ms": float(a[-1]), "mean_ms": float(a.mean()), "runs": int(a.size)}


def per_item(ms: Sequence[float], counts: Sequence[int]) -> list[float]:
    """Milliseconds per item of each run, each divided by the items of that same run (windows of a stream)."""
    if len(ms) != len(counts):
        raise ValueError(f"{len(ms)} timings but {len(counts)} item counts")
    return [t / max(1, n) for t, n in zip(ms, counts)]


def quantiles_ms(ms: Sequence[float], quantiles: Sequence[float]) -> list[float]:
    a = np.asarray(ms, dtype=np.float64)
    return [float(np.quantile(a, q)) for q in quantiles]
