"""The one backend x precision table: every way this engine can encode frames and labels, once.

Each row is a backend (the `--backend` name) at one precision, with the device it computes on, the
pip extra it needs, a cheap probe (None, or one line saying why it cannot run here), the builder of
its (vision, text) runners and the bundle file its vision encoder runs. Everything that offers a
choice reads this table (model: Ultralytics' `export_formats()`):

    apclip-infer / apclip-eval / apclip-batch / apclip-serve  --backend, --precision choices, `auto`
    Recognizer.from_bundle                                     choose(backend, precision, ctx)
    apclip-bench parity / latency / backends                   benchmarks/contenders.py (a view of rows())
    apclip-triton-repo                                         the file of the trt / ort rows it serves
    benchmarks/gpu_check.sh, gpu_backends_check.py             the torch-cuda precisions to check

    for row in rows(): print(row.key, row.device, probe(row, Context(manifest)) or "available")

Order matters: `--backend auto` takes the first row marked `auto` whose probe passes and whose
runners build (fastest first); a backend's first row is its default precision. A new backend (e.g.
`openvino` fp32/int8) is a probe in engine/runners/probes.py, a builder here, and its rows in ROWS.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

from apclip.bundle import INT8_FILES, VISION_FILE, Manifest
from apclip.cli_common import UsageError

from apclip.engine.runners.encoders import BackendUnavailable, EncoderRunner
from apclip.engine.runners.precision import PrecisionUnavailable

AUTO = "auto"
Log = Callable[[str], None]
Runners = tuple[EncoderRunner, EncoderRunner]  # (vision, text)


class UnknownChoice(UsageError, PrecisionUnavailable):
    """A --backend / --precision name or pair the table does not have: fix the command line."""


@dataclass(frozen=True)
class Context:
    """What probes and builders may need besides the row."""

    manifest: Manifest
    checkpoint: str | os.PathLike | None = None  # the checkpoint the bundle was exported from (torch rows)
    base: str | os.PathLike | None = None  # base OpenAI CLIP file for a ViFi-CLIP checkpoint
    threads: int | None = None  # CPU threads (ONNX Runtime intra-op)
    batch_size: int = 32  # preferred vision batch


@dataclass(frozen=True)
class Row:
    name: str  # the --backend value: ort | ort-cuda | openvino | torch | torch-cuda | trt
    precision: str  # fp32 | fp16 | bf16 | int8: what the encoders compute in
    device: str  # where it computes: cpu | cuda
    extra: str  # pip install "apclip[<extra>]" provides its runtime
    probe: Callable[[Context], "str | None"]  # None: can run here; else a one-line reason
    build: Callable[[Context], Runners]  # raises BackendUnavailable with the reason when it cannot
    file: str | None  # the vision file it runs (bundle-relative; a pattern for engines; None: --ckpt)
    auto: bool = False  # a candidate of --backend auto --precision auto
    reference: bool = False  # the torch fp32 model every other row is checked against

    @property
    def key(self) -> str:
        return f"{self.name}:{self.precision}"


# -- probes (None or why not) ---------------------------------------------------------------------
def _probe_ort(ctx: Context, precision: str) -> str | None:
    from apclip.engine.runners.probes import ort_reason

    return ort_reason(ctx.manifest, precision)


def _probe_openvino(ctx: Context, precision: str) -> str | None:
    from apclip.engine.runners.probes import openvino_reason

    return openvino_reason(ctx.manifest, precision)


def _probe_ort_cuda(ctx: Context) -> str | None:
    from apclip.engine.runners.probes import ort_cuda_reason

    return ort_cuda_reason(ctx.manifest)


def _probe_torch(ctx: Context) -> str | None:
    from apclip.engine.runners.probes import torch_reason

    return torch_reason(ctx.checkpoint)


def _probe_torch_cuda(ctx: Context, precision: str) -> str | None:
    from apclip.engine.runners.probes import checkpoint_reason, torch_cuda_reason

    return torch_cuda_reason(precision) or checkpoint_reason(ctx.checkpoint)


def _probe_trt(ctx: Context, precision: str) -> str | None:
    from apclip.engine.runners.probes import trt_reason

    return trt_reason(ctx.manifest, precision)


# -- builders ((vision, text) runners) ---------------------------------------------------------------
def _build_ort(ctx: Context, *, cuda: bool, precision: str) -> Runners:
    from apclip.engine.runners.encoders import ort_runners

    return ort_runners(ctx.manifest, cuda=cuda, threads=ctx.threads, batch_size=ctx.batch_size, precision=precision)


def _build_openvino(ctx: Context, *, precision: str) -> Runners:
    from apclip.engine.runners.openvino import openvino_runners

    return openvino_runners(ctx.manifest, threads=ctx.threads, batch_size=ctx.batch_size, precision=precision)


def _build_torch(ctx: Context) -> Runners:
    from apclip.engine.runners.encoders import torch_runners

    return torch_runners(ctx.manifest, ctx.checkpoint, ctx.base, batch_size=ctx.batch_size, device="cpu")


def _build_torch_cuda(ctx: Context, *, precision: str) -> Runners:
    from apclip.engine.runners import torch_cuda

    return torch_cuda.torch_cuda_runners(ctx.manifest, ctx.checkpoint, ctx.base, batch_size=ctx.batch_size,
                                         precision=precision)


def _build_trt(ctx: Context, *, precision: str) -> Runners:
    from apclip.engine.runners import tensorrt

    return tensorrt.trt_runners(ctx.manifest, batch_size=ctx.batch_size, precision=precision)


def _engine_file(precision: str) -> str:
    return f"engines/vision-{precision}-<sm>-<key>.engine"


ROWS: tuple[Row, ...] = (
    Row("trt", "fp16", "cuda", "trt", partial(_probe_trt, precision="fp16"), partial(_build_trt, precision="fp16"),
        _engine_file("fp16"), auto=True),
    Row("trt", "int8", "cuda", "trt", partial(_probe_trt, precision="int8"), partial(_build_trt, precision="int8"),
        _engine_file("int8")),
    Row("torch-cuda", "fp16", "cuda", "torch", partial(_probe_torch_cuda, precision="fp16"),
        partial(_build_torch_cuda, precision="fp16"), None, auto=True),
    Row("torch-cuda", "bf16", "cuda", "torch", partial(_probe_torch_cuda, precision="bf16"),
        partial(_build_torch_cuda, precision="bf16"), None),
    Row("torch-cuda", "fp32", "cuda", "torch", partial(_probe_torch_cuda, precision="fp32"),
        partial(_build_torch_cuda, precision="fp32"), None),
    Row("ort-cuda", "fp32", "cuda", "gpu", _probe_ort_cuda, partial(_build_ort, cuda=True, precision="fp32"),
        VISION_FILE, auto=True),
    Row("ort", "fp32", "cpu", "cpu", partial(_probe_ort, precision="fp32"),
        partial(_build_ort, cuda=False, precision="fp32"), VISION_FILE, auto=True),
    Row("ort", "int8", "cpu", "cpu", partial(_probe_ort, precision="int8"),
        partial(_build_ort, cuda=False, precision="int8"), INT8_FILES[VISION_FILE]),
    # The runtime of the native C++ library (CMakeLists.txt); not auto: ONNX Runtime stays the embedded default.
    Row("openvino", "fp32", "cpu", "openvino", partial(_probe_openvino, precision="fp32"),
        partial(_build_openvino, precision="fp32"), VISION_FILE),
    Row("openvino", "int8", "cpu", "openvino", partial(_probe_openvino, precision="int8"),
        partial(_build_openvino, precision="int8"), INT8_FILES[VISION_FILE]),
    Row("torch", "fp32", "cpu", "torch", _probe_torch, _build_torch, None, reference=True),
)


def rows() -> tuple[Row, ...]:
    return ROWS


def backends() -> tuple[str, ...]:
    """Backend names in table order (no "auto")."""
    return tuple(dict.fromkeys(row.name for row in rows()))


def precisions(backend: str | None = None) -> tuple[str, ...]:
    """Precisions in table order, of one backend or of all (no "auto")."""
    return tuple(dict.fromkeys(row.precision for row in rows() if backend in (None, row.name)))


def backend_choices() -> tuple[str, ...]:
    """--backend choices: auto, then every backend."""
    return (AUTO, *backends())


def precision_choices() -> tuple[str, ...]:
    """--precision choices: auto (the backend's default), then every precision."""
    return (AUTO, *precisions())


def find(name: str, precision: str) -> Row | None:
    return next((row for row in rows() if row.name == name and row.precision == precision), None)


def probe(row: Row, ctx: Context) -> str | None:
    """None when `row` can run here, else a one-line reason (errors of the probe itself included)."""
    from apclip.errors import ApclipError

    try:
        return row.probe(ctx)
    except ApclipError as exc:
        return " ".join(str(exc).split())


def build(row: Row, ctx: Context) -> Runners:
    """The row's (vision, text) runners; raises BackendUnavailable saying why when it cannot run."""
    return row.build(ctx)


def vision_file(row: Row, manifest: Manifest) -> str | None:
    """The bundle file `row` would run for the vision encoder, when the bundle has it: an engine of its
    precision (the newest listed) for trt rows, an ONNX file otherwise; None for checkpoint rows."""
    if row.name == "trt":
        from apclip.engine.runners.engine_cache import ENGINES_DIR, listed_engine_names

        names = listed_engine_names(manifest, "vision", row.precision)
        return f"{ENGINES_DIR}/{names[0]}" if names else None
    return row.file if row.file is not None and manifest.has(row.file) else None


def candidates(backend: str, precision: str) -> list[Row]:
    """The rows `--backend backend --precision precision` may run, in order; a one-line UsageError for a
    name or pair the table does not have."""
    if backend != AUTO and backend not in backends():
        raise UnknownChoice(f"unknown backend {backend!r}; choose one of {', '.join(backend_choices())}")
    if precision != AUTO and precision not in precisions():
        raise UnknownChoice(f"unknown precision {precision!r}; choose one of {', '.join(precision_choices())}")
    if backend == AUTO:
        found = [row for row in rows() if (row.auto if precision == AUTO else row.precision == precision
                                                                              and not row.reference)]
    elif precision == AUTO:
        found = [next(row for row in rows() if row.name == backend)]
    else:
        found = [row for row in [find(backend, precision)] if row is not None]
    if not found:
        offered = precisions(None if backend == AUTO else backend)
        where = [row.name for row in rows() if row.precision == precision]
        raise UnknownChoice(f"--backend {backend} has no {precision} precision (it runs {', '.join(offered)}); "
                            f"{precision} runs on " + ", ".join(f"--backend {name}" for name in where))
    return found


def choose(backend: str, precision: str, ctx: Context, *, log: Log = lambda message: None) -> tuple[Row, Runners]:
    """The row `--backend/--precision` select and its runners.

    A named backend is built directly (its errors say how to fix it). `auto` takes the first candidate
    whose probe passes and whose runners build, says what it chose and why each better one was passed
    over; a candidate that fails to build falls back to the next (auto promised one that works)."""
    found = candidates(backend, precision)
    if backend != AUTO:
        return found[0], build(found[0], ctx)
    passed_over: list[str] = []
    for row in found:
        reason = probe(row, ctx)
        if reason is not None:
            passed_over.append(f"{row.key}: {reason}")
            continue
        try:
            runners = build(row, ctx)
        except BackendUnavailable as exc:
            log(f"{exc}; falling back to the next backend")
            passed_over.append(f"{row.key}: {exc}")
            continue
        skipped = f"; passed over {'; '.join(passed_over)}" if passed_over else ""
        log(f"backend auto -> {runners[0].name}")
        log(f"backend auto chose {row.key}: {_found_words(row)}{skipped}")
        return row, runners
    unavailable = BackendUnavailable if precision == AUTO else PrecisionUnavailable
    raise unavailable("no backend can run here: " + "; ".join(passed_over))


def _found_words(row: Row) -> str:
    return {"cpu": "it runs on the CPU everywhere"}.get(row.device, f"its probe found a usable {row.device} device")


def describe(ctx: Context) -> list[dict[str, Any]]:
    """Every row as a plain dict (apclip-bench backends prints and writes it)."""
    out = []
    for row in rows():
        reason = probe(row, ctx)
        out.append({"backend": row.name, "precision": row.precision, "device": row.device, "extra": row.extra,
                    "available": reason is None, "reason": reason, "file": vision_file(row, ctx.manifest) or row.file,
                    "auto": row.auto, "reference": row.reference})
    return out
