"""The `torch-cuda` backend: the reference model in fp16 (default) or bf16 on any GPU PyTorch sees.

Precision policy (DESIGN.md): weights and activations in fp16/bf16; LayerNorm computes in fp32 and
keeps fp32 parameters (apclip.model.LayerNorm upcasts; keeping its weights fp32 spares a rounding);
the final L2 normalisation runs in fp32 (ImageEmbedder/TextEmbedder upcast before it). Attention is
`scaled_dot_product_attention`, which dispatches to the flash / memory-efficient kernels on CUDA.

Transfers: each batch is staged in pinned host memory and copied with non_blocking=True on the
runner's stream; frames can also be uploaded as uint8 [N, R, R, 3] BGR (a quarter of the bytes) and
normalised on the GPU (`encode_uint8`). Fixed shapes: a batch of n is padded to the next bucket
(powers of two up to batch_size), and each bucket's forward pass is captured once in a CUDA graph and
replayed, which removes the per-kernel launch cost of ~150 small kernels per ViT-B forward.

Weights come from the checkpoint the bundle was exported from (sha256-checked against the manifest,
as `--backend torch` does): the bundle's ONNX files are not a safe source (the exporter folds and
renames initializers) and adding a second copy of the weights to every bundle would double its size
for one backend.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from apclip.bundle import Manifest
from apclip.config import Normalization
from apclip.extras import require

from apclip.bundle import TEXT_BATCH
from apclip.engine.runners.encoders import BackendUnavailable, LazyRunner, checked_checkpoint, checkpoint_identity


def weights_source(manifest: Manifest, ckpt: Any) -> str | None:
    """Where this backend would read its weights from, or None when it has none."""
    return f"--ckpt {ckpt}" if ckpt is not None else None


def bucket_for(n: int, batch_size: int) -> int:
    """The fixed batch a group of n inputs is padded to: the next power of two, at most batch_size
    (one captured graph per bucket: log2(batch_size) + 1 graphs, waste below 2x for small groups)."""
    if n < 1 or n > batch_size:
        raise ValueError(f"group of {n} inputs does not fit batch size {batch_size}")
    bucket = 1
    while bucket < n:
        bucket *= 2
    return min(bucket, batch_size)


def plan_batches(n: int, batch_size: int) -> list[tuple[int, int, int]]:
    """(start, stop, padded size) of each batch that covers n inputs; only the last one is padded."""
    return [(start, min(start + batch_size, n), bucket_for(min(batch_size, n - start), batch_size))
            for start in range(0, n, batch_size)]


def torch_dtype(precision: str):
    torch = require("torch", "torch", "the torch-cuda backend")
    from apclip.engine.runners.table import precisions

    if precision not in precisions("torch-cuda"):
        raise BackendUnavailable(f"precision {precision!r}: choose one of {', '.join(precisions('torch-cuda'))}")
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]


def cast_for_inference(clip, precision: str):
    """The CLIP module in `precision`, LayerNorm parameters kept in fp32 (in place; returns it)."""
    from apclip.model import LayerNorm

    clip.to(torch_dtype(precision))
    for module in clip.modules():
        if isinstance(module, LayerNorm):
            module.float()
    return clip.eval()


class GpuNormalize:
    """uint8 BGR [N, R, R, 3] -> float [N, 3, R, R] RGB, (pixel * scale - mean) / std, on the device:
    the same affine as engine.preprocess.normalize, folded into one multiply-add per pixel."""

    def __init__(self, norm: Normalization, device, dtype):
        torch = require("torch", "torch", "the torch-cuda backend")
        mean = np.asarray(norm.mean, dtype=np.float64)
        std = np.asarray(norm.std, dtype=np.float64)
        self.gain = torch.tensor(norm.scale / std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.bias = torch.tensor(-mean / std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.dtype = dtype

    def __call__(self, frames_bgr):
        rgb = frames_bgr.flip(-1).permute(0, 3, 1, 2)  # [N, R, R, 3] BGR -> [N, 3, R, R] RGB
        return (rgb.float() * self.gain + self.bias).to(self.dtype)


class TorchCudaRunner:
    """An EncoderRunner over one embedder module (vision or text) on a device, with CUDA graphs.

    Also runs on CPU (no graphs, no pinned memory): that is how the precision policy and the batching
    are tested without a GPU.
    """

    def __init__(self, module, *, tail: tuple[int, ...], input_dtype, device: str = "cuda",
                 batch_size: int = 32, graphs: bool = True, name: str = "torch-cuda", normalize=None,
                 identity=None):
        torch = require("torch", "torch", "the torch-cuda backend")
        self.torch = torch
        self.module = module.to(device).eval()
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.tail = tuple(tail)
        self.input_dtype = input_dtype
        self.batch_size = batch_size
        self.name = name
        self.cache_identity = identity  # EncoderIdentity: what the label cache keys this runner's rows by
        self.graphs_enabled = graphs and self.cuda
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.normalize = normalize  # GpuNormalize for encode_uint8 (vision only)
        self._graphs: dict[tuple[int, str], tuple[Any, Any, Any]] = {}  # (bucket, kind) -> (graph, in, out)
        self._pool = None  # CUDA graph memory pool shared by the buckets
        self._host: dict[tuple[int, str], Any] = {}  # pinned staging buffers per bucket and input kind
        self._host_free: dict[tuple[int, str], Any] = {}  # event: the last async copy out of that buffer is done

    # -- host side ----------------------------------------------------------------------------------
    def _staging(self, bucket: int, kind: str, dtype, shape: tuple[int, ...]):
        """The pinned buffer of this bucket, once the previous non-blocking copy out of it has finished."""
        key = (bucket, kind)
        done = self._host_free.pop(key, None)
        if done is not None:
            done.synchronize()
        if key not in self._host:
            self._host[key] = self.torch.zeros((bucket, *shape), dtype=dtype, pin_memory=self.cuda)
        return self._host[key]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """[n, *tail] float32 pixels or int64 tokens -> [n, E] float32 normalised embeddings."""
        return self._run(batch, "float", self.input_dtype, self.tail)

    def encode_uint8(self, frames_bgr: np.ndarray) -> np.ndarray:
        """[n, R, R, 3] uint8 BGR crops -> [n, E]: a quarter of the upload, normalised on the device."""
        if self.normalize is None:
            raise BackendUnavailable("encode_uint8 needs a vision runner built with the bundle's normalisation")
        r = self.tail[-1]
        return self._run(frames_bgr, "uint8", self.torch.uint8, (r, r, 3))

    def _run(self, batch: np.ndarray, kind: str, dtype, shape: tuple[int, ...]) -> np.ndarray:
        if len(batch) == 0:
            return np.zeros((0, 0), np.float32)
        out = self._embed(batch, kind, dtype, shape)
        if self.cuda:
            self.stream.synchronize()
        return out.float().cpu().numpy()

    def embed_on_device(self, batch: np.ndarray):
        """Like __call__, but the [n, E] fp32 embeddings stay on the device, ready on the runner's stream
        (DeviceScorer scores them there, so no synchronisation or host round trip comes between)."""
        return self._embed(batch, "float", self.input_dtype, self.tail)

    def _embed(self, batch: np.ndarray, kind: str, dtype, shape: tuple[int, ...]):
        torch = self.torch
        if tuple(batch.shape[1:]) != shape:
            raise ValueError(f"expected inputs [n, {', '.join(map(str, shape))}], got {tuple(batch.shape)}")
        outputs = []
        for start, stop, bucket in plan_batches(len(batch), self.batch_size):
            host = self._staging(bucket, kind, dtype, shape)
            count = stop - start
            host[:count].copy_(torch.from_numpy(np.ascontiguousarray(batch[start:stop])))
            if count < bucket:
                host[count:].copy_(host[:1].expand(bucket - count, *shape))  # real data: no NaN/denormal paths
            outputs.append(self._forward(host, bucket, kind)[:count])
        if not self.cuda:
            return torch.cat(outputs)
        with torch.cuda.stream(self.stream):  # the outputs are written on the runner's stream: join them there
            return torch.cat(outputs)

    # -- device side ---------------------------------------------------------------------------------
    def _eager(self, x, kind: str):
        if kind == "uint8":
            x = self.normalize(x)
        return self.module(x)

    def _forward(self, host, bucket: int, kind: str):
        torch = self.torch
        with torch.inference_mode():
            if not self.cuda:
                return self._eager(host, kind)
            with torch.cuda.stream(self.stream):
                if not self.graphs_enabled:
                    x = host.to(self.device, non_blocking=True)
                    self._mark_host_copied(bucket, kind)
                    return self._eager(x, kind)
                graph, static_in, static_out = self._graph(bucket, kind, host)
                static_in.copy_(host, non_blocking=True)
                self._mark_host_copied(bucket, kind)
                graph.replay()
                return static_out.clone()  # the next replay overwrites static_out

    def _mark_host_copied(self, bucket: int, kind: str) -> None:
        event = self.torch.cuda.Event()
        event.record(self.stream)
        self._host_free[(bucket, kind)] = event

    def _graph(self, bucket: int, kind: str, host):
        key = (bucket, kind)
        if key not in self._graphs:
            torch = self.torch
            static_in = torch.empty_like(host, device=self.device)
            static_in.copy_(host)
            # Warm-up on the runner's stream before capture (cuBLAS / SDPA pick and allocate workspaces).
            for _ in range(2):
                self._eager(static_in, kind)
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            # One memory pool for every bucket's graph: replays run one after another on this stream and
            # each output is cloned before the next replay, so the graphs can reuse each other's memory.
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            with torch.cuda.graph(graph, pool=self._pool, stream=self.stream):
                static_out = self._eager(static_in, kind)
            self._graphs[key] = (graph, static_in, static_out)
        return self._graphs[key]


class DeviceScorer:
    """MAKA on the device: class matrix resident (fp16), the Triton kernel on the runner's stream."""

    def __init__(self, runner: TorchCudaRunner, classes):
        torch = runner.torch
        self.runner = runner
        self.classes = classes
        dtype = torch.float16 if runner.cuda else torch.float32
        self.embeddings = torch.from_numpy(classes.embeddings).to(runner.device, dtype).contiguous()
        self.counts = torch.from_numpy(classes.counts).to(runner.device)

    def __call__(self, frames_on_device):
        """[B, Nv, E] device embeddings -> [B, K] float32 device scores (no host round trip)."""
        from apclip.kernels import maka_score

        torch = self.runner.torch
        video = frames_on_device.to(self.embeddings.dtype)[:, None].contiguous()  # [B, Nv, E] -> [B, 1, Nv, E]
        if not self.runner.cuda:
            return maka_score(video, self.embeddings, self.counts, views="pool", backend="reference").float()
        with torch.cuda.stream(self.runner.stream):
            return maka_score(video, self.embeddings, self.counts, views="pool", backend="auto").float()


