"""Encoder runners: one interface over ONNX Runtime (CPU / CUDA) and the torch reference.

A runner maps a batch to L2-normalised float32 embeddings:
  vision: pixels [N, 3, R, R] float32 -> [N, E];  text: tokens [M, L] int64 -> [M, E].
(Bundles scored with the vificlip protocol export vision.onnx with raw features, `io.vision.normalized`
false in the manifest: ViFi-CLIP mean-pools each view before normalising.)
TensorRT (a later backend) implements the same `EncoderRunner` protocol, so callers never change.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from apclip.bundle import EMBEDDINGS_OUTPUT, TEXT_BATCH, VISION_INPUT, BundleError, Manifest, sha256_file
from apclip.errors import ApclipError, MissingExtraError
from apclip.extras import require



class BackendUnavailable(ApclipError):
    pass


class BackendPackageMissing(BackendUnavailable, MissingExtraError):
    """The backend's package is not installed: a missing extra (exit 2), not a failure."""


@dataclass(frozen=True)
class EncoderIdentity:
    """What made a row of embeddings: runners with equal identities give equal rows (the run-time label
    cache is keyed by it). Each runner reports its own as `cache_identity`, set by its builder."""

    runner: str  # runtime and device: ort-cpu | ort-cuda | torch-cpu | torch-cuda | tensorrt
    precision: str  # what it computes in: fp32 | fp16 | bf16 | int8
    source: str  # where its weights come from: a bundle file name, "checkpoint", an engine file
    sha256: str  # of that source

    def words(self) -> str:
        return f"{self.source} ({self.runner} {self.precision})"


class EncoderRunner(Protocol):
    name: str  # e.g. "ort-cpu", "ort-cuda", "torch-cpu"
    batch_size: int  # preferred batch: callers split larger inputs into batches of this size

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


def encode_in_batches(runner: EncoderRunner, data: np.ndarray) -> np.ndarray:
    outputs = [runner(data[i:i + runner.batch_size]) for i in range(0, len(data), runner.batch_size)]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


class OrtRunner:
    """An ONNX Runtime session on one file with one input and the `embeddings` output."""

    def __init__(self, path: Path, input_name: str, *, cuda: bool = False, threads: int | None = None,
                 batch_size: int = 32, identity: EncoderIdentity | None = None,
                 session_config: dict[str, str] | None = None):
        ort = require("onnxruntime", "cpu", "the ONNX Runtime backend")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        for key, value in (session_config or {}).items():  # e.g. int8's exact sums without VNNI
            options.add_session_config_entry(key, value)
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if cuda:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                from apclip.extras import install_hint

                raise BackendPackageMissing(f"backend ort-cuda needs onnxruntime-gpu with CUDA: pip uninstall onnxruntime, "
                                         f"then {install_hint('gpu')}; or use --backend ort")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # ORT raises its own untyped errors for files it cannot load
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BundleError(f"ONNX Runtime cannot load {path} ({first_line}); re-run apclip-export") from None
        self.input_name = input_name
        self.name = "ort-cuda" if cuda else "ort-cpu"
        self.batch_size = batch_size
        self.cache_identity = identity

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([EMBEDDINGS_OUTPUT], {self.input_name: batch})[0]


class TorchRunner:
    """The PyTorch reference (ImageEmbedder / TextEmbedder) from the checkpoint the bundle came from."""

    def __init__(self, module, *, device: str = "cpu", batch_size: int = 32, identity: EncoderIdentity | None = None):
        self.torch = require("torch", "torch", "the torch backend")
        self.module = module.to(device).eval()
        self.device = device
        self.name = f"torch-{device.split(':')[0]}"
        self.batch_size = batch_size
        self.cache_identity = identity

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            x = self.torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            return self.module(x).float().cpu().numpy()


class LazyRunner:
    """A runner built on its first call. The text encoder is only needed for labels that are not in the
    bundle (and not cached), so most runs never pay for loading it (hundreds of MB for ViT-B/16)."""

    def __init__(self, build, name: str, batch_size: int, identity: EncoderIdentity | None = None):
        self._build = build
        self._runner: EncoderRunner | None = None
        self.name = name
        self.batch_size = batch_size
        self.cache_identity = identity  # known before building: the cache is looked up without loading

    @property
    def loaded(self) -> bool:
        return self._runner is not None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self._runner is None:
            self._runner = self._build()
        return self._runner(batch)


def _default_threads(threads: int | None) -> int | None:
    if threads:
        return threads
    value = os.environ.get("APCLIP_THREADS")
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ApclipError(f"APCLIP_THREADS={value!r} is not a positive whole number of threads; unset it or fix it")
    return int(value)


def graph_batch_max(manifest: Manifest, graph: str, wanted: int) -> int:
    """`wanted`, capped by the batch range the bundle's graph was exported for (--batch-max)."""
    limit = ((manifest.raw.get("io") or {}).get(graph) or {}).get("batch_max")
    return max(1, min(wanted, int(limit))) if limit else wanted


