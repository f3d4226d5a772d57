"""Cheap answers to "can this backend run here, and if not why": one function per backend.

Each probe returns None (it can run) or a one-line reason. A probe given no manifest (None:
`apclip-bench backends` without a bundle) answers for the machine only and skips the bundle's files.
Nothing heavy is imported before a device file says an NVIDIA GPU may be present, so a CPU machine
pays nothing for asking about GPUs. The backend table (engine/runners/table.py) pairs each of its
rows with one of these probes.
"""
from __future__ import annotations

import glob
import os
from typing import Any

from apclip.bundle import Manifest
from apclip.extras import install_hint
from apclip.extras import importable as _importable  # module-level name: tests monkeypatch it

# Where the device files below are looked for: "/" except in tests, which point it at a fake tree.
SYSTEM_ROOT = "/"

# Desktop/datacenter driver, WSL, and Jetson (nvgpu: nvhost nodes on L4T <= 35, /dev/nvgpu on 36+).
_GPU_FILES = ("dev/nvidiactl", "proc/driver/nvidia/version", "dev/dxg", "dev/nvhost-ctrl-gpu", "dev/nvgpu",
              "etc/nv_tegra_release")
_TEGRA_COMPATIBLE = "proc/device-tree/compatible"  # NUL-separated; Jetson boards list "nvidia,tegra<chip>"


def nvidia_gpu_may_be_present(root: str | None = None) -> bool:
    """Whether any file of an NVIDIA GPU driver exists: checked before torch loads (seconds, hundreds of MB).

    Jetson (Tegra: TX2, Xavier, Orin) counts: it has no /dev/nvidiactl, but nvhost nodes, the L4T
    release file or a device tree naming nvidia,tegra."""
    root = SYSTEM_ROOT if root is None else root
    if any(os.path.exists(os.path.join(root, path)) for path in _GPU_FILES):
        return True
    if glob.glob(os.path.join(root, "dev", "nvhost-*")):
        return True
    try:
        with open(os.path.join(root, _TEGRA_COMPATIBLE), "rb") as f:
            return b"nvidia,tegra" in f.read()
    except OSError:
        return False


NO_GPU = "no NVIDIA GPU driver found"


def torch_cuda_reason(precision: str | None = None) -> str | None:
    """None when torch sees a CUDA GPU (that supports `precision`), else why not."""
    if not nvidia_gpu_may_be_present():
        return NO_GPU
    if not _importable("torch"):
        return f"PyTorch is not installed ({install_hint('torch')}, a CUDA build)"
    import torch

    if not torch.cuda.is_available():
        return f"PyTorch {torch.__version__} sees no CUDA GPU (a CPU build, or no device visible)"
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        return f"{torch.cuda.get_device_name()} has no bf16 support"
    return None


def ort_reason(manifest: Manifest | None, precision: str = "fp32") -> str | None:
    if not _importable("onnxruntime"):
        return f"onnxruntime is not installed ({install_hint('cpu')})"
    return _int8_reason(manifest, precision)


def openvino_reason(manifest: Manifest | None, precision: str = "fp32") -> str | None:
    """OpenVINO (engine/runners/openvino.py) runs the bundle's ONNX files on the CPU: fp32, or its int8 graph."""
    if not _importable("openvino"):
        return f"OpenVINO is not installed ({install_hint('openvino')})"
    return _int8_reason(manifest, precision)


def _int8_reason(manifest: Manifest | None, precision: str) -> str | None:
    """Why the bundle cannot run int8 (no int8 files, or the export refused them); None otherwise."""
    if precision == "int8" and manifest is not None:
        from apclip.engine.runners.precision import int8_missing

        return int8_missing(manifest)
    return None


def ort_cuda_reason(manifest: Manifest | None) -> str | None:
    if not _importable("onnxruntime"):
        return f"onnxruntime is not installed ({install_hint('gpu')})"
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"this onnxruntime has no CUDA provider ({install_hint('gpu')})"
    return None


def checkpoint_reason(checkpoint: Any) -> str | None:
    return None if checkpoint is not None else "it needs --ckpt, the checkpoint the bundle was exported from"


def torch_reason(checkpoint: Any) -> str | None:
    if not _importable("torch"):
        return f"PyTorch is not installed ({install_hint('torch')})"
    return checkpoint_reason(checkpoint)


def trt_reason(manifest: Manifest | None, precision: str) -> str | None:
    """TensorRT installed, a driver present, and the bundle lists a vision engine of `precision` (the
    runner then checks its GPU, TensorRT version and hash)."""
    if not _importable("tensorrt"):
        return f"TensorRT is not installed ({install_hint('trt')} on the GPU machine)"
    from apclip.engine.runners.engine_cache import listed_precisions

    if manifest is not None and precision not in listed_precisions(manifest, "vision"):
        return (f"bundle {manifest.path} has no {precision} TensorRT vision engine (build it on this GPU with "
                f"apclip-build-engine {manifest.path} --precision {precision})")
    if not nvidia_gpu_may_be_present():
        return NO_GPU
    return None

