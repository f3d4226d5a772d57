"""MAKA inside a TensorRT engine: the Triton kernel (kernels/maka.py) as a quickly deployable plugin.

With the plugin, one engine maps pixels to class scores ([N, 3, R, R] -> [N / (V*T), K]) and runs
under trtexec or Triton Inference Server without Python: the kernel is compiled ahead of time to PTX
(`@trtp.aot_impl`, TensorRT >= 10.9), and TensorRT embeds that PTX in the engine.

TensorRT's AOT launch contract passes the kernel's arguments as: input pointers, then the extra
scalar arguments (SymInt32 expressions, resolved at run time from the shapes), then output pointers.
The MAKA kernel takes `out_ptr` before its sizes, so `_maka_plugin_kernel` reorders them and calls it
(a @triton.jit call is inlined: no cost). Launch shape: the block table of kernels/maka.py at the
profile's opt batch for the build GPU's compute capability; grid (class tiles, ceil(B / BLOCK_B)),
with B symbolic (the engine's batch dimension).

Needs triton (and tensorrt for `register`); `compile_plugin_kernel` needs no GPU and no TensorRT,
which is how it is tested.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

# maka.py first: it imports torch, so a torch-less install fails here before triton is loaded.
from apclip.kernels.maka import _maka_kernel, choose_blocks

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

PLUGIN_NAMESPACE = "apclip"
PLUGIN_NAME = "maka"
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"
INPUTS = ("video", "classes", "counts")  # fp16 [B, V, T, E], fp16 [K, P, E], int32 [K]
OUTPUT = "scores"  # fp32 [B, K]
# The scalar arguments, in kernel order; "B" is the only one that depends on the run-time shape.
SCALARS = ("B", "V", "T", "K", "P", "E", "stride_video_b", "stride_video_v", "stride_video_t", "stride_prompt",
           "stride_out_b")


@triton.jit
def _maka_plugin_kernel(
    # inputs
    video_ptr, classes_ptr, counts_ptr,
    # extra scalar arguments (sizes, then strides in elements)
    B, V, T, K, P, E, stride_video_b, stride_video_v, stride_video_t, stride_prompt, stride_out_b,
    # outputs
    out_ptr,
    # constexprs, as _maka_kernel takes them
    BLOCK_B: tl.constexpr, V_PAD: tl.constexpr, T_PAD: tl.constexpr, GROUPS_PER_VIDEO: tl.constexpr,
    CLASSES_PER_TILE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr, E_RAGGED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    _maka_kernel(video_ptr, classes_ptr, counts_ptr, out_ptr, B, V, T, K, P, E,
                 stride_video_b, stride_video_v, stride_video_t, stride_prompt, stride_out_b,
                 BLOCK_B, V_PAD, T_PAD, GROUPS_PER_VIDEO, CLASSES_PER_TILE, BLOCK_N, BLOCK_E, E_RAGGED,
                 DOT_PRECISION)


@dataclass(frozen=True)
class PluginKernel:
    """What the plugin's aot_impl hands TensorRT, plus what the tests check."""

    name: str  # PTX entry name
    ptx: str
    grid_classes: int  # grid x: class tiles (static: K is fixed by the class matrix in the engine)
    block_b: int  # grid y = ceil(B / block_b)
    threads: int  # num_warps * 32
    shared_bytes: int
    scalars: dict[str, int | None]  # SCALARS -> value (None: from the batch dimension at run time)
    blocks: dict[str, Any]
    ptx_params: int  # parameters of the PTX entry: exactly what TensorRT passes, 3 + len(SCALARS) + 1
    dropped_params: int  # unused trailing parameters Triton appended (scratch pointers) and we removed


def scalar_values(v: int, t: int, k: int, p: int, e: int) -> dict[str, int | None]:
    """The kernel's scalar arguments for contiguous video [B, V, T, E], classes [K, P, E], out [B, K]."""
    return {"B": None, "V": v, "T": t, "K": k, "P": p, "E": e, "stride_video_b": v * t * e,
            "stride_video_v": t * e, "stride_video_t": e, "stride_prompt": e, "stride_out_b": k}


