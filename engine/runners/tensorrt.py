"""The `trt` backend: TensorRT 10 engines from the bundle's engines/ folder, as EncoderRunners.

Thin over TensorRT's documented runtime API (samples/python/common_runtime.py in NVIDIA/TensorRT):
    runtime.deserialize_cuda_engine(bytes) -> ICudaEngine (None when the engine does not fit)
    context.set_input_shape(name, shape); context.set_tensor_address(name, ptr)
    context.execute_async_v3(stream)
Device memory and the stream come from torch when it is installed (CUDA tensors), else from
cuda-python (`cuda.bindings.runtime`: cudaMalloc, cudaMemcpyAsync, cudaStreamSynchronize).

An engine is used only when the manifest lists it for this ONNX file, TensorRT version and GPU and
its file matches its sha256 (engine/runners/engine_cache.py); TensorRT's own deserialisation is the last check.
Anything else raises BackendUnavailable saying how to rebuild, so `--backend auto` falls back.
"""
from __future__ import annotations


import numpy as np

from apclip.bundle import EMBEDDINGS_OUTPUT, TEXT_BATCH, TEXT_FILE, TEXT_INPUT, Manifest
from apclip.extras import require

from apclip.engine.runners.encoders import BackendUnavailable, EncoderIdentity, LazyRunner, OrtRunner, file_identity
from apclip.engine.runners.engine_cache import CacheDecision, GpuIdentity, machine_engines

NOT_INSTALLED = "TensorRT is not installed"


def current_gpu() -> GpuIdentity:
    """Name and compute capability of device 0, through torch or cuda.bindings (whichever is present)."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        return GpuIdentity(torch.cuda.get_device_name(0), tuple(torch.cuda.get_device_capability(0)))
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise BackendUnavailable("the TensorRT backend needs torch with CUDA or cuda-python to reach the GPU "
                                 "(pip install \"apclip[trt]\")") from None
    err, props = cudart.cudaGetDeviceProperties(0)
    if int(err) != 0:
        raise BackendUnavailable(f"no CUDA GPU is visible (cudaGetDeviceProperties: error {int(err)})")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return GpuIdentity(name.rstrip("\x00"), (int(props.major), int(props.minor)))


class TorchDeviceMemory:
    """Buffers as CUDA tensors, copies and the stream from torch."""

    def __init__(self):
        import torch

        self.torch = torch
        self.stream = torch.cuda.Stream()
        self.handle = self.stream.cuda_stream

    def empty(self, shape: tuple[int, ...], dtype: np.dtype):
        return self.torch.empty(shape, dtype=_torch_dtype(self.torch, dtype), device="cuda")

    def address(self, buffer) -> int:
        return buffer.data_ptr()

    def upload(self, host: np.ndarray, buffer) -> None:
        with self.torch.cuda.stream(self.stream):
            buffer[:len(host)].copy_(self.torch.from_numpy(np.ascontiguousarray(host)).pin_memory(), non_blocking=True)

    def download(self, buffer, rows: int) -> np.ndarray:
        with self.torch.cuda.stream(self.stream):
            out = buffer[:rows].to("cpu", non_blocking=True)
        self.stream.synchronize()
        return out.numpy()


class CudaBindingsMemory:
    """Buffers from cudaMalloc, copies with cudaMemcpyAsync on one cudaStream (no torch needed)."""

    def __init__(self):
        from cuda.bindings import runtime as cudart

        self.cudart = cudart
        self.handle = _cuda_call(cudart.cudaStreamCreate())
        self._buffers: list[tuple[int, int]] = []

    def empty(self, shape: tuple[int, ...], dtype: np.dtype):
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = _cuda_call(self.cudart.cudaMalloc(nbytes))
        self._buffers.append((ptr, nbytes))
        return _DeviceBuffer(ptr, tuple(shape), np.dtype(dtype))

    def address(self, buffer) -> int:
        return buffer.ptr

    def upload(self, host: np.ndarray, buffer) -> None:
        host = np.ascontiguousarray(host, dtype=buffer.dtype)
        _cuda_call(self.cudart.cudaMemcpyAsync(buffer.ptr, host.ctypes.data, host.nbytes,
                                               self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.handle))
        _cuda_call(self.cudart.cudaStreamSynchronize(self.handle))  # `host` may be freed after return

    def download(self, buffer, rows: int) -> np.ndarray:
        out = np.empty((rows, *buffer.shape[1:]), dtype=buffer.dtype)
        _cuda_call(self.cudart.cudaMemcpyAsync(out.ctypes.data, buffer.ptr, out.nbytes,
                                               self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.handle))
        _cuda_call(self.cudart.cudaStreamSynchronize(self.handle))
        return out

    def __del__(self):
        for ptr, _ in getattr(self, "_buffers", []):
            self.cudart.cudaFree(ptr)


class _DeviceBuffer:
    def __init__(self, ptr: int, shape: tuple[int, ...], dtype: np.dtype):
        self.ptr, self.shape, self.dtype = ptr, shape, dtype


def _cuda_call(result):
    """cuda.bindings returns (error, value...): raise on error, return the value."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendUnavailable(f"CUDA call failed with error {int(err)}")
    return values[0] if len(values) == 1 else (values or None)


