"""A stand-in for the `tensorrt` module that records what the builder and the runner ask of it.

TensorRT cannot be installed here, so the code around its calls is tested against this recording
fake: it implements only the documented TensorRT 10 calls apclip makes, with their names and
argument shapes, and writes "engines" that are the JSON of what was requested. It proves the
calls are made with the right arguments, not that TensorRT accepts them (that needs a GPU).
"""
from __future__ import annotations

import enum
import json
import types

import numpy as np


class _Enum(enum.Enum):
    def __int__(self) -> int:
        return self.value


class NetworkDefinitionCreationFlag(_Enum):
    STRONGLY_TYPED = 5


class MemoryPoolType(_Enum):
    WORKSPACE = 0


class BuilderFlag(_Enum):
    FP16 = 0
    OBEY_PRECISION_CONSTRAINTS = 1


class LayerType(_Enum):
    CONVOLUTION = 0
    NORMALIZATION = 1
    REDUCE = 2
    UNARY = 3
    MATRIX_MULTIPLY = 4


class DataType(_Enum):
    FLOAT = 0
    HALF = 1
    INT64 = 2
    INT32 = 3


class TensorIOMode(_Enum):
    INPUT = 1
    OUTPUT = 2


float32 = DataType.FLOAT
float16 = DataType.HALF


class Logger:
    WARNING = 2

    def __init__(self, severity=None):
        self.severity = severity


class _Layer:
    def __init__(self, type_):
        self.type = type_
        self.precision = None
        self.num_outputs = 1
        self.output_types = {}

    def set_output_type(self, index, dtype):
        self.output_types[index] = dtype


class _Network:
    def __init__(self, flags):
        self.flags = flags
        self.layers = [_Layer(t) for t in (LayerType.CONVOLUTION, LayerType.NORMALIZATION,
                                           LayerType.MATRIX_MULTIPLY, LayerType.REDUCE, LayerType.UNARY)]
        self.parsed = None

    @property
    def num_layers(self):
        return len(self.layers)

    def get_layer(self, i):
        return self.layers[i]


class OnnxParser:
    def __init__(self, network, logger):
        self.network = network
        self.num_errors = 0

    def parse_from_file(self, path):
        self.network.parsed = path
        return True

    def get_error(self, i):
        return "no error"


class _Profile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, low, opt, high):
        self.shapes[name] = (tuple(low), tuple(opt), tuple(high))


class _TimingCache:
    def __init__(self, data: bytes):
        self.data = data

    def serialize(self):
        return self.data + b"+tuned"


class _Config:
    def __init__(self):
        self.flags = []
        self.pools = {}
        self.profiles = []
        self.cache = None

    def set_memory_pool_limit(self, pool, size):
        self.pools[pool] = size

    def set_flag(self, flag):
        self.flags.append(flag)

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)

    def create_timing_cache(self, data):
        return _TimingCache(bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch):
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache


class Builder:
    builds: list[dict] = []  # every build of the session, for assertions

    def __init__(self, logger):
        self.logger = logger

    def create_network(self, flags):
        return _Network(flags)

    def create_builder_config(self):
        return _Config()

    def create_optimization_profile(self):
        return _Profile()

    def build_serialized_network(self, network, config):
        record = {
            "onnx": str(network.parsed),
            "strongly_typed": bool(network.flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED))),
            "flags": [f.name for f in config.flags],
            "workspace": config.pools.get(MemoryPoolType.WORKSPACE),
            "profiles": [{k: [list(s) for s in v] for k, v in p.shapes.items()} for p in config.profiles],
            "timing_cache_in": config.cache.data.decode(errors="replace") if config.cache else None,
            "fp32_layers": [layer.type.name for layer in network.layers if layer.precision == float32],
        }
        Builder.builds.append(record)
        return json.dumps(record).encode()


def module(version: str = "10.9.0.34") -> types.ModuleType:
    fake = types.ModuleType("tensorrt")
    for name, value in dict(globals()).items():
        if not name.startswith("_") and name not in ("module", "enum", "json", "types", "np"):
            setattr(fake, name, value)
    fake.__version__ = version
    return fake


class FakeEngine:
    """An ICudaEngine's tensor queries for one input and `embeddings`, computing embeddings as the
    first E input values of each row (so the runner's slicing and order are checkable)."""

    def __init__(self, input_name="pixels", tail=(3, 4, 4), profile=(1, 8, 16), embed=5,
                 input_dtype=DataType.FLOAT):
        self.input_name, self.tail, self.profile, self.embed = input_name, tail, profile, embed
        self.input_dtype = input_dtype
        self.num_io_tensors = 2
        self.contexts = []

    def get_tensor_name(self, i):
        return [self.input_name, "embeddings"][i]

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if name == self.input_name else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return self.input_dtype if name == self.input_name else DataType.FLOAT

    def get_tensor_shape(self, name):
        return (-1, *self.tail) if name == self.input_name else (-1, self.embed)

    def get_tensor_profile_shape(self, name, index):
        return [(batch, *self.tail) for batch in self.profile]

    def create_execution_context(self):
        context = FakeContext(self)
        self.contexts.append(context)
        return context


class FakeContext:
    def __init__(self, engine):
        self.engine = engine
        self.addresses, self.shapes, self.executions = {}, [], 0
        self.memory = None  # set by the test: the FakeMemory whose buffers the addresses name

    def set_tensor_address(self, name, address):
        self.addresses[name] = address
        return True

    def set_input_shape(self, name, shape):
        low, high = self.engine.profile[0], self.engine.profile[2]
        self.shapes.append(tuple(shape))
        return low <= shape[0] <= high

    def execute_async_v3(self, stream):
        self.executions += 1
        rows = self.shapes[-1][0]
        src = self.memory.buffers[self.addresses[self.engine.input_name]]
        dst = self.memory.buffers[self.addresses["embeddings"]]
        dst[:rows] = src[:rows].reshape(rows, -1)[:, :self.engine.embed]
        return True


class FakeMemory:
    """Device memory as numpy arrays, addressed by small integers."""

    def __init__(self):
        self.buffers: dict[int, np.ndarray] = {}
        self.handle = 7

    def empty(self, shape, dtype):
        address = len(self.buffers) + 1
        self.buffers[address] = np.full(shape, np.nan if np.dtype(dtype).kind == "f" else -1, dtype=dtype)
        return address

    def address(self, buffer):
        return buffer

    def upload(self, host, buffer):
        self.buffers[buffer][:len(host)] = host

    def download(self, buffer, rows):
        return self.buffers[buffer][:rows].copy()
