"""Correctness of the fused MAKA kernel against the float64 reference, on random shapes.

The same cases serve the CPU tests (tests/kernels, through TRITON_INTERPRET=1) and this GPU script,
which compiles the kernel for real and runs the whole shape grid plus the serving sizes
(K = 600, B = 256) on fp16 inputs:

    python -m apclip.benchmarks.kernel_maka_check [--dtype float16] [--seed N] [--json out.json]

A case passes when every output is written (the output is NaN-poisoned before the launch) and the
relative L2 error against float64 MAKA on the same (already rounded) inputs is <= 1e-3.
"""
from __future__ import annotations

import argparse
import itertools
import json
import platform
import random
import sys
from dataclasses import asdict, dataclass
from typing import Sequence

import torch

# The shape grid; the CPU tests sample it, this script runs all of it.
GRID = {"b": (1, 3), "v": (1, 2, 4), "t": (3, 8), "k": (1, 5, 37), "p": (1, 12, 36), "e": (16, 64, 512),
        "views": ("pool", "mean")}
SERVING_CASES = [(b, 4, 8, k, 36, 512) for k in (400, 600) for b in (1, 64, 256)]  # (B, V, T, K, P, E)
MAX_REL_L2 = 1e-3  # DESIGN.md: kernel vs float64 reference on fp16 inputs


@dataclass(frozen=True)
class Case:
    b: int
    v: int
    t: int
    k: int
    p: int
    e: int
    views: str
    dtype: str = "float16"

    def __str__(self) -> str:
        return f"B{self.b}-V{self.v}-T{self.t}-K{self.k}-P{self.p}-E{self.e}-{self.views}-{self.dtype}"


def grid_cases(dtype: str = "float16") -> list[Case]:
    return [Case(*values, dtype=dtype) for values in itertools.product(*GRID.values())]


def sample_cases(seed: int, n: int, dtypes: Sequence[str] = ("float16", "float32")) -> list[Case]:
    """n distinct cases drawn from the grid, dtypes alternating."""
    grid = list(itertools.product(*GRID.values()))
    picks = random.Random(seed).sample(grid, n)
    return [Case(*values, dtype=dtypes[i % len(dtypes)]) for i, values in enumerate(picks)]


def make_inputs(case: Case, seed: int, device: str, padding: str = "zeros"
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised random video [B, V, T, E] and classes [K, P, E] in case.dtype, uneven counts [K] int32.

    padding: what the rows past counts[k] hold: "zeros" (the bundle format) or "noise" (must not matter).
    """
    gen = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, case.dtype)
    video = torch.nn.functional.normalize(torch.randn(case.b, case.v, case.t, case.e, generator=gen), dim=-1)
    classes = torch.nn.functional.normalize(torch.randn(case.k, case.p, case.e, generator=gen), dim=-1)
    counts = torch.randint(1, case.p + 1, (case.k,), generator=gen, dtype=torch.int32)
    counts[0] = case.p  # one full class and, when P > 1, one with a single prompt: both ends of the mask
    if case.k > 1:
        counts[-1] = 1
    padded = torch.arange(case.p)[None, :] >= counts[:, None]  # [K, P]
    if padding == "zeros":
        classes[padded] = 0.0
    else:  # large values that would win every maximum if a padded row leaked in
        classes[padded] = 3.0 + torch.rand(int(padded.sum()), case.e, generator=gen)
    return video.to(dtype).to(device), classes.to(dtype).to(device), counts.to(device)


def reference(video: torch.Tensor, classes: torch.Tensor, counts: torch.Tensor, views: str) -> torch.Tensor:
    """float64 MAKA of the (already rounded) inputs, on CPU."""
    from apclip.scoring import maka_score_views

    return maka_score_views(video.double().cpu(), classes.double().cpu(), counts.cpu(), views)


def relative_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double().cpu() - ref).norm() / ref.norm())


@dataclass(frozen=True)
class CaseResult:
    case: str
    all_written: bool
    rel_l2: float
    max_abs: float

    @property
    def passed(self) -> bool:
        return self.all_written and self.rel_l2 <= MAX_REL_L2


def run_case(case: Case, seed: int, device: str) -> CaseResult:
    from apclip.kernels.maka import maka_score_triton

    video, classes, counts = make_inputs(case, seed, device)
    out = torch.full((case.b, case.k), float("nan"), device=device)  # unwritten elements stay NaN
    maka_score_triton(video, classes, counts, views=case.views, out=out)
    ref = reference(video, classes, counts, case.views)
    written = bool(torch.isfinite(out).all())
    diff = (out.double().cpu() - ref).abs()
    return CaseResult(str(case), written, relative_l2(out, ref) if written else float("inf"),
                      float(diff.max()) if written else float("inf"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    parser.add_argument("--seed", type=int, default=random.SystemRandom().randrange(2**31))
    parser.add_argument("--json", default="kernel_maka_check.json", help="where to write the results")
    args = parser.parse_args(argv)
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
    import triton

    with open(args.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "capability": torch.cuda.get_device_capability(),
                   "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
                   "seed": args.seed, "results": [asdict(r) | {"passed": r.passed} for r in results]}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
