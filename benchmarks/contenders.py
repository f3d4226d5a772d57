"""What apclip-bench compares: the encoder rows of the backend table, and the scorers.

Encoder contenders are a view of engine/runners/table.py (one row = one backend at one precision,
named `backend:precision`, e.g. `ort:fp32`, `torch-cuda:bf16`, `trt:int8`), so parity, latency and
`apclip-bench backends` list exactly what `apclip-infer --backend/--precision` can run. Scorers
(numpy, onnx, triton) are listed here. Every contender has a probe that returns None (available) or
a one-line reason, and a builder that returns the vision `EncoderRunner` or the `Scorer`. Nothing
optional is imported until a probe or a builder runs, so this module imports without torch or onnxruntime.

    for contender, reason in probe_all(BuildContext(manifest)):
        print(contender.name, reason or "available")
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from apclip.bundle import SCORER_FILE
from apclip.cli_common import UsageError
from apclip.errors import ApclipError, MissingExtraError

from apclip.engine.runners import table
from apclip.engine.runners.encoders import BackendUnavailable, EncoderRunner
from apclip.engine.runners.table import Context as BuildContext  # noqa: F401  (the name the benchmarks use)
from apclip.extras import importable

Probe = Callable[[BuildContext], "str | None"]
# Spellings of earlier apclip-bench versions, still accepted by --backends.
ALIASES = {"ort-cpu": "ort", "torch-cpu": "torch"}


@dataclass(frozen=True)
class EncoderContender:
    """A row of the backend table, benchmarked by its vision encoder."""

    row: table.Row
    kind: str = "encoder"

    @property
    def name(self) -> str:
        return self.row.key

    @property
    def backend(self) -> str:
        return self.row.name

    @property
    def precision(self) -> str:
        return self.row.precision

    @property
    def device(self) -> str:
        return self.row.device

    @property
    def reference(self) -> bool:
        return self.row.reference

    @property
    def file(self) -> str | None:
        return self.row.file

    def probe(self, ctx: BuildContext) -> str | None:
        return table.probe(self.row, ctx)

    def build(self, ctx: BuildContext) -> EncoderRunner:
        return table.build(self.row, ctx)[0]


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

_SCORERS: dict[str, ScorerContender] = {}


def register_scorer(contender: ScorerContender) -> None:
    _SCORERS[contender.name] = contender


def encoders() -> list[EncoderContender]:
    return [EncoderContender(row) for row in table.rows()]


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
    wanted = [_unalias(n.strip()) for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
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


def _unalias(name: str) -> str:
    backend, _, precision = name.partition(":")
    backend = ALIASES.get(backend, backend)
    return f"{backend}:{precision}" if precision else backend


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
    """Cheap check before importing torch (seconds, hundreds of MB) just to learn there is no GPU (Jetson included)."""
    from apclip.engine.runners.probes import nvidia_gpu_may_be_present

    return nvidia_gpu_may_be_present()


def cuda_reason() -> str | None:
    """None when torch sees a CUDA GPU, else why not (torch is imported only where a driver exists)."""
    from apclip.engine.runners.probes import torch_cuda_reason

    return torch_cuda_reason()


def _scorer_file_reason(ctx: BuildContext) -> str | None:
    if not importable("onnxruntime"):
        return "onnxruntime is not installed: pip install \"apclip[cpu]\""
    return None if ctx.manifest.has(SCORER_FILE) else f"the bundle has no {SCORER_FILE} (re-export with --scorer)"


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
def _scorer(name: str) -> Callable[[BuildContext], Any]:
    def make(ctx: BuildContext) -> Any:
        from apclip.engine.scoring.scorers import make_scorer

        return make_scorer(name, ctx.manifest)
    return make


for _entry in (
    ScorerContender("numpy", "fp32", lambda ctx: None, _scorer("numpy"), reference=False),
    ScorerContender("onnx", "fp32", _scorer_file_reason, _scorer("onnx"), file=SCORER_FILE),
    ScorerContender("triton", "fp16", _triton_reason, _scorer("triton"), device="cuda"),
):
    register_scorer(_entry)
del _entry
