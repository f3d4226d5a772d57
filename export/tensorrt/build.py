"""Build TensorRT engines for a bundle on the target GPU, cached under bundle/engines/.

    apclip-build-engine BUNDLE [--precision fp16|int8] [--graph vision|text|vision+maka] [--workspace-gb 4]
    (the same options as `apclip-bundle build-engine`)

Precision (TensorRT 10.12 deprecated weak typing and 11.x removed BuilderFlag.FP16/INT8):
- fp16: a strongly typed network parsed from a mixed-precision ONNX made by NVIDIA ModelOpt AutoCast,
  with LayerNormalization and the final L2 normalisation (ReduceSum, Sqrt) kept fp32. Without
  ModelOpt, TensorRT 10.x builds weakly typed with BuilderFlag.FP16 and those layers pinned to fp32
  (OBEY_PRECISION_CONSTRAINTS); TensorRT 11 refuses and asks for ModelOpt.
- int8: explicit quantization only. A bundle exported with `--precision fp32,int8` whose vision int8
  graph is the gated static QDQ one (export/int8/, symmetric int8, the gate's float layers kept) is
  parsed as it is; otherwise a QDQ ONNX from ModelOpt's ONNX quantizer, calibrated on clips the user
  passes (.npy of [N, 3, R, R] pixels, or videos) or on the bundle's generated verification video.
  The implicit calibrator (deprecated since TensorRT 10.1) is never used.
The optimization profile spans the batch range the manifest records; the timing cache lives beside
the engine and is reused by the next build on the same GPU and TensorRT version.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from apclip.bundle import VISION_INPUT, Manifest, read_manifest
from apclip.cli_common import run_command
from apclip.errors import ApclipError, MissingExtraError
from apclip.fileio import atomic_write

from apclip.engine.cli.bundle import Command
from apclip.engine.runners.engine_cache import (GRAPHS, EngineKey, Profile, engine_entry, engine_key, find_engine,
                                     engine_precisions, profile_from_manifest, record_engine, timing_cache_path)

Log = Callable[[str], None]
# Kept in fp32 in every fp16/int8 engine: LayerNorm overflows in fp16 in CLIP; the final normalisation
# (l2_normalize: ReduceSum + Sqrt) sets the embedding's scale for every score.
FP32_ONNX_OPS = ("LayerNormalization", "ReduceSum", "Sqrt")
FP32_TRT_LAYERS = ("NORMALIZATION", "REDUCE", "UNARY")  # the same ops as TensorRT layer types
GRAPH_CHOICES = ("vision", "text", "vision+maka")


class EngineBuildError(ApclipError):
    pass


@dataclass(frozen=True)
class BuildPlan:
    strongly_typed: bool
    onnx_step: str | None  # "autocast-fp16" | "qdq-int8" | "bundle-qdq-int8" | None (the bundle's fp32 ONNX as is)
    builder_flags: tuple[str, ...]  # trt.BuilderFlag names (weakly typed TensorRT 10 only)
    fp32_layers: tuple[str, ...]  # trt.LayerType names pinned to fp32 (weakly typed only)
    note: str  # one line for the log and the manifest


def build_plan(precision: str, tensorrt_version: str, modelopt: bool, bundle_qdq: bool = False) -> BuildPlan:
    """How an engine of `precision` is built with this TensorRT, with or without ModelOpt installed;
    bundle_qdq: the bundle holds a gated static QDQ vision.int8.onnx (gated_qdq_vision)."""
    major = int(tensorrt_version.split(".")[0])
    if precision == "int8" and bundle_qdq:
        return BuildPlan(True, "bundle-qdq-int8", (), (), "strongly typed, the bundle's gated QDQ vision.int8.onnx "
                                                          "(explicit int8; the export's float layers stay float)")
    if precision == "int8":
        if not modelopt:
            raise MissingExtraError("int8 engines use explicit quantization (QDQ ONNX from NVIDIA ModelOpt; the "
                                    "implicit calibrator is deprecated since TensorRT 10.1): pip install "
                                    "\"nvidia-modelopt[onnx]\"")
        return BuildPlan(True, "qdq-int8", (), (), "strongly typed, QDQ int8 from ModelOpt (fp16 elsewhere)")
    if precision != "fp16":
        raise EngineBuildError(f"precision {precision!r}: choose one of {', '.join(engine_precisions())}")
    if modelopt:
        return BuildPlan(True, "autocast-fp16", (), (), "strongly typed, fp16 ONNX from ModelOpt AutoCast, "
                                                        f"{'/'.join(FP32_ONNX_OPS)} in fp32")
    if major >= 11:
        raise MissingExtraError(f"TensorRT {tensorrt_version} builds strongly typed networks only: fp16 needs a "
                                "mixed-precision ONNX from NVIDIA ModelOpt AutoCast: pip install "
                                "\"nvidia-modelopt[onnx]\"")
    return BuildPlan(False, None, ("FP16", "OBEY_PRECISION_CONSTRAINTS"), FP32_TRT_LAYERS,
                     "weakly typed with BuilderFlag.FP16 (deprecated since TensorRT 10.12; install "
                     "nvidia-modelopt for a strongly typed build)")


def maka_profile(manifest: Manifest, max_batch: int | None = None) -> Profile:
    """vision+maka engines take whole videos: N = B * V * T frames, from one video to the largest whole
    number of videos the exported range holds."""
    if manifest.vision_graph.clip_level:
        raise EngineBuildError(f"bundle {manifest.path} has a clip-level vision graph ([B, T, 3, R, R]); the MAKA "
                               "tail of vision+maka engines takes per-frame graphs: build --graph vision")
    pre = manifest.preprocessing
    frames = pre.frames * pre.views
    base = profile_from_manifest(manifest, "vision")
    videos = max(1, (max_batch or base.max_batch) // frames)
    if videos * frames > base.max_batch:
        raise EngineBuildError(f"one video is {frames} frames, more than the {base.max_batch} the bundle's "
                               "vision.onnx accepts; re-export with a larger --batch-max")
    return Profile(base.input_name, frames, frames, videos * frames, base.tail)


@dataclass
class BuildRequest:
    bundle: Path
    graph: str = "vision"
    precision: str = "fp16"
    workspace_gb: float = 4.0
    opt_batch: int | None = None
    max_batch: int | None = None
    calibration: Sequence[str] = ()  # .npy pixel arrays or videos (int8); default: the generated video
    force: bool = False


def build_engine(request: BuildRequest, log: Log = print) -> Path:
    """Build (or reuse) the engine the request describes; returns its path. Mismatched or corrupt
    engines are rebuilt with a message saying why; a usable cached one is kept (unless force)."""
    from apclip.extras import require

    trt = require("tensorrt", "trt", "building TensorRT engines")
    from apclip.engine.runners.tensorrt import current_gpu

    if request.graph not in GRAPH_CHOICES:
        raise EngineBuildError(f"--graph {request.graph}: choose one of {', '.join(GRAPH_CHOICES)}")
    if request.precision == "int8" and request.graph == "text":
        raise EngineBuildError("int8 engines are for the vision encoder (calibrated on frames); build the text "
                               "encoder with --precision fp16")
    manifest = read_manifest(request.bundle)
    if request.graph == "vision+maka" and manifest.scoring.protocol != "maka":
        raise EngineBuildError(f"bundle {request.bundle} scores with the {manifest.scoring.protocol} protocol; the "
                               f"vision+maka engine computes MAKA: build --graph vision (the scorer runs after it)")
    if request.graph == "vision+maka":
        profile = maka_profile(manifest, request.max_batch)
    else:
        profile = profile_from_manifest(manifest, request.graph, request.opt_batch, request.max_batch)
    key = engine_key(manifest, request.graph, request.precision, trt.__version__, current_gpu(), profile)
    decision = find_engine(manifest, key)
    if decision.use and not request.force:
        log(f"{decision.reason}: kept")
        return decision.path
    log(f"building {decision.path.name}: {'--force' if decision.use else decision.reason}")
    plan = build_plan(request.precision, trt.__version__, _modelopt_available(),
                      bundle_qdq=request.graph != "text" and gated_qdq_vision(manifest))
    if plan.onnx_step == "bundle-qdq-int8" and request.calibration:
        log("--calibration ignored: the bundle's int8 graph was calibrated and gated at export")
    log(f"plan: {plan.note}; profile batch {profile.min_batch}/{profile.opt_batch}/{profile.max_batch}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="apclip-trt-") as tmp:
        onnx_path = prepare_onnx(manifest, request, plan, Path(tmp), log)
        if request.graph == "vision+maka":
            from apclip.export.tensorrt.network import maka_network_hook

            hook = maka_network_hook(manifest, profile)
        else:
            hook = None
        serialized, cache = _build_serialized(trt, onnx_path, key, plan, request.workspace_gb,
                                              timing_cache_path(decision.path, key), hook, log)
    decision.path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(decision.path, "wb") as f:
        f.write(serialized)
    cache_file = timing_cache_path(decision.path, key)
    with atomic_write(cache_file, "wb") as f:
        f.write(cache)
    entry = engine_entry(key, decision.path, cache_file, datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         time.perf_counter() - started, [plan.note])
    record_engine(manifest, decision.path.name, entry)
    log(f"wrote {decision.path} ({decision.path.stat().st_size / 1e6:.1f} MB) in {entry['build_seconds']} s")
    return decision.path


def gated_qdq_vision(manifest: Manifest) -> bool:
    """The bundle ships a vision.int8.onnx made by the export's static QDQ quantizer (ORT's dynamic int8
    uses ONNX Runtime's own operators, which TensorRT cannot parse)."""
    from apclip.bundle import INT8_FILES, VISION_FILE

    name = INT8_FILES[VISION_FILE]
    record = (manifest.raw.get("precisions") or {}).get("int8") or {}
    return manifest.has(name) and (record.get("methods") or {}).get(name) == "static"


