"""Scorer selection details that need no GPU."""
from __future__ import annotations

import numpy as np

from apclip.class_matrix import ClassMatrix
from apclip.engine.scoring.scorers import AutoTritonScorer, NumpyScorer
from apclip.kernels import KernelInputError
from apclip.scoring import maka_score


class _RefusingKernel:
    name = "triton"
    calls = 0

    def __call__(self, frames, classes):
        self.calls += 1
        raise KernelInputError("more than 256 frames per set")


def test_auto_scorer_falls_back_to_numpy_beyond_kernel_limits():
    rng = np.random.default_rng()
    emb = rng.standard_normal((3, 4, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    classes = ClassMatrix(emb, np.array([4, 2, 3], dtype=np.int32), ["a", "b", "c"], [])
    frames = rng.standard_normal((1, 300, 16)).astype(np.float32)
    frames /= np.linalg.norm(frames, axis=-1, keepdims=True)
    kernel = _RefusingKernel()
    scorer = AutoTritonScorer(kernel)
    got = scorer(frames, classes)
    assert kernel.calls == 1 and scorer.name == "triton"
    np.testing.assert_allclose(got, maka_score(frames.astype(np.float64), emb.astype(np.float64), classes.counts),
                               atol=1e-5)
    np.testing.assert_allclose(got, NumpyScorer()(frames, classes), atol=1e-6)


class _KernelOnGpu:
    """Stands in for TritonScorer on a machine whose GPU torch sees."""

    name = "triton"
    device = "cuda"


def test_auto_scorer_picks_the_kernel_on_jetson(tiny_bundle, monkeypatch):
    """A Jetson has no /dev/nvidiactl, only its L4T release file: --scorer auto used to take numpy there."""
    import os

    from apclip.bundle import read_manifest
    from apclip.engine.scoring import scorers

    jetson_files = {"/etc/nv_tegra_release"}
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda path: str(path) in jetson_files or (
        real_exists(path) and not str(path).startswith(("/dev/", "/proc/", "/etc/"))))
    monkeypatch.setattr(scorers, "importable", lambda module: True)
    monkeypatch.setattr(scorers, "TritonScorer", _KernelOnGpu)
    scorer = scorers.make_scorer("auto", read_manifest(tiny_bundle))
    assert isinstance(scorer, AutoTritonScorer) and scorer.name == "triton"


def test_device_files_of_every_nvidia_machine(tmp_path):
    from apclip.engine.runners.probes import nvidia_gpu_may_be_present

    def machine(name: str, files: dict[str, bytes]) -> str:
        root = tmp_path / name
        for path, content in files.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(content)
        root.mkdir(exist_ok=True)
        return str(root)

    assert not nvidia_gpu_may_be_present(machine("cpu", {"proc/device-tree/compatible": b"raspberrypi,5-model-b\0"}))
    assert nvidia_gpu_may_be_present(machine("desktop", {"dev/nvidiactl": b""}))
    assert nvidia_gpu_may_be_present(machine("xavier", {"dev/nvhost-ctrl-gpu": b""}))
    assert nvidia_gpu_may_be_present(machine("orin-l4t", {"etc/nv_tegra_release": b"# R36 (release), REVISION: 4.0"}))
    assert nvidia_gpu_may_be_present(machine("orin-nodes", {"dev/nvhost-gpu": b""}))
    assert nvidia_gpu_may_be_present(machine("orin-container", {
        "proc/device-tree/compatible": b"nvidia,p3768-0000+p3767-0005\0nvidia,p3767-0005\0nvidia,tegra234\0"}))
