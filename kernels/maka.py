"""Fused MAKA scoring in one Triton launch: every video, every class, every view.

For video b with frames v_i [E] and class k with real prompts c_j [E] (j < counts[k]), s_ij = v_i . c_j:

    pool:  MAKA = 1/2 * ( mean_i max_j s_ij  +  mean_j max_i s_ij )       i over all V*T frames
    mean:  MAKA = 1/2 * ( mean_i max_j s_ij  +  1/V sum_v mean_j max_{i in view v} s_ij )

The first term is the same in both modes (every view has T frames, so the mean of the per-view means is
the mean over all frames); only the column maxima (best frame per prompt) are taken per view in `mean`.

Tiling: the class matrix [K, P, E] is read as flat prompt rows [K*P, E]; a tile holds CLASSES_PER_TILE
whole classes (BLOCK_N >= CLASSES_PER_TILE * P rows), so no class straddles two programs and 36-prompt
classes waste few tensor-core columns. One program scores BLOCK_B videos (all their frames, padded to
V_PAD x T_PAD rows) against one tile:
    acc[frames, prompts] = sum over E chunks of tl.dot(frames[:, e], prompts[:, e]^T)   (fp32)
then reduces acc in registers to row maxima (per frame, over each class's real prompts) and column
maxima (per prompt, over each group of frames), and writes only out[b, k]: the frame x prompt matrix
never reaches global memory. Padded prompts are -inf for row maxima and left out of means; padded
frames, views and videos likewise; means divide by the real counts.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

import torch
import triton
import triton.language as tl

from apclip.kernels import KERNEL_DTYPES, KernelInputError, KernelUnavailableError

MAX_ROWS = 256  # padded frames per video and prompts per tile: the fp32 accumulator lives in registers
MAX_CLASSES_PER_TILE = 8  # bounds the unrolled per-class epilogue (compile time, register pressure)


@triton.jit
def _maka_kernel(
    # pointers
    video_ptr, classes_ptr, counts_ptr, out_ptr,
    # sizes
    B, V, T, K, P, E,
    # strides, in elements (E is contiguous in both inputs, K in the output)
    stride_video_b, stride_video_v, stride_video_t, stride_prompt, stride_out_b,
    # constexprs
    BLOCK_B: tl.constexpr,  # videos per program
    V_PAD: tl.constexpr, T_PAD: tl.constexpr,  # views and frames per video, padded to powers of two
    GROUPS_PER_VIDEO: tl.constexpr,  # column-max groups per video: 1 (pool) or V_PAD (mean)
    CLASSES_PER_TILE: tl.constexpr, BLOCK_N: tl.constexpr,  # whole classes per tile; prompt rows per tile
    BLOCK_E: tl.constexpr,  # embedding chunk of the dot loop
    E_RAGGED: tl.constexpr,  # E % BLOCK_E != 0: the last chunk needs a column mask
    DOT_PRECISION: tl.constexpr,  # "ieee" keeps fp32 inputs out of tf32
):
    FRAMES: tl.constexpr = V_PAD * T_PAD  # padded frame rows per video
    ROWS: tl.constexpr = BLOCK_B * FRAMES
    GROUP: tl.constexpr = FRAMES // GROUPS_PER_VIDEO  # frames sharing one column maximum
    CLASS_SLOTS: tl.constexpr = triton.next_power_of_2(CLASSES_PER_TILE)
    tile = tl.program_id(0)
    video_block = tl.program_id(1)

    # --- rows: frame r of this program is (video b, view v, frame t)
    rows = tl.arange(0, ROWS)
    b = video_block * BLOCK_B + rows // FRAMES
    v = (rows // T_PAD) % V_PAD
    t = rows % T_PAD
    frame_ok = (b < B) & (v < V) & (t < T)
    frame_ptrs = video_ptr + b * stride_video_b + v * stride_video_v + t * stride_video_t

    # --- columns: prompt row n of the tile is prompt j of class k0 + n // P
    k0 = tile * CLASSES_PER_TILE
    cols = tl.arange(0, BLOCK_N)
    class_in_tile = cols // P
    class_ok = (class_in_tile < CLASSES_PER_TILE) & (k0 + class_in_tile < K)
    count = tl.load(counts_ptr + k0 + class_in_tile, mask=class_ok, other=0)
    prompt_ok = class_ok & (cols % P < count)
    prompt_ptrs = classes_ptr + (k0 * P + cols) * stride_prompt

    # --- similarities of the tile, fp32, E in chunks
    e = tl.arange(0, BLOCK_E)
    acc = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
    for e0 in range(0, E, BLOCK_E):
        frame_mask = frame_ok[:, None]
        prompt_mask = prompt_ok[:, None]
        if E_RAGGED:
            frame_mask = frame_mask & (e0 + e < E)[None, :]
            prompt_mask = prompt_mask & (e0 + e < E)[None, :]
        frames = tl.load(frame_ptrs[:, None] + (e0 + e)[None, :], mask=frame_mask, other=0.0)  # [ROWS, BLOCK_E]
        prompts = tl.load(prompt_ptrs[:, None] + (e0 + e)[None, :], mask=prompt_mask, other=0.0)  # [N, BLOCK_E]
        acc = tl.dot(frames, tl.trans(prompts), acc, input_precision=DOT_PRECISION)

    # --- row maxima first (best prompt per frame, per class), while acc is the only large live value;
    # the per-video means go to slot c of a [BLOCK_B, CLASS_SLOTS] tile. This order spills less.
    slots = tl.arange(0, CLASS_SLOTS)
    mean_best_prompt = tl.zeros([BLOCK_B, CLASS_SLOTS], dtype=tl.float32)
    for c in tl.static_range(CLASSES_PER_TILE):
        in_class = prompt_ok & (class_in_tile == c)  # [BLOCK_N]
        best_prompt = tl.max(tl.where(in_class[None, :], acc, float("-inf")), axis=1)  # [ROWS]
        best_prompt = tl.where(frame_ok, best_prompt, 0.0)
        per_video = tl.sum(tl.reshape(best_prompt, [BLOCK_B, FRAMES]), axis=1) / (V * T)  # [BLOCK_B]
        mean_best_prompt = tl.where(slots[None, :] == c, per_video[:, None], mean_best_prompt)

    # --- column maxima: best frame of each group per prompt, 0 where the prompt or group is not real
    groups = tl.arange(0, BLOCK_B * GROUPS_PER_VIDEO)
    group_ok = (video_block * BLOCK_B + groups // GROUPS_PER_VIDEO < B) & (groups % GROUPS_PER_VIDEO < V)
    if GROUPS_PER_VIDEO == 1:
        real_groups = 1.0
    else:
        real_groups = V * 1.0
    best_frame = tl.max(tl.reshape(tl.where(frame_ok[:, None], acc, float("-inf")),
                                   [BLOCK_B * GROUPS_PER_VIDEO, GROUP, BLOCK_N]), axis=1)  # [groups, N]
    best_frame = tl.where(group_ok[:, None] & prompt_ok[None, :], best_frame, 0.0)

    # --- per class: mean over prompts of the best frame (per group, then over groups), the score
    out_b = video_block * BLOCK_B + tl.arange(0, BLOCK_B)
    for c in tl.static_range(CLASSES_PER_TILE):
        in_class = prompt_ok & (class_in_tile == c)
        real_prompts = tl.maximum(tl.sum(in_class.to(tl.float32), axis=0), 1.0)  # max: classes past K
        group_means = tl.sum(tl.where(in_class[None, :], best_frame, 0.0), axis=1) / real_prompts  # [groups]
        mean_best_frame = tl.sum(tl.reshape(group_means, [BLOCK_B, GROUPS_PER_VIDEO]), axis=1) / real_groups
        best_prompt_term = tl.sum(tl.where(slots[None, :] == c, mean_best_prompt, 0.0), axis=1)  # [BLOCK_B]
        tl.store(out_ptr + out_b * stride_out_b + k0 + c, 0.5 * (best_prompt_term + mean_best_frame),
                 mask=(out_b < B) & (k0 + c < K))


@dataclass(frozen=True)
class MakaBlocks:
    """Launch shape of one call; a deterministic function of device and input shapes (graph safe)."""

    block_b: int  # videos per program
    v_pad: int  # views per video, padded
    t_pad: int  # frames per view, padded (raised so that a program has >= 16 frame rows)
    classes_per_tile: int  # whole classes per program
    block_n: int  # prompt rows per tile, >= classes_per_tile * P
    block_e: int  # embedding chunk
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class _ArchTuning:
    rows: int  # frame rows a program aims for (block_b * frames) at large batches
    prompt_rows: int  # prompt rows a tile aims for at large batches: 256 holds 7 classes of 36 (98% used)
    e_bytes: int  # bytes of E per chunk and row (64 fp16 elements at 128)
    num_warps: int  # for tiles above 64 x 128
    num_stages: int  # smem per stage is (rows + prompt_rows) * e_bytes: 40 KB at 64/256/128
    min_programs: int  # tiles shrink until the grid has this many programs (~2 per SM) for small batches


# Compute capability -> tuning. Chosen from register and spill counts of ahead-of-time compiles (no GPU
# was available when they were written); benchmarks/kernel_maka.py is where they get checked.
_ARCH_TUNING = {
    (9, 0): _ArchTuning(rows=64, prompt_rows=256, e_bytes=128, num_warps=8, num_stages=3, min_programs=264),
    (8, 0): _ArchTuning(rows=64, prompt_rows=256, e_bytes=128, num_warps=8, num_stages=3, min_programs=216),
}
# Other GPUs (8.6, 8.9, 12.x: ~100 KB of shared memory per SM).
_SMALL_SMEM = _ArchTuning(rows=64, prompt_rows=128, e_bytes=128, num_warps=4, num_stages=2, min_programs=160)
# The CPU interpreter runs programs one after another: fewer, larger ones are faster.
_INTERPRETER = (0, 0)
_ARCH_TUNING[_INTERPRETER] = replace(_SMALL_SMEM, min_programs=1)


def choose_blocks(capability: tuple[int, int], b: int, v: int, t: int, k: int, p: int, e: int,
                  element_bytes: int) -> MakaBlocks:
    """Block sizes from the architecture table and the shapes (no autotuning: same inputs, same launch)."""
    arch = _ARCH_TUNING.get(capability, _SMALL_SMEM)
    v_pad, t_pad = triton.next_power_of_2(v), triton.next_power_of_2(t)
    if v_pad * t_pad > MAX_ROWS or p > MAX_ROWS:
        raise KernelInputError(
            f"the MAKA kernel takes at most {MAX_ROWS} padded frames per video and {MAX_ROWS} prompts per "
            f"class, got V={v}, T={t}, P={p}: use backend='reference'")
    block_b = min(triton.next_power_of_2(b), max(1, arch.rows // (v_pad * t_pad)))
    prompt_rows = max(arch.prompt_rows, triton.next_power_of_2(p))

    def classes_per_tile(rows: int) -> int:
        return max(1, min(rows // p, MAX_CLASSES_PER_TILE, k))

    def programs() -> int:
        return triton.cdiv(k, classes_per_tile(prompt_rows)) * triton.cdiv(b, block_b)

    # Small batches are bound by reading the class matrix: spread it over enough programs to fill the GPU.
    while programs() < arch.min_programs and classes_per_tile(prompt_rows) > 1:
        prompt_rows //= 2
    while programs() < arch.min_programs and block_b > 1:
        block_b //= 2
    while block_b * v_pad * t_pad < 16:  # tl.dot tiles are >= 16 in every dimension on a GPU
        t_pad *= 2
    per_tile = classes_per_tile(prompt_rows)
    block_n = max(16, triton.next_power_of_2(per_tile * p))
    block_e = min(max(16, arch.e_bytes // element_bytes), max(16, triton.next_power_of_2(e)))
    small = block_b * v_pad * t_pad * block_n <= 64 * 128
    return MakaBlocks(block_b, v_pad, t_pad, per_tile, block_n, block_e,
                      num_warps=4 if small else arch.num_warps, num_stages=arch.num_stages)


@functools.lru_cache(maxsize=None)
def _capability(device: torch.device) -> tuple[int, int]:
    if device.type != "cuda":
        return _INTERPRETER
    return torch.cuda.get_device_capability(device)


def is_interpreted() -> bool:
    """True when Triton and this kernel were both set up for the interpreter: @triton.jit reads
    TRITON_INTERPRET when it decorates, so it must be set before anything imports triton."""
    return not isinstance(_maka_kernel, triton.runtime.JITFunction) and not isinstance(
        tl.zeros, triton.runtime.JITFunction)


def maka_score_triton(video: torch.Tensor, classes: torch.Tensor, counts: Any = None, *,
                      views: str = "pool", blocks: MakaBlocks | None = None,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """Launch the fused kernel: video [B, V, T, E], classes [K, P, E], counts [K] -> out [B, K] float32.

    blocks overrides the table (tests, tuning); out is written in place (every element is written).
    """
    _check_inputs(video, classes)
    b, v, t, e = video.shape
    k, p, _ = classes.shape
    counts = _counts_on_device(counts, k, p, video.device)
    if blocks is None:
        blocks = choose_blocks(_capability(video.device), b, v, t, k, p, e, video.element_size())
    if out is None:
        out = torch.empty((b, k), dtype=torch.float32, device=video.device)
    elif out.shape != (b, k) or out.dtype != torch.float32 or out.device != video.device or out.stride(1) != 1:
        raise KernelInputError(f"out must be a float32 [{b}, {k}] tensor on {video.device} with contiguous "
                               f"rows, got {out.dtype} {tuple(out.shape)} on {out.device}")
    grid = (triton.cdiv(k, blocks.classes_per_tile), triton.cdiv(b, blocks.block_b))
    if grid[1] > 65535:  # CUDA's limit on the second grid dimension
        raise KernelInputError(f"batch of {b} videos is too large for one launch: score it in chunks of "
                               f"{65535 * blocks.block_b}")
    args, constexprs = kernel_arguments(video, classes, counts, out, views, blocks)
    _maka_kernel[grid](*args, **constexprs, num_warps=blocks.num_warps, num_stages=blocks.num_stages)
    return out


def kernel_arguments(video: torch.Tensor, classes: torch.Tensor, counts: torch.Tensor, out: torch.Tensor,
                     views: str, blocks: MakaBlocks) -> tuple[tuple, dict[str, Any]]:
    """The kernel's runtime arguments, in order, and its constexprs (shared with ahead-of-time compiles)."""
    b, v, t, e = video.shape
    k, p, _ = classes.shape
    args = (video, classes, counts, out,
            b, v, t, k, p, e,
            video.stride(0), video.stride(1), video.stride(2), classes.stride(1), out.stride(0))
    constexprs = dict(
        BLOCK_B=blocks.block_b, V_PAD=blocks.v_pad, T_PAD=blocks.t_pad,
        GROUPS_PER_VIDEO=1 if views == "pool" else blocks.v_pad,
        CLASSES_PER_TILE=blocks.classes_per_tile, BLOCK_N=blocks.block_n, BLOCK_E=blocks.block_e,
        E_RAGGED=e % blocks.block_e != 0, DOT_PRECISION="ieee",
    )
    return args, constexprs