def _modelopt_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("modelopt") is not None


def prepare_onnx(manifest: Manifest, request: BuildRequest, plan: BuildPlan, work: Path, log: Log) -> Path:
    """The ONNX file TensorRT parses: the bundle's fp32 graph, its AutoCast fp16 twin, or its QDQ twin."""
    source = manifest.file(GRAPHS[request.graph.split("+")[0]])
    if plan.onnx_step is None:
        return source
    if plan.onnx_step == "bundle-qdq-int8":
        from apclip.bundle import INT8_FILES, VISION_FILE

        return manifest.file(INT8_FILES[VISION_FILE])
    import onnx

    out = work / f"{source.stem}.{plan.onnx_step}.onnx"
    if plan.onnx_step == "autocast-fp16":
        from modelopt.onnx.autocast import convert_to_mixed_precision

        log("ModelOpt AutoCast: fp16 ONNX ...")
        model = convert_to_mixed_precision(onnx_path=str(source), low_precision_type="fp16",
                                           op_types_to_exclude=list(FP32_ONNX_OPS), keep_io_types=True)
        onnx.save(model, str(out))
        return out
    from modelopt.onnx.quantization import quantize

    pixels = calibration_pixels(manifest, request.calibration)
    log(f"ModelOpt ONNX quantizer: int8 QDQ, calibrated on {len(pixels)} frames ...")
    quantize(str(source), quantize_mode="int8", calibration_data={VISION_INPUT: pixels}, calibration_method="entropy",
             op_types_to_exclude=list(FP32_ONNX_OPS), high_precision_dtype="fp16", output_path=str(out))
    return out


