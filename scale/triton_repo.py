"""apclip-triton-repo: a bundle -> a Triton Inference Server model repository for NVIDIA's containers.

    repo/
      vision/config.pbtxt    platform onnxruntime_onnx (1/model.onnx), or tensorrt_plan (1/model.plan)
                             when the bundle has a TensorRT vision engine (apclip-build-engine); max_batch_size frames,
                             dynamic_batching, instance_group
      maka/config.pbtxt      Python backend (1/model.py, numpy only) holding the class matrix
                             (1/class_embeddings.npy [K, P, E], 1/class_counts.npy [K], 1/labels.json)
      apclip/config.pbtxt    ensemble: views [Nv, 3, R, R] -> vision -> embeddings [Nv, E] -> maka
                             -> labels [k], scores [k], all_scores [K]
Clip-level bundles (manifest vision_graph, e.g. Open-VCLIP): the vision model's batch item is a clip
[T, 3, R, R] -> [T, E] (or [E]), max_batch_size counts clips, and the ensemble takes views [V, T, 3, R, R].

Serve it with `tritonserver --model-repository repo` in nvcr.io/nvidia/tritonserver:<yy.mm>-py3.
`--vision python` writes a vision model that runs ONNX Runtime inside the Python backend instead,
for servers without the onnxruntime backend (such as the one in the nvidia-pytriton wheel).
The client sends the preprocessed views of one clip (apclip.engine.video.clips.load_clip(...).views,
flattened to [V*T, 3, R, R]); apclip-serve's `apclip_clip` model also takes raw frames.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from apclip.bundle import VISION_INPUT, EMBEDDINGS_OUTPUT, Manifest, bundle_member, read_manifest, sha256_file
from apclip.errors import ApclipError
from apclip.fileio import partial_dir, replace_dir

from apclip.scale.triton_config import ModelConfig, Step, Tensor

if TYPE_CHECKING:
    from apclip.engine.runners.engine_cache import EngineKey

ENSEMBLE = "apclip"
VISION = "vision"
MAKA = "maka"
VISION_KINDS = ("auto", "onnx", "tensorrt", "python")


def model_source(name: str) -> str:
    """The model.py text of scale/triton_models/<name>.py (installed as apclip.scale.triton_models), with
    the one sys.path preamble (_site_dirs.py) inserted after its docstring, before anything is imported."""
    import ast

    package = resources.files("apclip.scale.triton_models")
    source = package.joinpath(f"{name}.py").read_text(encoding="utf-8")
    preamble = package.joinpath("_site_dirs.py").read_text(encoding="utf-8")
    first = ast.parse(source).body[0]
    after = first.end_lineno if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) else 0
    lines = source.splitlines(keepends=True)
    return "".join(lines[:after]) + "\n" + preamble + "\n" + "".join(lines[after:])


def vision_engines(manifest: Manifest, precision: str = "auto") -> dict[str, EngineKey]:
    """The bundle's TensorRT vision engines (apclip-build-engine) of a `trt` row of the backend table (of
    `precision`, or any), by file name, that are on disk."""
    from apclip.engine.runners.engine_cache import ENGINES_DIR, listed_keys
    from apclip.engine.runners.table import find, precisions

    served = precisions("trt") if precision == "auto" else [precision]
    if precision != "auto" and find("trt", precision) is None:
        raise ApclipError(f"--precision {precision}: TensorRT engines are built in {', '.join(precisions('trt'))}")
    return {name: key for name, key in listed_keys(manifest).items()
            if key.graph == "vision" and key.precision in served and (manifest.path / ENGINES_DIR / name).is_file()}


def _copy_regular(source: Path, target: Path, sha256: str | None) -> None:
    """Copy a bundle file that is itself a regular file (never a symlink's target) and, given `sha256`, has it.
    Engines are passed without: TensorRT checks an engine's own build record when it deserialises it."""
    if source.is_symlink() or not source.is_file():
        raise ApclipError(f"{source} is a symlink or not a regular file; a model repository copies only the "
                          f"bundle's own files")
    shutil.copyfile(source, target, follow_symlinks=False)
    if sha256 is not None and sha256_file(target) != sha256:
        raise ApclipError(f"{source} does not match its sha256 in the manifest (modified while copied?)")


def onnx_vision_file() -> str:
    """The ONNX file the onnx/python vision models serve: the ort fp32 row's."""
    from apclip.engine.runners.table import find

    return find("ort", "fp32").file


def _pick_engine(manifest: Manifest, engine: str | None, precision: str = "auto"):
    """(file name, EngineKey) of the engine to serve, or None; several need --engine to choose."""
    engines = vision_engines(manifest, precision)
    if engine is not None:
        if engine not in engines:
            raise ApclipError(f"--engine {engine}: not a vision engine of bundle {manifest.path} "
                              f"(it has: {', '.join(sorted(engines)) or 'none'})")
        return engine, engines[engine]
    if len(engines) > 1:
        # An engine runs only on the GPU model and TensorRT version it was built for: the user knows the target.
        raise ApclipError(f"bundle {manifest.path} has {len(engines)} vision engines; choose the one built for the "
                          f"target GPU and the container's TensorRT with --engine ({', '.join(sorted(engines))})")
    return next(iter(engines.items()), None)


def vision_config(manifest: Manifest, kind: str, *, max_batch: int, instances: int, gpu: bool,
                  max_queue_delay_us: int, threads: int = 0) -> ModelConfig:
    r, e = manifest.preprocessing.resolution, manifest.embed_dim
    item, out, max_batch = [3, r, r], [e], max_batch
    graph = manifest.vision_graph
    if graph.clip_level:  # one batch item is a whole clip; --max-batch counts frames
        item, max_batch = [graph.frames, 3, r, r], max(1, max_batch // graph.frames)
        out = [graph.frames, e] if graph.output == "frames" else [e]
    config = ModelConfig(VISION, [Tensor(VISION_INPUT, "TYPE_FP32", item)],
                         [Tensor(EMBEDDINGS_OUTPUT, "TYPE_FP32", out)], max_batch_size=max_batch,
                         instance_kind="KIND_GPU" if gpu and kind != "python" else "KIND_CPU", instances=instances,
                         dynamic_batching=True, max_queue_delay_us=max_queue_delay_us)
    if kind == "python":
        config.backend = "python"
        config.parameters = {"threads": str(threads)}
    else:
        config.platform = "tensorrt_plan" if kind == "tensorrt" else "onnxruntime_onnx"
    return config


def maka_config(manifest: Manifest, num_classes: int, topk: int) -> ModelConfig:
    k = min(topk, num_classes)
    graph = manifest.vision_graph
    # Clip-level frame outputs arrive as [V, T, E]; the maka model flattens them to one set.
    dims = [-1, graph.frames, manifest.embed_dim] if graph.clip_level and graph.output == "frames" else \
        [-1, manifest.embed_dim]
    return ModelConfig(MAKA, [Tensor("embeddings", "TYPE_FP32", dims)], _clip_outputs(k, num_classes),
                       backend="python", parameters={"topk": str(topk)})


def _clip_outputs(k: int, num_classes: int) -> list[Tensor]:
    return [Tensor("labels", "TYPE_STRING", [k]), Tensor("scores", "TYPE_FP32", [k]),
            Tensor("all_scores", "TYPE_FP32", [num_classes])]


def ensemble_config(manifest: Manifest, num_classes: int, topk: int) -> ModelConfig:
    r = manifest.preprocessing.resolution
    k = min(topk, num_classes)
    # max_batch_size 0: one request is one clip; its Nv views are the batch the vision model sees.
    graph = manifest.vision_graph
    views = [-1, graph.frames, 3, r, r] if graph.clip_level else [-1, 3, r, r]
    return ModelConfig(ENSEMBLE, [Tensor("views", "TYPE_FP32", views)], _clip_outputs(k, num_classes),
                       platform="ensemble", instance_kind=None, steps=[
                           Step(VISION, {VISION_INPUT: "views"}, {EMBEDDINGS_OUTPUT: "frame_embeddings"}),
                           Step(MAKA, {"embeddings": "frame_embeddings"},
                                {"labels": "labels", "scores": "scores", "all_scores": "all_scores"}),
                       ])


def write_triton_repo(bundle: str | Path, out: str | Path, *, vision: str = "auto", max_batch: int = 64,
                      instances: int = 1, gpu: bool = True, max_queue_delay_us: int = 2000, topk: int = 5,
                      threads: int = 0, overwrite: bool = False, engine: str | None = None,
                      precision: str = "auto") -> Path:
    """Write the repository to `out` (a temporary folder renamed into place). Returns `out`."""
    from apclip.engine.scoring.vocabulary import bundle_class_matrix

    if vision not in VISION_KINDS:
        raise ApclipError(f"--vision {vision}: choose one of {', '.join(VISION_KINDS)}")
    if max_batch < 1 or instances < 1 or topk < 1 or max_queue_delay_us < 0:
        raise ApclipError("--max-batch, --instances and --topk must be 1 or more, --max-queue-delay-us 0 or more")
    manifest = read_manifest(bundle)
    if manifest.scoring.protocol != "maka":
        raise ApclipError(f"bundle {bundle} scores by the {manifest.scoring.protocol} protocol; the repository's maka "
                          "model implements MAKA only: serve this bundle with apclip-serve")
    views = manifest.preprocessing.views * manifest.preprocessing.frames
    if max_batch < views:
        raise ApclipError(f"--max-batch {max_batch}: one clip of this bundle is {views} frames; use at least that")
    picked = _pick_engine(manifest, engine, precision) if vision in ("auto", "tensorrt") else None
    kind = vision if vision != "auto" else ("tensorrt" if picked is not None else "onnx")
    if kind == "tensorrt" and picked is None:
        raise ApclipError(f"bundle {bundle} has no TensorRT engine for the vision encoder (apclip-build-engine "
                          "makes one on the target GPU); use --vision onnx")
    if kind == "tensorrt":
        profile = picked[1].profile
        per_item = manifest.vision_graph.frames if manifest.vision_graph.clip_level else 1  # frames per batch item
        if profile.max_batch * per_item < views:
            raise ApclipError(f"engine {picked[0]} takes at most {profile.max_batch * per_item} frames, "
                              f"one clip is {views}")
        max_batch = min(max_batch, profile.max_batch * per_item)  # Triton must not send batches the profile cannot take
    out = Path(out)
    if out.exists() and not overwrite:
        raise ApclipError(f"{out} exists: remove it or pass --overwrite")
    classes = bundle_class_matrix(manifest)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Built in a sibling folder and renamed into place: never a half-written repository.
    tmp = partial_dir(out)
    try:
        (tmp / VISION / "1").mkdir(parents=True)
        (tmp / MAKA / "1").mkdir(parents=True)
        (tmp / ENSEMBLE / "1").mkdir(parents=True)  # an ensemble needs a (empty) version folder
        configs = [vision_config(manifest, kind, max_batch=max_batch, instances=instances, gpu=gpu,
                                 max_queue_delay_us=max_queue_delay_us, threads=threads),
                   maka_config(manifest, classes.num_classes, topk),
                   ensemble_config(manifest, classes.num_classes, topk)]
        for config in configs:
            (tmp / config.name / "config.pbtxt").write_text(config.pbtxt(), encoding="utf-8")
        if kind == "tensorrt":
            from apclip.engine.runners.engine_cache import ENGINES_DIR

            source = bundle_member(manifest.path, f"{ENGINES_DIR}/{picked[0]}")
            _copy_regular(source, tmp / VISION / "1" / "model.plan", None)
        else:
            vision_file = onnx_vision_file()
            _copy_regular(manifest.file(vision_file), tmp / VISION / "1" / "model.onnx",
                          manifest.files[vision_file]["sha256"])
        if kind == "python":
            (tmp / VISION / "1" / "model.py").write_text(model_source("vision_ort"), encoding="utf-8")
        maka_dir = tmp / MAKA / "1"
        (maka_dir / "model.py").write_text(model_source("maka"), encoding="utf-8")
        np.save(maka_dir / "class_embeddings.npy", np.ascontiguousarray(classes.embeddings, dtype=np.float32))
        np.save(maka_dir / "class_counts.npy", np.ascontiguousarray(classes.counts, dtype=np.int32))
        (maka_dir / "labels.json").write_text(json.dumps(classes.labels, ensure_ascii=False), encoding="utf-8")
        replace_dir(tmp, out)  # an existing repository only with --overwrite (checked above)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("bundle", help="bundle directory (from apclip-export)")
    p.add_argument("--out", required=True, help="repository folder to create")
    p.add_argument("--vision", default="auto", choices=VISION_KINDS,
                   help="vision model: onnx (onnxruntime_onnx), tensorrt (tensorrt_plan, needs an engine in the "
                        "bundle), python (ONNX Runtime inside the Python backend); auto: tensorrt if an engine "
                        "exists, else onnx")
    p.add_argument("--engine", help="the bundle's TensorRT vision engine to serve (file name under engines/), "
                                    "when it has several")
    from apclip.engine.runners.table import precisions

    p.add_argument("--precision", default="auto", choices=("auto", *precisions("trt")),
                   help="--vision tensorrt: serve an engine of this precision (a trt row of apclip-bench backends: "
                        "fp16 or int8; default: any)")
    p.add_argument("--max-batch", type=int, default=64, help="vision max_batch_size in frames (default 64)")
    p.add_argument("--max-queue-delay-us", type=int, default=2000,
                   help="dynamic batching: longest wait to fill a batch (default 2000 us)")
    p.add_argument("--instances", type=int, default=1, help="vision instance count (default 1)")
    p.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=True,
                   help="vision instances on GPUs (KIND_GPU; default) or CPUs (--no-gpu)")
    p.add_argument("--topk", type=int, default=5, help="labels and scores returned (default 5)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing repository")
    return p


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(
        prog="apclip-triton-repo", description="Write a Triton Inference Server model repository from a bundle."))


def run(args: argparse.Namespace) -> int:
    try:
        out = write_triton_repo(args.bundle, args.out, vision=args.vision, max_batch=args.max_batch,
                                instances=args.instances, gpu=args.gpu, max_queue_delay_us=args.max_queue_delay_us,
                                topk=args.topk, overwrite=args.overwrite, engine=args.engine,
                                precision=args.precision)
    except (ApclipError, OSError) as exc:
        print(f"apclip-triton-repo: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(f"wrote the Triton model repository {out} (models {VISION}, {MAKA}, ensemble {ENSEMBLE})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def _bundle_command():
    from apclip.engine.cli.bundle import Command

    return Command("triton-repo", "write a Triton Inference Server model repository for NVIDIA's containers",
                   add_arguments, run)


# `apclip-bundle triton-repo`: registered through the apclip.bundle_commands entry point (pyproject).
BUNDLE_COMMAND = _bundle_command()


if __name__ == "__main__":
    sys.exit(main())
