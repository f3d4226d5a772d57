"""Kernel test cases: the MAKA shape grid, inputs with poisoned padding, the float64 reference, and
ahead-of-time compiles of the launches the block table picks (no GPU needed).

Shared by the CPU tests (tests/kernels, through TRITON_INTERPRET=1) and the GPU check
(`python -m apclip.benchmarks.kernel_maka_check`).
"""
from __future__ import annotations

import itertools
import os
import random
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from typing import Sequence

import torch

# The shape grid; the CPU tests sample it, this script runs all of it.
GRID = {"b": (1, 3), "v": (1, 2, 4), "t": (3, 8), "k": (1, 5, 37), "p": (1, 12, 36), "e": (16, 64, 512),
        "views": ("pool", "mean")}
SERVING_CASES = [(b, 4, 8, k, 36, 512) for k in (400, 600) for b in (1, 64, 256)]  # (B, V, T, K, P, E)
AOT_SHAPES = [(b, 4, 8, k, 36, 512) for k in (400, 600) for b in (1, 8, 64, 256)] + [(3, 3, 8, 37, 12, 64),
                                                                                    (3, 1, 3, 37, 1, 16)]
AOT_CAPABILITIES = [(9, 0), (8, 0), (8, 9)]
MAX_REL_L2 = 1e-3  # docs/architecture.md "Parity thresholds": kernel vs float64 reference on fp16 inputs


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

    padding: what the rows past counts[k] hold: "zeros" (the bundle format); "noise" or "nan" (must not
    matter: large values would win every maximum, NaN would poison any sum, if a mask leaked).
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
    elif padding == "noise":
        classes[padded] = 3.0 + torch.rand(int(padded.sum()), case.e, generator=gen)
    else:
        classes[padded] = float("nan")
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


def compile_ahead_of_time(capability: tuple[int, int], shape: tuple[int, ...], views: str,
                          dtype: str = "float16") -> dict:
    """Compile the launch the block table picks for (B, V, T, K, P, E) on a GPU of that capability, here,
    without one; returns registers, spill bytes, shared memory and whether tensor cores are used."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from apclip.kernels import maka

    if maka.is_interpreted():
        raise RuntimeError("ahead-of-time compiles need TRITON_INTERPRET unset")
    b, v, t, k, p, e = shape
    video = torch.empty(b, v, t, e, dtype=getattr(torch, dtype), device="meta")  # shapes and strides only
    classes = torch.empty(k, p, e, dtype=video.dtype, device="meta")
    counts = torch.empty(k, dtype=torch.int32, device="meta")
    out = torch.empty(b, k, dtype=torch.float32, device="meta")
    blocks = maka.choose_blocks(capability, b, v, t, k, p, e, video.element_size())
    args, constexprs = maka.kernel_arguments(video, classes, counts, out, views, blocks)
    pointer_types = {torch.float16: "*fp16", torch.float32: "*fp32", torch.int32: "*i32"}
    names = maka._maka_kernel.arg_names
    signature, attrs = {}, {}
    for index, (name, value) in enumerate(zip(names, args)):  # as the JIT specializes: 16-aligned, % 16
        tensor = isinstance(value, torch.Tensor)
        signature[name] = pointer_types[value.dtype] if tensor else "i32"
        if tensor or value % 16 == 0:
            attrs[(index,)] = [["tt.divisibility", 16]]
    signature.update({name: "constexpr" for name in constexprs})
    kernel = triton.compile(ASTSource(maka._maka_kernel, signature, constexprs=constexprs, attrs=attrs),
                            target=GPUTarget("cuda", capability[0] * 10 + capability[1], 32),
                            options={"num_warps": blocks.num_warps, "num_stages": blocks.num_stages})
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "maka.cubin")
        with open(cubin, "wb") as f:
            f.write(kernel.asm["cubin"])
        usage = subprocess.run([cuobjdump, "-res-usage", cubin], capture_output=True, text=True, check=True)
    registers, spill = re.search(r"REG:(\d+) STACK:(\d+)", usage.stdout).groups()
    ptx = kernel.asm["ptx"]
    return {"capability": list(capability), "shape": list(shape), "views": views, "dtype": dtype,
            "blocks": asdict(blocks), "registers": int(registers), "spill_bytes": int(spill),
            "shared_bytes": kernel.metadata.shared, "tensor_cores": "mma.sync" in ptx or "wgmma" in ptx}