def _check_inputs(video: Any, classes: Any) -> None:
    for name, x in (("video", video), ("classes", classes)):
        if not isinstance(x, torch.Tensor):
            raise KernelInputError(f"{name} must be a torch tensor for the Triton MAKA kernel, got "
                                   f"{type(x).__name__}: use torch.as_tensor or backend='reference'")
    if video.ndim != 4:
        raise KernelInputError(f"video must be [B, V, T, E] embeddings, got shape {tuple(video.shape)}: "
                               "reshape [B, V*T, E] to [B, 1, V*T, E]")
    if classes.ndim != 3 or classes.shape[-1] != video.shape[-1]:
        raise KernelInputError(f"classes must be [K, P, E] with the video's E={video.shape[-1]}, got "
                               f"shape {tuple(classes.shape)}")
    if min(video.shape) < 1 or min(classes.shape) < 1:
        raise KernelInputError(f"empty input: video {tuple(video.shape)}, classes {tuple(classes.shape)}")
    for name, x in (("video", video), ("classes", classes)):
        if str(x.dtype).removeprefix("torch.") not in KERNEL_DTYPES:
            raise KernelInputError(f"{name} is {x.dtype}; the MAKA kernel takes {KERNEL_DTYPES}: "
                                   f"cast with .half() or .float()")
    if video.dtype != classes.dtype:
        raise KernelInputError(f"video is {video.dtype} but classes is {classes.dtype}: cast both to one "
                               "dtype (float16 for speed)")
    if video.device != classes.device:
        raise KernelInputError(f"video is on {video.device} but classes on {classes.device}: move both to "
                               "one device")
    if not (video.is_contiguous() and classes.is_contiguous()):
        raise KernelInputError("video and classes must be contiguous (the kernel reads flat prompt rows): "
                               "call .contiguous() once, when loading them")
    if max(video.numel(), classes.numel()) >= 2**31:
        raise KernelInputError("inputs over 2**31 elements overflow the kernel's int32 offsets: score "
                               "fewer videos or classes per call")
    if video.device.type == "cpu" and not is_interpreted():
        raise KernelUnavailableError(
            "backend='triton' got CPU tensors, but the kernel was compiled for a GPU: move the tensors "
            "to CUDA, or set TRITON_INTERPRET=1 before anything imports triton to run it (slowly) on CPU")
    if video.device.type not in ("cpu", "cuda"):
        raise KernelUnavailableError(f"the MAKA kernel runs on CUDA (or the CPU interpreter), not "
                                     f"{video.device.type}: use backend='reference'")