def _torch_dtype(torch, dtype: np.dtype):
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
            np.dtype(np.int64): torch.int64, np.dtype(np.int32): torch.int32}[np.dtype(dtype)]


def device_memory():
    try:
        import torch

        if torch.cuda.is_available():
            return TorchDeviceMemory()
    except ImportError:
        pass
    return CudaBindingsMemory()


class TrtRunner:
    """One engine with one input (pixels or tokens) and the `embeddings` output, as an EncoderRunner.

    `engine` is an ICudaEngine (or anything with its tensor-query methods: the tests use a fake);
    `memory` provides empty/address/upload/download and a stream `handle`."""

    def __init__(self, engine, memory, *, name: str = "trt", batch_size: int = 32, identity=None):
        self.engine = engine
        self.cache_identity = identity  # EncoderIdentity of the engine file (the label cache's key)
        self.memory = memory
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if _is_input(engine, n)]
        if len(inputs) != 1 or EMBEDDINGS_OUTPUT not in names:
            raise BackendUnavailable(f"engine has inputs {inputs} and tensors {names}; expected one input and "
                                     f"'{EMBEDDINGS_OUTPUT}': rebuild it with apclip-build-engine")
        self.input_name = inputs[0]
        low, _, high = engine.get_tensor_profile_shape(self.input_name, 0)  # (min, opt, max)
        self.min_batch, self.max_batch = int(low[0]), int(high[0])
        self.tail = tuple(int(d) for d in high[1:])
        self.input_dtype = _np_dtype(engine.get_tensor_dtype(self.input_name))
        self.output_dtype = _np_dtype(engine.get_tensor_dtype(EMBEDDINGS_OUTPUT))
        self.batch_size = max(self.min_batch, min(batch_size, self.max_batch))
        self.name = name
        self._input = memory.empty((self.max_batch, *self.tail), self.input_dtype)
        out_tail = tuple(int(d) for d in engine.get_tensor_shape(EMBEDDINGS_OUTPUT)[1:])
        self._output = memory.empty((self.max_batch, *out_tail), self.output_dtype)
        self.context.set_tensor_address(self.input_name, memory.address(self._input))
        self.context.set_tensor_address(EMBEDDINGS_OUTPUT, memory.address(self._output))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if tuple(batch.shape[1:]) != self.tail:
            raise ValueError(f"engine input {self.input_name} takes [n, {', '.join(map(str, self.tail))}], "
                             f"got {tuple(batch.shape)}")
        outputs = []
        for start in range(0, len(batch), self.max_batch):  # callers send batch_size; never exceed the profile
            part = batch[start:start + self.max_batch].astype(self.input_dtype, copy=False)
            rows = len(part)
            if rows < self.min_batch:  # a profile with min > 1: pad with copies of the first row
                part = np.concatenate([part, np.repeat(part[:1], self.min_batch - rows, axis=0)])
            self.memory.upload(part, self._input)
            if not self.context.set_input_shape(self.input_name, tuple(part.shape)):
                raise BackendUnavailable(f"TensorRT refused input shape {tuple(part.shape)} for {self.input_name}")
            if not self.context.execute_async_v3(self.memory.handle):
                raise BackendUnavailable("TensorRT execute_async_v3 failed (see the TensorRT log above)")
            outputs.append(self.memory.download(self._output, len(part))[:rows])
        return np.concatenate(outputs).astype(np.float32, copy=False) if outputs else np.zeros((0, 0), np.float32)


