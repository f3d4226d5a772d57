"""The machine record every apclip-bench JSON carries: CPU, GPU, Jetson board, package versions, load.

Every field is optional: what cannot be read here is None and named in `missing`, never guessed.
torch is imported for the GPU fields only where an NVIDIA driver is present (or torch is loaded already).
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# distribution names per module; the first installed one is reported
PACKAGES = {
    "apclip": ("apclip",), "numpy": ("numpy",), "opencv": ("opencv-python-headless", "opencv-python"),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "onnx": ("onnx",), "torch": ("torch",),
    "triton": ("triton",), "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"),
    "matplotlib": ("matplotlib",), "openvino": ("openvino",),
}


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip("\x00\n ") or None
    except OSError:
        return None


def _command(args: list[str], timeout: float = 10.0) -> str | None:
    if shutil.which(args[0]) is None:
        return None
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def cpu_record() -> dict[str, Any]:
    model = None
    flags: set[str] = set()
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model is None:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    memory = None
    try:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "asimd") if f in flags]
    return {"cpu": model or platform.processor() or None, "cores": os.cpu_count(), "memory_gib": memory,
            "simd": simd, "machine": platform.machine(), "platform": platform.platform(),
            "python": platform.python_version()}


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name, distributions in PACKAGES.items():
        out[name] = None
        for dist in distributions:
            try:
                out[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def gpu_record() -> dict[str, Any] | None:
    """Name, SM, memory, clocks, driver and CUDA of GPU 0, or None without a usable CUDA device."""
    from apclip.benchmarks.contenders import cuda_reason, nvidia_driver_present

    if not nvidia_driver_present() or cuda_reason() is not None:
        smi = _nvidia_smi()
        return {"name": smi.get("name"), "driver": smi.get("driver_version"), "torch_cuda": False} if smi else None
    import torch

    props = torch.cuda.get_device_properties(0)
    major, minor = torch.cuda.get_device_capability(0)
    smi = _nvidia_smi()
    return {"name": torch.cuda.get_device_name(0), "sm": f"sm_{major}{minor}", "sm_count": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1), "l2_bytes": getattr(props, "L2_cache_size", None),
            "cuda": torch.version.cuda, "driver": smi.get("driver_version"),
            "clocks_max_sm_mhz": smi.get("clocks.max.sm"), "clocks_max_mem_mhz": smi.get("clocks.max.mem"),
            "clocks_sm_mhz": smi.get("clocks.sm"), "power_limit_w": smi.get("power.limit"), "torch_cuda": True}


def _nvidia_smi() -> dict[str, str]:
    fields = ["name", "driver_version", "clocks.max.sm", "clocks.max.mem", "clocks.sm", "power.limit"]
    out = _command(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits", "-i", "0"])
    if not out:
        return {}
    values = [v.strip() for v in out.splitlines()[0].split(",")]
    return {k: v for k, v in zip(fields, values) if v and "N/A" not in v and "Not Supported" not in v}


def jetson_record() -> dict[str, str | None]:
    release = _read("/etc/nv_tegra_release")
    return {"board": _read("/proc/device-tree/model"),
            "l4t_release": release.splitlines()[0] if release else None,
            "power_mode": _command(["nvpmodel", "-q"])}


def record(load_before: list[float] | None = None) -> dict[str, Any]:
    """Everything above, the load average now (and `load_before`, taken when the run started: other
    jobs on the machine show up there), and the list of fields that could not be read."""
    rec: dict[str, Any] = {"cpu": cpu_record(), "gpu": gpu_record(), "jetson": jetson_record(),
                           "versions": versions(), "load_average": list(os.getloadavg()),
                           "load_average_before": load_before, "argv": list(sys.argv)}
    missing = [f"cpu.{k}" for k, v in rec["cpu"].items() if v is None]
    missing += ["gpu"] if rec["gpu"] is None else [f"gpu.{k}" for k, v in rec["gpu"].items() if v is None]
    missing += [f"jetson.{k}" for k, v in rec["jetson"].items() if v is None]
    missing += [f"versions.{k}" for k, v in rec["versions"].items() if v is None]
    rec["missing"] = missing
    return rec


def describe(rec: dict[str, Any]) -> str:
    """One line for table headers."""
    cpu = rec["cpu"]
    gpu = rec.get("gpu") or {}
    gpu_text = f", GPU {gpu['name']} {gpu.get('sm') or ''}".rstrip() if gpu.get("name") else ", no GPU"
    load = rec.get("load_average") or [float("nan")] * 3
    before = rec.get("load_average_before")
    start = f"{before[0]:.2f} at the start, " if before else ""
    return (f"{cpu.get('cpu') or 'unknown CPU'}, {cpu.get('cores')} cores{gpu_text}; "
            f"1-min load average {start}{load[0]:.2f} at the end")
