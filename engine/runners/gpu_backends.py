"""Which backends can run here, and what `--backend auto` picks: trt > torch-cuda > ort-cuda > ort.

Every backend has a probe that says, cheaply and without building anything, whether it can run and
why (an `Availability`), and a constructor that returns its (vision, text) runners. The probes
import nothing heavy before a device file says a GPU may be present, so a CPU machine pays nothing.
`apclip-bench` (its contender registry) and the Recognizer use the same two tables:

    for backend in AUTO_ORDER: probe = PROBES[backend](manifest, ckpt); runners = CONSTRUCTORS[backend](...)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from apclip.bundle import Manifest

from apclip.engine.runners.encoders import BackendUnavailable
from apclip.extras import install_hint
from apclip.extras import importable as _importable  # module-level name: tests monkeypatch it

AUTO_ORDER = ("trt", "torch-cuda", "ort-cuda", "ort")
Log = Callable[[str], None]


@dataclass(frozen=True)
class Availability:
    backend: str
    ok: bool
    reason: str  # one line: what it found ("tensorrt 10.9 and 2 engines for sm90") or what is missing


def cuda_may_be_present() -> bool:
    """Device files of an NVIDIA driver (desktop, datacenter, Jetson's nvgpu, WSL): checked before torch loads."""
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/proc/driver/nvidia/version", "/dev/nvhost-ctrl-gpu",
                                           "/dev/dxg"))


def probe_trt(manifest: Manifest, ckpt: Any = None) -> Availability:
    if not _importable("tensorrt"):
        return Availability("trt", False, f"TensorRT is not installed ({install_hint('trt')} on the GPU machine)")
    engines = manifest.raw.get("engines") or {}  # the runner checks each entry's key and file
    if not engines:
        return Availability("trt", False, f"bundle {manifest.path} has no TensorRT engines (build them on this GPU "
                                          f"with apclip-build-engine {manifest.path})")
    if not cuda_may_be_present():
        return Availability("trt", False, "no NVIDIA driver found")
    return Availability("trt", True, f"tensorrt is installed and the bundle lists {len(engines)} engine(s)")


def probe_torch_cuda(manifest: Manifest, ckpt: Any = None) -> Availability:
    if not cuda_may_be_present():
        return Availability("torch-cuda", False, "no NVIDIA driver found")
    if not _importable("torch"):
        return Availability("torch-cuda", False, f"PyTorch is not installed ({install_hint('torch')})")
    import torch

    if not torch.cuda.is_available():
        return Availability("torch-cuda", False, f"PyTorch {torch.__version__} sees no CUDA GPU")
    from apclip.engine.runners.torch_cuda import weights_source

    source = weights_source(manifest, ckpt)
    if source is None:
        return Availability("torch-cuda", False, "it needs the weights: pass --ckpt (the exported checkpoint)")
    return Availability("torch-cuda", True, f"PyTorch sees {torch.cuda.get_device_name()}; weights from {source}")


def probe_ort_cuda(manifest: Manifest, ckpt: Any = None) -> Availability:
    if not _importable("onnxruntime"):
        return Availability("ort-cuda", False, "onnxruntime is not installed")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return Availability("ort-cuda", False, f"this onnxruntime has no CUDA provider ({install_hint('gpu')})")
    return Availability("ort-cuda", True, "onnxruntime has the CUDA provider")


def probe_ort(manifest: Manifest, ckpt: Any = None) -> Availability:
    if not _importable("onnxruntime"):
        return Availability("ort", False, f"onnxruntime is not installed ({install_hint('cpu')})")
    return Availability("ort", True, "ONNX Runtime on the CPU runs everywhere")


PROBES: dict[str, Callable[..., Availability]] = {
    "trt": probe_trt, "torch-cuda": probe_torch_cuda, "ort-cuda": probe_ort_cuda, "ort": probe_ort,
}


def _trt(manifest: Manifest, **options):
    from apclip.engine.runners.tensorrt import trt_runners

    return trt_runners(manifest, batch_size=options.get("batch_size", 32))


def _torch_cuda(manifest: Manifest, **options):
    from apclip.engine.runners.torch_cuda import torch_cuda_runners

    return torch_cuda_runners(manifest, options.get("ckpt"), options.get("base"),
                              batch_size=options.get("batch_size", 32), precision=options.get("precision") or "fp16")


def _ort(cuda: bool):
    def build(manifest: Manifest, **options):
        from apclip.engine.runners.encoders import ort_runners

        return ort_runners(manifest, cuda=cuda, threads=options.get("threads"),
                           batch_size=options.get("batch_size", 32), precision=options.get("precision") or "fp32")
    return build


def _torch(manifest: Manifest, **options):
    from apclip.engine.runners.encoders import torch_runners

    return torch_runners(manifest, options.get("ckpt"), options.get("base"), batch_size=options.get("batch_size", 32))


# backend -> constructor(manifest, *, batch_size, threads, ckpt, base, precision) -> (vision, text) runners
CONSTRUCTORS: dict[str, Callable[..., tuple[Any, Any]]] = {
    "trt": _trt, "torch-cuda": _torch_cuda, "ort-cuda": _ort(True), "ort": _ort(False), "torch": _torch,
}


def availability(manifest: Manifest, ckpt: Any = None, order: tuple[str, ...] = AUTO_ORDER) -> list[Availability]:
    return [PROBES[name](manifest, ckpt) for name in order]


def auto_runners(manifest: Manifest, *, log: Log, detail: Log | None = None, **options) -> tuple[Any, Any, str]:
    """The first backend of AUTO_ORDER whose probe passes and whose runners build; says in one line what it
    chose and why; `detail` (--verbose) also hears why each faster one was passed over. Returns
    (vision, text, backend)."""
    detail = detail or (lambda message: None)
    passed_over: list[str] = []
    for name in AUTO_ORDER:
        found = PROBES[name](manifest, options.get("ckpt"))
        if not found.ok:
            passed_over.append(f"{name}: {found.reason}")
            continue
        try:
            vision, text = CONSTRUCTORS[name](manifest, **options)
        except BackendUnavailable as exc:
            # auto promised the best backend that works, not an error: fall back and say why.
            detail(f"{exc}; falling back to the next backend")
            passed_over.append(f"{name}: {exc}")
            continue
        more = f" ({len(passed_over)} faster backend(s) unavailable here; --verbose says why)" if passed_over else ""
        log(f"backend auto chose {name} ({vision.name}): {found.reason}{more}")
        if passed_over:
            detail(f"backend auto passed over {'; '.join(passed_over)}")
        return vision, text, name
    if not _importable("onnxruntime"):  # the backend that runs everywhere lacks its package: a missing extra
        from apclip.engine.runners.encoders import BackendPackageMissing

        raise BackendPackageMissing(f"onnxruntime is not installed, so no backend can run here: {install_hint('cpu')}"
                                    f" (the gpu extra on a CUDA machine)")
    raise BackendUnavailable("no backend can run here: " + "; ".join(passed_over))