def _counts_on_device(counts: Any, k: int, p: int, device: torch.device) -> torch.Tensor:
    """counts as int32 [K] on the video's device, values checked once (see _checked_counts)."""
    if counts is None:
        return torch.full((k,), p, dtype=torch.int32, device=device)
    if isinstance(counts, torch.Tensor):
        if counts.device != device and counts.device.type != "cpu":
            raise KernelInputError(f"counts is on {counts.device} but video on {device}: move counts "
                                   "with the class matrix")
        if counts.dtype.is_floating_point or counts.dtype == torch.bool:
            raise KernelInputError(f"counts must be integers (real prompts per class), got {counts.dtype}")
    else:
        counts = torch.as_tensor(counts)
    if counts.shape != (k,):
        raise KernelInputError(f"counts must have shape [{k}] (one per class), got {tuple(counts.shape)}")
    key = (counts.data_ptr(), counts._version, k, p)
    on_host = counts.device.type == "cpu"
    if on_host or (key not in _checked_counts and not torch.cuda.is_current_stream_capturing()):
        low, high = int(counts.min()), int(counts.max())
        if low < 1 or high > p:
            raise KernelInputError(f"counts must lie in [1, P={p}], got min {low} max {high}")
        if not on_host:
            if len(_checked_counts) > 64:
                _checked_counts.clear()
            _checked_counts.add(key)
    return counts.to(device=device, dtype=torch.int32).contiguous()


# Device counts already checked, by (address, version counter, K, P): reading their values syncs the
# device (and is forbidden while a CUDA graph captures), so a serving loop pays it once per class matrix.
_checked_counts: set[tuple[int, int, int, int]] = set()