def torch_cuda_runners(manifest: Manifest, checkpoint, base: str | None, *, batch_size: int = 32,
                       precision: str = "fp16", device: str | None = None, graphs: bool | None = None):
    """(vision, text) runners of the checkpoint the bundle came from, in fp16 or bf16 on the GPU."""
    torch = require("torch", "torch", "the torch-cuda backend")
    device = device or "cuda"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailable(f"backend torch-cuda needs a CUDA GPU; PyTorch {torch.__version__} sees none "
                                 "(use --backend ort)")
    if graphs is None:
        graphs = os.environ.get("APCLIP_CUDA_GRAPHS", "1") != "0"
    from apclip.model import TextEmbedder
    from apclip.engine.runners.clip_level import clip_batch, frame_interface
    from apclip.engine.runners.encoders import graph_batch_max, vision_module

    dtype = torch_dtype(precision)
    model = cast_for_inference(checked_checkpoint(manifest, checkpoint, base, backend="torch-cuda"), precision)
    config = model.config
    r = config.image_resolution
    graph = manifest.vision_graph
    tail = (graph.frames, 3, r, r) if graph.clip_level else (3, r, r)  # clip-level graphs batch whole clips
    identity = checkpoint_identity(manifest, checkpoint, "torch-cuda", precision)
    vision = TorchCudaRunner(vision_module(manifest, model), tail=tail, input_dtype=torch.float32, device=device,
                             batch_size=graph_batch_max(manifest, "vision", clip_batch(manifest, batch_size)),
                             graphs=graphs,
                             name=f"torch-cuda-{precision}",
                             normalize=GpuNormalize(manifest.preprocessing.normalization, device, dtype),
                             identity=identity)
    text_batch = graph_batch_max(manifest, "text", TEXT_BATCH)
    text = LazyRunner(lambda: TorchCudaRunner(TextEmbedder(model), tail=(config.context_length,),
                                              input_dtype=torch.int64, device=device, batch_size=text_batch,
                                              graphs=graphs, name=vision.name, identity=identity),
                      vision.name, text_batch, identity)
    return frame_interface(manifest, vision), text
