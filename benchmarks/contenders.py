"""Which encoder (backend, precision) pairs and which scorers this machine can run, and why not the others.

One registry, read by apclip-bench (parity and latency over every contender) and open to the engine:
every entry has an availability probe that returns None (available) or a one-line reason, and a
builder that returns the runner (vision `EncoderRunner`) or `Scorer`. Later backends replace or add
entries here (`register_encoder`, `register_scorer`) and both tools pick them up. Nothing optional is
imported until a probe or a builder runs, so this module imports without torch or onnxruntime.

    for contender, reason in probe_all(BuildContext(manifest)):
        print(contender.name, reason or "available")
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from apclip.bundle import SCORER_FILE, VISION_FILE, VISION_INPUT, Manifest
from apclip.cli_common import UsageError
from apclip.errors import ApclipError, MissingExtraError

from apclip.engine.runners.encoders import BackendUnavailable, EncoderRunner
from apclip.extras import importable

# The quantized vision graph an int8 export adds to a bundle (ONNX Runtime dynamic quantization).
VISION_INT8_FILE = "vision.int8.onnx"
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class BuildContext:
    """What builders may need: the bundle, and the checkpoint for the torch-based backends."""

    manifest: Manifest
    checkpoint: str | os.PathLike | None = None  # the checkpoint the bundle was exported from
    base: str | os.PathLike | None = None  # base OpenAI CLIP file for a ViFi-CLIP checkpoint
    threads: int | None = None  # CPU threads (ONNX Runtime intra-op)
    batch_size: int = 32  # preferred vision batch


Probe = Callable[[BuildContext], "str | None"]


@dataclass(frozen=True)
class EncoderContender:
    """A vision encoder backend at one precision."""

    backend: str  # ort-cpu | ort-cuda | torch-cpu | torch-cuda | trt
    precision: str  # fp32 | fp16 | bf16 | int8
    probe: Probe  # None when available here, else why not
    build: Callable[[BuildContext], EncoderRunner]
    file: str | None = None  # the bundle file it runs, for the size column
    device: str = "cpu"  # where it computes: cpu | cuda
    reference: bool = False  # the torch fp32 model every other row is checked against
    kind: str = "encoder"

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.precision}"


@dataclass(frozen=True)
class ScorerContender:
    """A MAKA scorer; its precision is that of its arithmetic (the Triton kernel reads fp16)."""

    backend: str  # numpy | onnx | triton
    precision: str
    probe: Probe
    build: Callable[[BuildContext], Any]  # -> engine.scorers.Scorer
    file: str | None = None
    device: str = "cpu"
    reference: bool = False
    kind: str = "scorer"

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.precision}"


Contender = EncoderContender | ScorerContender


class UnknownContender(UsageError):
    """A --backends name that is not in the registry (a usage error)."""

_ENCODERS: dict[str, EncoderContender] = {}
_SCORERS: dict[str, ScorerContender] = {}


def register_encoder(contender: EncoderContender) -> None:
    """Add or replace an encoder entry (keyed by backend:precision)."""
    _ENCODERS[contender.name] = contender


def register_scorer(contender: ScorerContender) -> None:
    _SCORERS[contender.name] = contender


def encoders() -> list[EncoderContender]:
    return list(_ENCODERS.values())


def scorers() -> list[ScorerContender]:
    return list(_SCORERS.values())


def contenders() -> list[Contender]:
    return [*encoders(), *scorers()]


def select(names: str | list[str] | None, *, include_reference: bool = False) -> list[Contender]:
    """Contenders named by a comma list of `backend` or `backend:precision` (None: all).

    Raises ApclipError naming the unknown ones and listing the known."""
    every = contenders()
    if not names:
        return [c for c in every if include_reference or not c.reference]
    wanted = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    chosen: list[Contender] = []
    unknown = []
    for name in wanted:
        matches = [c for c in every if name in (c.name, c.backend)]
        if not matches:
            unknown.append(name)
        chosen += [c for c in matches if c not in chosen]
    if unknown:
        known = ", ".join(c.name for c in every)
        raise UnknownContender(f"unknown backend(s) {', '.join(unknown)}; choose among {known} "
                          f"(a bare backend name picks all its precisions)")
    return chosen


def probe(contender: Contender, ctx: BuildContext) -> str | None:
    """None when the contender can run here, else a one-line reason."""
    try:
        return contender.probe(ctx)
    except ApclipError as exc:
        return str(exc)


def probe_all(ctx: BuildContext, chosen: list[Contender] | None = None) -> list[tuple[Contender, str | None]]:
    return [(c, probe(c, ctx)) for c in (chosen if chosen is not None else contenders())]


def build(contender: Contender, ctx: BuildContext) -> Any:
    """The runner or scorer; raises BackendUnavailable (with the probe's reason) where it cannot run."""
    reason = probe(contender, ctx)
    if reason is not None:
        raise BackendUnavailable(f"{contender.name}: {reason}")
    return contender.build(ctx)


# -- probes --------------------------------------------------------------------------------------------
def nvidia_driver_present() -> bool:
    """Cheap check before importing torch (seconds, hundreds of MB) just to learn there is no GPU."""
    from apclip.engine.runners.gpu_backends import cuda_may_be_present

    return cuda_may_be_present() or os.path.exists("/etc/nv_tegra_release")


def _needs_ort(ctx: BuildContext) -> str | None:
    if not importable("onnxruntime"):
        return "onnxruntime is not installed: pip install \"apclip[cpu]\""
    return None


def _gpu_probe(backend: str) -> Probe:
    """The engine's own probe (apclip.engine.runners.gpu_backends.PROBES): one answer for --backend and apclip-bench."""
    def reason(ctx: BuildContext) -> str | None:
        from apclip.engine.runners.gpu_backends import PROBES

        found = PROBES[backend](ctx.manifest, ctx.checkpoint)
        return None if found.ok else found.reason
    return reason


def _ort_and_file(ctx: BuildContext, name: str, how: str) -> str | None:
    """Why an ONNX Runtime contender that needs the bundle file `name` cannot run (None: it can)."""
    return _needs_ort(ctx) or (None if ctx.manifest.has(name) else f"the bundle has no {name} ({how})")


def _int8_reason(ctx: BuildContext) -> str | None:
    return _ort_and_file(ctx, VISION_INT8_FILE, "export it with int8 quantization")


def _checkpoint_reason(ctx: BuildContext) -> str | None:
    if ctx.checkpoint is None:
        return "needs --ckpt, the checkpoint the bundle was exported from"
    return None


def _torch_reason(ctx: BuildContext) -> str | None:
    if not importable("torch"):
        return "torch is not installed: pip install \"apclip[torch]\""
    return _checkpoint_reason(ctx)


def cuda_reason() -> str | None:
    """None when torch sees a CUDA GPU, else why not (torch is imported only where a driver exists)."""
    if not nvidia_driver_present():
        return "no CUDA GPU here (no NVIDIA driver)"
    if not importable("torch"):
        return "torch is not installed: pip install \"apclip[torch]\" (a CUDA build)"
    import torch

    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA GPU (a CPU build, or no device visible)"
    return None


def _torch_cuda_reason(precision: str) -> Probe:
    probe_backend = _gpu_probe("torch-cuda")

    def reason(ctx: BuildContext) -> str | None:
        why = probe_backend(ctx)
        if why is None and precision == "bf16":
            import torch

            if not torch.cuda.is_bf16_supported():
                return f"{torch.cuda.get_device_name()} has no bf16 support"
        return why
    return reason


def _trt_reason(precision: str) -> Probe:
    probe_backend = _gpu_probe("trt")

    def reason(ctx: BuildContext) -> str | None:
        why = probe_backend(ctx)
        if why is None:
            engines = ctx.manifest.raw.get("engines") or {}
            entries = engines.values() if isinstance(engines, dict) else engines
            precisions = {str((e.get("key") or e).get("precision")) for e in entries if isinstance(e, dict)}
            if precisions and precision not in precisions:
                return f"the bundle has no {precision} TensorRT engine (apclip-build-engine --precision {precision})"
        return why
    return reason


def _scorer_file_reason(ctx: BuildContext) -> str | None:
    return _ort_and_file(ctx, SCORER_FILE, "re-export with --scorer")


def _triton_reason(ctx: BuildContext) -> str | None:
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if not (nvidia_driver_present() or interpreted):
        return "the Triton kernel needs a CUDA GPU (no NVIDIA driver here)"
    for module, extra in (("torch", "torch"), ("triton", "triton")):
        if not importable(module):
            return f"{module} is not installed: pip install \"apclip[{extra}]\""
    from apclip.engine.scoring.scorers import TritonScorer

    try:
        TritonScorer()
    except (BackendUnavailable, MissingExtraError) as exc:
        return str(exc)
    return None


# -- builders --------------------------------------------------------------------------------------------
def _ort_cpu(ctx: BuildContext) -> EncoderRunner:
    from apclip.engine.runners.encoders import ort_runners

    return ort_runners(ctx.manifest, cuda=False, threads=ctx.threads, batch_size=ctx.batch_size)[0]


def _ort_int8(ctx: BuildContext) -> EncoderRunner:
    from apclip.engine.runners.encoders import OrtRunner, _default_threads, graph_batch_max
    from apclip.engine.runners.precision import session_config

    runner = OrtRunner(ctx.manifest.file(VISION_INT8_FILE), VISION_INPUT, threads=_default_threads(ctx.threads),
                       batch_size=graph_batch_max(ctx.manifest, "vision", ctx.batch_size),
                       session_config=session_config(ctx.manifest, "int8"))
    runner.name = "ort-cpu-int8"
    return runner


def _torch_cpu(ctx: BuildContext) -> EncoderRunner:
    from apclip.engine.runners.encoders import torch_runners

    return torch_runners(ctx.manifest, ctx.checkpoint, ctx.base, batch_size=ctx.batch_size, device="cpu")[0]


def _gpu_constructor(backend: str, precision: str | None = None) -> Callable[[BuildContext], EncoderRunner]:
    """The engine's own constructor (apclip.engine.runners.gpu_backends.CONSTRUCTORS); the vision runner of its pair."""
    def make(ctx: BuildContext) -> EncoderRunner:
        from apclip.engine.runners.gpu_backends import CONSTRUCTORS

        return CONSTRUCTORS[backend](ctx.manifest, batch_size=ctx.batch_size, threads=ctx.threads,
                                     ckpt=ctx.checkpoint, base=ctx.base, precision=precision)[0]
    return make


def _scorer(name: str) -> Callable[[BuildContext], Any]:
    def make(ctx: BuildContext) -> Any:
        from apclip.engine.scoring.scorers import make_scorer

        return make_scorer(name, ctx.manifest)
    return make


for _entry in (
    EncoderContender("torch-cpu", "fp32", _torch_reason, _torch_cpu, reference=True),
    EncoderContender("ort-cpu", "fp32", _needs_ort, _ort_cpu, file=VISION_FILE),
    EncoderContender("ort-cpu", "int8", _int8_reason, _ort_int8, file=VISION_INT8_FILE),
    EncoderContender("ort-cuda", "fp32", _gpu_probe("ort-cuda"), _gpu_constructor("ort-cuda"), file=VISION_FILE,
                     device="cuda"),
    EncoderContender("torch-cuda", "fp16", _torch_cuda_reason("fp16"), _gpu_constructor("torch-cuda", "fp16"),
                     device="cuda"),
    EncoderContender("torch-cuda", "bf16", _torch_cuda_reason("bf16"), _gpu_constructor("torch-cuda", "bf16"),
                     device="cuda"),
    EncoderContender("trt", "fp16", _trt_reason("fp16"), _gpu_constructor("trt", "fp16"), device="cuda"),
    EncoderContender("trt", "int8", _trt_reason("int8"), _gpu_constructor("trt", "int8"), device="cuda"),
):
    register_encoder(_entry)
for _entry in (
    ScorerContender("numpy", "fp32", lambda ctx: None, _scorer("numpy"), reference=False),
    ScorerContender("onnx", "fp32", _scorer_file_reason, _scorer("onnx"), file=SCORER_FILE),
    ScorerContender("triton", "fp16", _triton_reason, _scorer("triton"), device="cuda"),
):
    register_scorer(_entry)
del _entry