def calibration_pixels(manifest: Manifest, sources: Sequence[str]) -> np.ndarray:
    """[N, 3, R, R] float32 calibration frames: .npy files as they are, videos through the engine's own
    decode and preprocessing, or (none given) the bundle's generated verification video."""
    r = manifest.preprocessing.resolution
    if not sources:
        from apclip.export.verify import generated_video_pixels

        return _graph_pixels(manifest, generated_video_pixels(manifest.preprocessing))
    from apclip.engine.video.clips import load_clip
    from apclip.engine.video.preprocess import flatten_views

    parts = []
    for source in sources:
        if str(source).endswith(".npy"):
            try:
                array = np.load(source, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise EngineBuildError(f"--calibration {source} is unreadable ({exc})") from None
            if array.ndim != 4 or tuple(array.shape[1:]) != (3, r, r):
                raise EngineBuildError(f"--calibration {source} has shape {array.shape}; expected [N, 3, {r}, {r}] "
                                       "preprocessed pixels")
            parts.append(array.astype(np.float32, copy=False))
        else:
            parts.append(flatten_views(load_clip(source, manifest.preprocessing).views))
    return _graph_pixels(manifest, np.concatenate(parts))


def _graph_pixels(manifest: Manifest, pixels: np.ndarray) -> np.ndarray:
    """[N, 3, R, R] frames as the vision graph takes them ([N/T, T, 3, R, R] for clip-level graphs)."""
    from apclip.export.vision_graph import graph_input

    try:
        return graph_input(pixels, manifest.vision_graph)
    except ValueError as exc:
        raise EngineBuildError(f"--calibration: {exc}; pass whole clips") from None


def _build_serialized(trt, onnx_path: Path, key: EngineKey, plan: BuildPlan, workspace_gb: float,
                      cache_path: Path, network_hook, log: Log) -> tuple[bytes, bytes]:
    """The thin TensorRT part: parse, configure, build. Returns (engine bytes, timing cache bytes)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    if network_hook is not None:
        network_hook(trt, network)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan.fp32_layers:
        pinned = {getattr(trt.LayerType, name) for name in plan.fp32_layers}
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.type in pinned:
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.float32)
    profile = builder.create_optimization_profile()
    low, opt, high = key.profile.shapes()
    profile.set_shape(key.profile.input_name, low, opt, high)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    log(f"TensorRT {trt.__version__}: building (minutes for ViT-B/16) ...")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT could not build an engine from {onnx_path.name} (see its log above)")
    return bytes(serialized), bytes(config.get_timing_cache().serialize())


# -- command line ---------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("bundle", help="bundle directory (apclip-export's output)")
    p.add_argument("--precision", choices=engine_precisions(), default="fp16", help="engine precision (default fp16)")
    p.add_argument("--graph", choices=GRAPH_CHOICES, default="vision",
                   help="vision, text, or vision+maka (pixels -> class scores, MAKA as a TensorRT plugin)")
    p.add_argument("--workspace-gb", type=float, default=4.0, help="builder workspace limit in GiB (default 4)")
    p.add_argument("--opt-batch", type=int, help="batch TensorRT tunes for (default: one clip's V*T frames)")
    p.add_argument("--max-batch", type=int, help="largest batch of the profile (default: the bundle's range)")
    p.add_argument("--calibration", nargs="*", default=[],
                   help="int8: .npy pixel arrays [N, 3, R, R] or videos (default: the generated test video)")
    p.add_argument("--force", action="store_true", help="rebuild even when a matching engine is cached")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def run(args: argparse.Namespace) -> int:
    from apclip.engine.runners.engine_cache import ENGINES_DIR
    from apclip.output_guard import Input, Output, check_outputs

    check_outputs([Output("BUNDLE/engines", Path(args.bundle) / ENGINES_DIR, "into")],
                  [Input("--calibration", video) for video in args.calibration])
    build_engine(BuildRequest(Path(args.bundle), args.graph, args.precision, args.workspace_gb, args.opt_batch,
                              args.max_batch, tuple(args.calibration), args.force),
                 log=lambda m: print(m, file=sys.stderr))
    return 0


# `apclip-bundle build-engine`: registered through the apclip.bundle_commands entry point (pyproject).
BUNDLE_COMMAND = Command("build-engine", "build a TensorRT engine for this GPU into BUNDLE/engines/",
                         add_arguments, lambda args: run(args))


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(
        prog="apclip-build-engine", description="Build a TensorRT engine for a bundle on this GPU (cached in "
                                                "BUNDLE/engines/, listed in its manifest)."))
    return run_command("apclip-build-engine", parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
