"""The kernel compiles for real GPUs here, without one: Triton's ahead-of-time path lowers it for sm_80 /
sm_89 / sm_90 and runs the ptxas bundled in the triton wheel. That catches what the interpreter cannot:
dot operand shapes, layouts of the reshapes, shared memory, register spills, tensor-core use.

The compile runs in a subprocess because this session's triton is set up for the interpreter.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")
NVIDIA_TOOLS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")

CONFIGS = [
    ((9, 0), (1, 4, 8, 600, 36, 512), "pool", "float16"),  # B = 1: many small programs, bandwidth bound
    ((9, 0), (256, 4, 8, 600, 36, 512), "mean", "float16"),  # large batch: 7 classes per 256-row tile
    ((8, 0), (64, 3, 8, 400, 36, 512), "pool", "float16"),  # 24 frames per video, padded to 32
    ((8, 9), (3, 1, 3, 37, 1, 16), "mean", "float16"),  # the smallest tiles
    ((9, 0), (8, 4, 8, 400, 36, 512), "pool", "float32"),  # fp32 inputs: "ieee" dots
]


@pytest.fixture(scope="module")
def compiled() -> list[dict]:
    code = ("import json, sys\n"
            "from apclip.testing.kernel_cases import compile_ahead_of_time\n"
            f"print(json.dumps([compile_ahead_of_time(*config) for config in {CONFIGS!r}]))\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.exists(NVIDIA_TOOLS), reason="this triton wheel has no NVIDIA tools")
@pytest.mark.parametrize("index", range(len(CONFIGS)), ids=lambda i: "-".join(map(str, CONFIGS[i])))
def test_table_launches_compile_without_spills(compiled: list[dict], index: int) -> None:
    result = compiled[index]
    assert result["spill_bytes"] == 0, result
    assert result["shared_bytes"] > 0, result
    if result["dtype"] == "float16":
        assert result["tensor_cores"], result
