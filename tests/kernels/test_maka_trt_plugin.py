"""The MAKA TensorRT plugin without TensorRT: its kernel compiled ahead of time to PTX for sm_80 / 87 /
89 / 90 with exactly the parameters TensorRT's AOT launch passes (ptxas assembles it), and the same
kernel, launched with TensorRT's argument order and grid, computing MAKA (on CPU via the interpreter).

The AOT compile runs in a subprocess because this session's triton is set up for the interpreter.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
SHAPES = [((8, 0), 1, 4, 8, 400, 36, 512, "pool"), ((8, 7), 1, 4, 8, 600, 36, 512, "pool"),
          ((8, 9), 8, 4, 8, 400, 36, 512, "mean"), ((9, 0), 64, 4, 8, 600, 36, 512, "pool"),
          ((9, 0), 1, 1, 3, 5, 12, 48, "mean")]  # E = 48: ragged E chunks; 5 classes of 12 prompts


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("plugin-ptx")
    code = ("import json, dataclasses\n"
            "from apclip.kernels.maka_trt_plugin import compile_plugin_kernel\n"
            "results = []\n"
            f"for i, (cap, b, v, t, k, p, e, views) in enumerate({SHAPES!r}):\n"
            "    kernel = compile_plugin_kernel(cap, b, v, t, k, p, e, views)\n"
            f"    path = {str(out)!r} + f'/k{{i}}.ptx'\n"
            "    open(path, 'w').write(kernel.ptx)\n"
            "    d = dataclasses.asdict(kernel); d.pop('ptx'); d['path'] = path; results.append(d)\n"
            "print(json.dumps(results))\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("index", range(len(SHAPES)), ids=lambda i: f"sm{SHAPES[i][0][0]}{SHAPES[i][0][1]}-B{SHAPES[i][1]}")
def test_plugin_ptx_has_tensorrts_launch_contract(compiled, index):
    from apclip.kernels.maka_trt_plugin import INPUTS, SCALARS

    result = compiled[index]
    capability, b, v, t, k, p, e, _ = SHAPES[index]
    ptx = open(result["path"]).read()
    arch = f"sm_{capability[0]}{capability[1]}"
    assert f".target {arch}" in ptx
    assert result["ptx_params"] == len(INPUTS) + len(SCALARS) + 1  # inputs, scalars, output
    assert result["scalars"]["B"] is None and result["scalars"]["stride_video_b"] == v * t * e
    assert result["scalars"]["K"] == k and result["scalars"]["stride_out_b"] == k
    assert result["grid_classes"] * result["blocks"]["classes_per_tile"] >= k
    assert result["threads"] % 32 == 0 and result["shared_bytes"] > 0
    if os.path.exists(PTXAS):  # the PTX TensorRT will JIT must assemble for its GPU
        gpu = arch + ("a" if capability == (9, 0) else "")
        done = subprocess.run([PTXAS, f"--gpu-name={gpu}", result["path"], "-o", result["path"] + ".cubin"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]


def test_scratch_parameters_the_kernel_reads_are_refused():
    from apclip.kernels.maka_trt_plugin import drop_unused_trailing_params

    ptx = (".visible .entry k(\n\t.param .u64 k_param_0,\n\t.param .u32 k_param_1,\n\t.param .u64 k_param_2\n)\n"
           "{\n\tld.param.u64 %rd1, [k_param_0];\n\tld.param.u32 %r1, [k_param_1];\n}\n")
    stripped, dropped = drop_unused_trailing_params(ptx, "k", 2)
    assert dropped == 1 and "k_param_2" not in stripped and "k_param_1" in stripped
    assert drop_unused_trailing_params(ptx, "k", 3) == (ptx, 0)
    reads_scratch = ptx.replace("[k_param_1]", "[k_param_2]")
    with pytest.raises(ValueError, match="scratch"):
        drop_unused_trailing_params(reads_scratch, "k", 2)


def launch_like_tensorrt(video, classes, counts, views: str = "pool", opt_batch: int | None = None):
    """Run the plugin kernel with the arguments, order and grid TensorRT's AOT launch uses, from torch
    (CUDA, or CPU under TRITON_INTERPRET=1): the check that the plugin computes MAKA without TensorRT."""
    import torch
    import triton

    from apclip.kernels.maka import _capability, choose_blocks
    from apclip.kernels.maka_trt_plugin import _maka_plugin_kernel, scalar_values

    b, v, t, e = video.shape
    k, p, _ = classes.shape
    blocks = choose_blocks(_capability(video.device), opt_batch or b, v, t, k, p, e, video.element_size())
    scalars = scalar_values(v, t, k, p, e)
    scalars["B"] = b
    out = torch.full((b, k), float("nan"), dtype=torch.float32, device=video.device)
    grid = (triton.cdiv(k, blocks.classes_per_tile), triton.cdiv(b, blocks.block_b))
    _maka_plugin_kernel[grid](video, classes, counts.to(torch.int32), *scalars.values(), out,
                              BLOCK_B=blocks.block_b, V_PAD=blocks.v_pad, T_PAD=blocks.t_pad,
                              GROUPS_PER_VIDEO=1 if views == "pool" else blocks.v_pad,
                              CLASSES_PER_TILE=blocks.classes_per_tile, BLOCK_N=blocks.block_n,
                              BLOCK_E=blocks.block_e, E_RAGGED=e % blocks.block_e != 0, DOT_PRECISION="ieee",
                              num_warps=blocks.num_warps, num_stages=blocks.num_stages)
    return out


@pytest.mark.parametrize("case_args", [(3, 2, 8, 5, 12, 64, "pool"), (2, 4, 3, 37, 36, 16, "mean"),
                                       (1, 1, 8, 9, 1, 48, "pool")])
def test_plugin_kernel_launched_like_tensorrt_computes_maka(device, case_args):
    from apclip.testing.kernel_cases import MAX_REL_L2, Case, make_inputs, reference, relative_l2

    case = Case(*case_args)
    video, classes, counts = make_inputs(case, seed=11, device=device, padding="nan")
    out = launch_like_tensorrt(video, classes, counts, case.views)  # starts as NaN: every score must be written
    assert bool(out.isfinite().all())
    assert relative_l2(out, reference(video, classes, counts, case.views)) <= MAX_REL_L2


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="TensorRT is not installed")
def test_plugin_registers_with_tensorrt():  # pragma: no cover - needs TensorRT >= 10.9
    import tensorrt.plugin as trtp

    from apclip.kernels.maka_trt_plugin import register

    register()
    register()  # idempotent
    assert hasattr(trtp.op.apclip, "maka")