def _is_input(engine, name: str) -> bool:
    mode = engine.get_tensor_mode(name)
    return getattr(mode, "name", str(mode)).upper().endswith("INPUT")


def _np_dtype(trt_dtype) -> np.dtype:
    label = getattr(trt_dtype, "name", str(trt_dtype)).upper().split(".")[-1]
    table = {"FLOAT": np.float32, "HALF": np.float16, "INT64": np.int64, "INT32": np.int32}
    if label not in table:
        raise BackendUnavailable(f"engine tensor dtype {label} is not supported by this runner")
    return np.dtype(table[label])


def deserialize(trt, path, logger=None):
    """ICudaEngine from `path`, or BackendUnavailable when TensorRT cannot read it (None is its answer)."""
    runtime = trt.Runtime(logger or trt.Logger(trt.Logger.WARNING))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BackendUnavailable(f"engine {path} is unreadable ({exc}); rebuild it with apclip-build-engine") from None
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise BackendUnavailable(f"TensorRT {trt.__version__} cannot deserialise {path} (built by another version "
                                 f"or for another GPU?); rebuild it with apclip-build-engine {path.parent.parent}")
    return engine


def choose_engine(manifest: Manifest, graph: str, tensorrt_version: str, gpu: GpuIdentity,
                  precision: str) -> CacheDecision:
    """The newest listed engine of `graph` built at `precision` for this GPU and TensorRT, or why none fits."""
    usable, refused = machine_engines(manifest, graph, tensorrt_version, gpu, precision)
    if usable:
        return usable[0]
    why = "; ".join(refused) if refused else f"the bundle lists no {graph} {precision} engine"
    raise BackendUnavailable(f"no usable TensorRT {precision} {graph} engine for {gpu.name} ({gpu.sm}) with "
                             f"TensorRT {tensorrt_version}: {why}; build one with apclip-build-engine "
                             f"{manifest.path} --precision {precision}")


# Text engines are built in fp16 only (apclip-build-engine refuses int8 text): an int8 row's labels use it.
TEXT_ENGINE_PRECISION = "fp16"


def trt_runners(manifest: Manifest, *, batch_size: int = 32, precision: str = "fp16"):
    """(vision, text) runners: the vision engine built at `precision` (never another one), and the fp16
    text engine when the bundle has one for this machine, else text.onnx on ONNX Runtime."""
    try:
        trt = require("tensorrt", "trt", "the TensorRT backend")
    except ImportError:
        raise BackendUnavailable(f"{NOT_INSTALLED} (pip install \"apclip[trt]\" on the GPU machine), so bundle "
                                 f"{manifest.path} cannot use --backend trt: use --backend ort or torch-cuda") from None
    gpu = current_gpu()
    vision_path = choose_engine(manifest, "vision", trt.__version__, gpu, precision).path
    vision_engine = deserialize(trt, vision_path)
    memory = device_memory()
    from apclip.engine.runners.clip_level import clip_batch, frame_interface

    vision = TrtRunner(vision_engine, memory, name=f"trt-{precision}", batch_size=clip_batch(manifest, batch_size),
                       identity=engine_identity(manifest, vision_path.name, precision))
    try:
        text_path = choose_engine(manifest, "text", trt.__version__, gpu, TEXT_ENGINE_PRECISION).path
    except BackendUnavailable:
        text_path = None  # new labels are rare: the CPU text encoder serves them
    if text_path is not None:
        text_identity = engine_identity(manifest, text_path.name, TEXT_ENGINE_PRECISION)
    else:
        text_identity = file_identity(manifest, TEXT_FILE, "ort-cpu", "fp32")

    def build_text():
        if text_path is not None:
            return TrtRunner(deserialize(trt, text_path), memory, name=vision.name, batch_size=TEXT_BATCH,
                             identity=text_identity)
        return OrtRunner(manifest.file(TEXT_FILE), TEXT_INPUT, batch_size=TEXT_BATCH, identity=text_identity)

    return frame_interface(manifest, vision), LazyRunner(build_text, vision.name, TEXT_BATCH, text_identity)


def engine_identity(manifest: Manifest, name: str, precision: str) -> EncoderIdentity:
    """The identity of a listed engine (its file hash, checked by the cache before use)."""
    from apclip.engine.runners.engine_cache import ENGINES_DIR, listed_engines

    return EncoderIdentity("tensorrt", precision, f"{ENGINES_DIR}/{name}", str(listed_engines(manifest)[name]["sha256"]))