def file_identity(manifest: Manifest, file: str, runner: str, precision: str) -> EncoderIdentity:
    """The identity of a runner of the bundle file `file` (its hash from the checked manifest)."""
    return EncoderIdentity(runner, precision, file, str(manifest.files[file]["sha256"]))


def checkpoint_identity(manifest: Manifest, checkpoint: str | os.PathLike, runner: str,
                        precision: str) -> EncoderIdentity:
    """The identity of a runner of the checkpoint (the hash the manifest records, which loading checks)."""
    sha = (manifest.raw.get("checkpoint") or {}).get("sha256") or sha256_file(checkpoint)
    return EncoderIdentity(runner, precision, "checkpoint", str(sha))


def ort_runners(manifest: Manifest, *, cuda: bool, threads: int | None, batch_size: int, precision: str = "fp32"):
    """(vision, text) runners; precision "int8" loads the bundle's int8 files (engine/runners/precision.py)."""
    from apclip.engine.runners.precision import check_precision, encoder_files, file_precision, session_config, text_runner

    from apclip.engine.runners.clip_level import clip_batch, frame_interface

    check_precision(precision, manifest)
    vision_file, text_file = encoder_files(manifest, precision)
    threads = _default_threads(threads)
    batch_size = graph_batch_max(manifest, "vision", clip_batch(manifest, batch_size))
    device = "ort-cuda" if cuda else "ort-cpu"
    vision = OrtRunner(manifest.file(vision_file), VISION_INPUT, cuda=cuda, threads=threads, batch_size=batch_size,
                       identity=file_identity(manifest, vision_file, device, precision),
                       session_config=session_config(manifest, precision, vision_file))  # as the export gated it
    if precision != "fp32":
        vision.name = f"{vision.name}-{precision}"
    vision = frame_interface(manifest, vision)  # clip-level graphs: whole clips of T frames per input
    # text.int8.onnx may have been refused at export: the text identity is that of the file it runs
    identity = file_identity(manifest, text_file, device, file_precision(text_file))
    text = LazyRunner(lambda: text_runner(manifest, text_file, cuda=cuda, threads=threads, identity=identity,
                                          session_config=session_config(manifest, precision, text_file)),
                      vision.name, TEXT_BATCH, identity)
    return vision, text


def checked_checkpoint(manifest: Manifest, checkpoint: str | os.PathLike | None, base: str | None, *,
                       backend: str = "torch"):
    """The float32 CLIP of `checkpoint`, refused unless it is the one the bundle was exported from
    (patched with the same original CLIP and ratio when the bundle's weights were patched)."""
    if checkpoint is None:
        raise BackendUnavailable(f"backend {backend} needs --ckpt, the checkpoint the bundle was exported from")
    require("torch", "torch", f"the {backend} backend")
    from apclip.bundle import sha256_file
    from apclip.checkpoint import load_model

    if not Path(checkpoint).is_file():
        raise BackendUnavailable(f"--ckpt {checkpoint} does not exist: pass the checkpoint bundle "
                                 f"{manifest.path} was exported from")
    expected = (manifest.raw.get("checkpoint") or {}).get("sha256")
    if expected and sha256_file(checkpoint) != expected:
        raise BackendUnavailable(f"checkpoint {checkpoint} is not the one bundle {manifest.path} was exported "
                                 f"from (sha256 differs); pass the matching --ckpt")
    patching = manifest.raw.get("patching")
    if patching:
        if base is None or not Path(base).is_file() or sha256_file(base) != patching.get("base_sha256"):
            raise BackendUnavailable(f"bundle {manifest.path} was patched with the original CLIP "
                                     f"{patching.get('base')} (ratio {patching.get('ratio')}): pass that file as --base")
        return load_model(checkpoint, base=base, patch_ratio=float(patching["ratio"]))
    return load_model(checkpoint, base=base)


def torch_runners(manifest: Manifest, checkpoint: str | os.PathLike | None, base: str | None, *,
                  batch_size: int, device: str | None = None):
    """The reference encoders on `device` (default: CUDA when torch sees a GPU, else the CPU)."""
    torch = require("torch", "torch", "the torch backend")
    from apclip.model import TextEmbedder

    from apclip.engine.runners.clip_level import clip_batch, frame_interface

    model = checked_checkpoint(manifest, checkpoint, base)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    identity = checkpoint_identity(manifest, checkpoint, f"torch-{device.split(':')[0]}", "fp32")
    vision = TorchRunner(vision_module(manifest, model), device=device, batch_size=clip_batch(manifest, batch_size),
                         identity=identity)
    return (frame_interface(manifest, vision),
            TorchRunner(TextEmbedder(model), device=device, batch_size=TEXT_BATCH, identity=identity))


def vision_module(manifest: Manifest, model):
    """The torch module the bundle's vision.onnx was exported from (per-frame or clip-level)."""
    from apclip.model import ImageEmbedder

    graph = manifest.vision_graph
    if not graph.clip_level:
        return ImageEmbedder(model, normalize=manifest.vision_normalized)
    from apclip.temporal_vit import ClipImageEmbedder

    return ClipImageEmbedder(model, graph.temporal_attention, normalize=manifest.vision_normalized)
