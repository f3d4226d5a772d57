"""config.pbtxt text for Triton Inference Server models (the protobuf text format of ModelConfig).

Written by hand rather than through tritonclient's protos so that writing a repository needs no
extra package; the tests parse every file with tritonclient's model_config_pb2 and load what the
available server can run.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Sequence


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # TYPE_FP32, TYPE_UINT8, TYPE_STRING, ...
    dims: Sequence[int]
    optional: bool = False
    allow_ragged_batch: bool = False

    def pbtxt(self) -> str:
        extra = (" optional: true" if self.optional else "") + \
                (" allow_ragged_batch: true" if self.allow_ragged_batch else "")
        return f'{{ name: "{self.name}" data_type: {self.data_type} dims: [ {", ".join(map(str, self.dims))} ]{extra} }}'


@dataclass(frozen=True)
class Step:
    """One ensemble step: model, {its input: ensemble tensor}, {its output: ensemble tensor}."""

    model: str
    inputs: dict[str, str]
    outputs: dict[str, str]

    def pbtxt(self) -> str:
        maps = [f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in self.inputs.items()]
        maps += [f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in self.outputs.items()]
        return f'    {{ model_name: "{self.model}" model_version: -1\n      ' + "\n      ".join(maps) + " }"


@dataclass
class ModelConfig:
    name: str
    inputs: list[Tensor]
    outputs: list[Tensor]
    max_batch_size: int = 0
    platform: str | None = None  # onnxruntime_onnx | tensorrt_plan | ensemble
    backend: str | None = None  # python
    instance_kind: str | None = "KIND_CPU"  # KIND_CPU | KIND_GPU | None (ensembles have no instances)
    instances: int = 1
    dynamic_batching: bool = False
    max_queue_delay_us: int = 0
    preferred_batch_sizes: Sequence[int] = ()
    steps: list[Step] = field(default_factory=list)
    parameters: dict[str, str] = field(default_factory=dict)

    def pbtxt(self) -> str:
        lines = [f'name: "{self.name}"']
        if self.platform:
            lines.append(f'platform: "{self.platform}"')
        if self.backend:
            lines.append(f'backend: "{self.backend}"')
        lines.append(f"max_batch_size: {self.max_batch_size}")
        lines.append("input [\n  " + ",\n  ".join(t.pbtxt() for t in self.inputs) + "\n]")
        lines.append("output [\n  " + ",\n  ".join(t.pbtxt() for t in self.outputs) + "\n]")
        if self.dynamic_batching:
            preferred = (f" preferred_batch_size: [ {', '.join(map(str, self.preferred_batch_sizes))} ]"
                         if self.preferred_batch_sizes else "")
            lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {self.max_queue_delay_us}{preferred} }}")
        if self.instance_kind:
            lines.append(f"instance_group [ {{ kind: {self.instance_kind} count: {self.instances} }} ]")
        if self.steps:
            lines.append("ensemble_scheduling {\n  step [\n" + ",\n".join(s.pbtxt() for s in self.steps) + "\n  ]\n}")
        for key, value in self.parameters.items():
            # json.dumps gives a string literal the text format reads back (escapes included).
            lines.append(f"parameters {{ key: {json.dumps(key, ensure_ascii=False)} value: {{ string_value: {json.dumps(value, ensure_ascii=False)} }} }}")
        return "\n".join(lines) + "\n"