def compile_plugin_kernel(capability: tuple[int, int], opt_batch: int, v: int, t: int, k: int, p: int, e: int,
                          views: str = "pool") -> PluginKernel:
    """triton.compile of the plugin kernel to PTX for one GPU generation, fp16 inputs (no GPU needed)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    blocks = choose_blocks(capability, opt_batch, v, t, k, p, e, element_bytes=2)
    constexprs = dict(BLOCK_B=blocks.block_b, V_PAD=blocks.v_pad, T_PAD=blocks.t_pad,
                      GROUPS_PER_VIDEO=1 if views == "pool" else blocks.v_pad,
                      CLASSES_PER_TILE=blocks.classes_per_tile, BLOCK_N=blocks.block_n, BLOCK_E=blocks.block_e,
                      E_RAGGED=e % blocks.block_e != 0, DOT_PRECISION="ieee")
    scalars = scalar_values(v, t, k, p, e)
    names = _maka_plugin_kernel.arg_names
    signature: dict[str, str] = {}
    attrs: dict[tuple[int, ...], list] = {}
    pointer_types = {"video_ptr": "*fp16", "classes_ptr": "*fp16", "counts_ptr": "*i32", "out_ptr": "*fp32"}
    for index, name in enumerate(names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointer_types:
            signature[name] = pointer_types[name]
            attrs[(index,)] = [["tt.divisibility", 16]]  # TensorRT aligns device buffers to >= 256 bytes
        else:
            signature[name] = "i32"
            value = scalars[name]
            if value is not None and value % 16 == 0:  # only static sizes may promise divisibility
                attrs[(index,)] = [["tt.divisibility", 16]]
    source = ASTSource(_maka_plugin_kernel, signature, constexprs=constexprs, attrs=attrs)
    kernel = triton.compile(source, target=GPUTarget("cuda", capability[0] * 10 + capability[1], 32),
                            options={"num_warps": blocks.num_warps, "num_stages": blocks.num_stages})
    name = kernel.metadata.name
    contract = len(INPUTS) + len(SCALARS) + 1
    ptx, dropped = drop_unused_trailing_params(kernel.asm["ptx"], name, contract)
    return PluginKernel(name=name, ptx=ptx, grid_classes=triton.cdiv(k, blocks.classes_per_tile),
                        block_b=blocks.block_b, threads=blocks.num_warps * 32, shared_bytes=kernel.metadata.shared,
                        scalars=scalars, blocks=asdict(blocks), ptx_params=count_ptx_params(ptx, name),
                        dropped_params=dropped)


def count_ptx_params(ptx: str, entry: str) -> int:
    """Parameters of `.entry name(...)` in the PTX (Triton >= 3.3 may append scratch pointers)."""
    match = re.search(r"\.entry\s+" + re.escape(entry) + r"\s*\((.*?)\)", ptx, re.S)
    if match is None:
        raise ValueError(f"PTX has no entry {entry}")
    return len(re.findall(r"\.param\s", match.group(1)))


def drop_unused_trailing_params(ptx: str, entry: str, keep: int) -> tuple[str, int]:
    """The PTX with the entry's parameters past the first `keep` removed, and how many were removed.

    Triton >= 3.3 appends global/profile scratch pointers to every kernel; TensorRT's AOT launch passes
    exactly inputs + extra scalars + outputs. When the kernel never reads the extra parameters (no
    scratch memory), removing them from the declaration gives the launch contract TensorRT expects;
    a kernel that reads one cannot run as a QDP and is refused."""
    match = re.search(r"(\.entry\s+" + re.escape(entry) + r"\s*\()(.*?)(\))", ptx, re.S)
    if match is None:
        raise ValueError(f"PTX has no entry {entry}")
    params = [p.strip() for p in match.group(2).split(",") if p.strip()]
    extra = params[keep:]
    for param in extra:
        param_name = param.split()[-1]
        if len(re.findall(re.escape(param_name) + r"\b", ptx)) > 1:
            raise ValueError(f"kernel {entry} reads its parameter {param_name} (scratch memory): it cannot be "
                             f"launched by TensorRT, which passes {keep} arguments")
    if not extra:
        return ptx, 0
    declaration = match.group(1) + "\n\t" + ",\n\t".join(params[:keep]) + "\n" + match.group(3)
    return ptx[:match.start()] + declaration + ptx[match.end():], len(extra)


def register() -> None:
    """Register apclip::maka with TensorRT's plugin registry (idempotent). Needs tensorrt >= 10.9."""
    global _registered
    if _registered:
        return
    import tensorrt as trt
    import tensorrt.plugin as trtp

    @trtp.register(PLUGIN_ID)
    def maka_desc(video: trtp.TensorDesc, classes: trtp.TensorDesc, counts: trtp.TensorDesc,
                  mean_views: int, opt_batch: int) -> trtp.TensorDesc:
        return trtp.from_shape_expr((video.shape_expr[0], classes.shape_expr[0]), dtype=trt.float32)

    @trtp.autotune(PLUGIN_ID)
    def maka_autotune(video, classes, counts, outputs):
        return [trtp.AutoTuneCombination("FP16, FP16, INT32, FP32")]

    @trtp.aot_impl(PLUGIN_ID)
    def maka_aot(video: trtp.TensorDesc, classes: trtp.TensorDesc, counts: trtp.TensorDesc, mean_views: int,
                 opt_batch: int, outputs, tactic: int):
        v, t, e = _static(video.shape_expr, 1, 4)
        k, p, _ = _static(classes.shape_expr, 0, 3)
        capability = triton.runtime.driver.active.get_current_target().arch
        compiled = compile_plugin_kernel((capability // 10, capability % 10), opt_batch, v, t, k, p, e,
                                         "mean" if mean_views else "pool")
        launch = trtp.KernelLaunchParams()
        launch.grid_x = compiled.grid_classes
        launch.grid_y = trtp.cdiv(video.shape_expr[0], compiled.block_b)
        launch.block_x = compiled.threads
        launch.shared_mem = compiled.shared_bytes
        values = [video.shape_expr[0] if value is None else value for value in compiled.scalars.values()]
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(value) for value in values])
        return compiled.name.encode(), compiled.ptx.encode(), launch, extra

    _registered = True


def _static(shape_expr, start: int, stop: int) -> list[int]:
    """Dimensions start..stop-1 of a QDP shape expression, which must be build-time constants."""
    dims = []
    for i in range(start, stop):
        d = shape_expr[i]
        if not d.is_constant:
            raise ValueError(f"the MAKA plugin needs dimension {i} to be static (only the batch is dynamic)")
        dims.append(int(d.constant_value))
    return dims


_registered = False
