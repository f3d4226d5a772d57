"""Correctness of the fused MAKA kernel against the float64 reference, on random shapes.

The same cases serve the CPU tests (tests/kernels, through TRITON_INTERPRET=1) and this GPU script,
which compiles the kernel for real and runs the whole shape grid plus the serving sizes
(K = 600, B = 256) on fp16 inputs:

    python -m apclip.benchmarks.kernel_maka_check [--dtype float16] [--seed N] [--json out.json]

A case passes when every output is written (the output is NaN-poisoned before the launch) and the
relative L2 error against float64 MAKA on the same (already rounded) inputs is <= 1e-3.

Without a GPU, --ahead-of-time compiles the launches the block table picks for the serving sizes to
sm_80 / sm_89 / sm_90 machine code with the ptxas bundled in the triton wheel and reports registers,
spills, shared memory and whether tl.dot became tensor-core instructions (TRITON_INTERPRET must be unset).
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import sys
from dataclasses import asdict
from typing import Sequence

import torch

from apclip.testing.kernel_cases import (AOT_CAPABILITIES, AOT_SHAPES, MAX_REL_L2, SERVING_CASES, Case,
                                         compile_ahead_of_time, grid_cases, run_case)


def report_ahead_of_time(json_path: str) -> int:
    rows = [compile_ahead_of_time(cap, shape, views) for cap in AOT_CAPABILITIES for shape in AOT_SHAPES
            for views in ("pool", "mean")]
    print(f"{'sm':>4} {'shape (B,V,T,K,P,E)':<26} {'views':<5} {'rows x N x E':>14} {'warps':>5} {'regs':>5} "
          f"{'spill B':>7} {'smem KB':>7} {'tensor cores':>12}")
    for r in rows:
        bl = r["blocks"]
        tile = f"{bl['block_b'] * bl['v_pad'] * bl['t_pad']}x{bl['block_n']}x{bl['block_e']}"
        sm = f"{r['capability'][0]}{r['capability'][1]}"
        print(f"{sm:>4} {str(tuple(r['shape'])):<26} {r['views']:<5} {tile:>14} "
              f"{bl['num_warps']:>5} {r['registers']:>5} {r['spill_bytes']:>7} {r['shared_bytes'] / 1024:>7.0f} "
              f"{str(r['tensor_cores']):>12}")
    with open(json_path, "w") as f:
        json.dump({"triton": _triton_version(), "torch": torch.__version__, "rows": rows}, f, indent=1)
    bad = [r for r in rows if r["spill_bytes"] or not r["tensor_cores"]]
    print(f"{len(rows) - len(bad)}/{len(rows)} launches compile to tensor cores without spills")
    return 1 if bad else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    parser.add_argument("--seed", type=int, default=random.SystemRandom().randrange(2**31))
    parser.add_argument("--json", default="kernel_maka_check.json", help="where to write the results")
    parser.add_argument("--ahead-of-time", action="store_true",
                        help="no GPU needed: compile the table's launches for sm_80/89/90 and report spills")
    args = parser.parse_args(argv)
    if args.ahead_of_time:
        return report_ahead_of_time(args.json)
    if not torch.cuda.is_available():
        print("kernel_maka_check: no CUDA GPU here; the CPU tests (pytest tests/kernels) cover the "
              "interpreter. Run this on a CUDA machine.", file=sys.stderr)
        return 2
    cases = grid_cases(args.dtype) + [Case(*shape, views=views, dtype=args.dtype)
                                      for shape in SERVING_CASES for views in ("pool", "mean")]
    results = [run_case(case, args.seed + i, "cuda") for i, case in enumerate(cases)]
    print(f"{'case':<44} {'written':>7} {'rel L2':>10} {'max abs':>10}  result")
    for r in results:
        print(f"{r.case:<44} {str(r.all_written):>7} {r.rel_l2:10.2e} {r.max_abs:10.2e}  "
              f"{'pass' if r.passed else 'FAIL'}")
    failed = sum(not r.passed for r in results)
    print(f"{len(results) - failed}/{len(results)} passed (seed {args.seed}, rel L2 limit {MAX_REL_L2})")
    with open(args.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "capability": torch.cuda.get_device_capability(),
                   "torch": torch.__version__, "triton": _triton_version(), "python": platform.python_version(),
                   "seed": args.seed, "results": [asdict(r) | {"passed": r.passed} for r in results]}, f, indent=1)
    return 1 if failed else 0


def _triton_version() -> str:
    import triton

    return triton.__version__


if __name__ == "__main__":
    sys.exit(main())
