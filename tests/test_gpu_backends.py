"""`--backend auto`: trt > torch-cuda > ort-cuda > ort by availability, saying what it chose and why."""
from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime")

from apclip.bundle import read_manifest  # noqa: E402
from apclip.engine.runners import gpu_backends  # noqa: E402
from apclip.engine.runners.gpu_backends import AUTO_ORDER, Availability, auto_runners, availability  # noqa: E402
from apclip.engine.runners.encoders import BackendUnavailable  # noqa: E402


class FakeRunner:
    def __init__(self, name):
        self.name = name
        self.batch_size = 32


def test_order_is_fastest_first():
    assert AUTO_ORDER == ("trt", "torch-cuda", "ort-cuda", "ort")
    assert set(AUTO_ORDER) <= set(gpu_backends.PROBES) and set(AUTO_ORDER) <= set(gpu_backends.CONSTRUCTORS)


def test_on_this_cpu_machine_auto_runs_ort_and_says_why_not_the_others(tiny_bundle, monkeypatch):
    monkeypatch.setattr(gpu_backends, "cuda_may_be_present", lambda: False)
    messages: list[str] = []
    details: list[str] = []
    vision, _, chosen = auto_runners(read_manifest(tiny_bundle), log=messages.append, detail=details.append,
                                     batch_size=8, threads=1)
    assert chosen == "ort" and vision.name == "ort-cpu"
    # One line names the backend; the reasons for passing over the others only go to `detail` (--verbose).
    assert len(messages) == 1 and messages[0].startswith("backend auto chose ort (ort-cpu): "), messages
    assert "--verbose" in messages[0] and "TensorRT" not in messages[0]
    why = details[-1]
    for skipped in ("trt: TensorRT is not installed" if not gpu_backends._importable("tensorrt") else "trt: ",
                    "torch-cuda: no NVIDIA driver found", "ort-cuda: "):
        assert skipped in why


@pytest.mark.parametrize("working, expected", [(set(AUTO_ORDER), "trt"), ({"torch-cuda", "ort-cuda", "ort"}, "torch-cuda"),
                                               ({"ort-cuda", "ort"}, "ort-cuda"), ({"ort"}, "ort")])
def test_first_available_backend_wins(tiny_bundle, monkeypatch, working, expected):
    for name in AUTO_ORDER:
        monkeypatch.setitem(gpu_backends.PROBES, name,
                            lambda manifest, ckpt, name=name: Availability(name, name in working, f"{name} probed"))
        monkeypatch.setitem(gpu_backends.CONSTRUCTORS, name,
                            lambda manifest, name=name, **options: (FakeRunner(name), FakeRunner(name)))
    messages: list[str] = []
    _, _, chosen = auto_runners(read_manifest(tiny_bundle), log=messages.append)
    assert chosen == expected
    assert f"backend auto chose {expected} ({expected}): {expected} probed" in messages[-1]


def test_a_backend_that_fails_to_build_falls_back_with_its_reason(tiny_bundle, monkeypatch):
    def broken(manifest, **options):
        raise BackendUnavailable("engine vision-fp16-sm90 was built by TensorRT 10.3.0")

    for name in AUTO_ORDER:
        monkeypatch.setitem(gpu_backends.PROBES, name, lambda manifest, ckpt, name=name: Availability(name, True, "ok"))
    monkeypatch.setitem(gpu_backends.CONSTRUCTORS, "trt", broken)
    monkeypatch.setitem(gpu_backends.CONSTRUCTORS, "torch-cuda",
                        lambda manifest, **options: (FakeRunner("torch-cuda-fp16"), FakeRunner("torch-cuda-fp16")))
    messages: list[str] = []
    vision, _, chosen = auto_runners(read_manifest(tiny_bundle), log=messages.append, detail=messages.append)
    assert chosen == "torch-cuda" and vision.name == "torch-cuda-fp16"
    assert any("TensorRT 10.3.0" in m and "falling back" in m for m in messages)


def test_nothing_available_is_one_error_listing_every_reason(tiny_bundle, monkeypatch):
    for name in AUTO_ORDER:
        monkeypatch.setitem(gpu_backends.PROBES, name,
                            lambda manifest, ckpt, name=name: Availability(name, False, f"no {name} here"))
    with pytest.raises(BackendUnavailable, match="no backend can run here: trt: no trt here; .*ort: no ort here"):
        auto_runners(read_manifest(tiny_bundle), log=lambda m: None)


def test_probes_report_without_building(tiny_bundle, monkeypatch):
    monkeypatch.setattr(gpu_backends, "cuda_may_be_present", lambda: False)
    found = {a.backend: a for a in availability(read_manifest(tiny_bundle))}
    assert list(found) == list(AUTO_ORDER)
    assert found["ort"].ok and not found["torch-cuda"].ok
    assert not found["trt"].ok  # no engines in the bundle, or no tensorrt


def test_torch_cuda_is_an_explicit_backend_choice(tiny_bundle, demo_assets):
    pytest.importorskip("torch")
    import torch

    from apclip.engine import Recognizer
    from apclip.engine.runners.encoders import BACKENDS

    assert "torch-cuda" in BACKENDS
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the CPU refusal cannot be checked")
    with pytest.raises(BackendUnavailable, match="torch-cuda needs a CUDA GPU"):
        Recognizer.from_bundle(tiny_bundle, backend="torch-cuda", ckpt=demo_assets["checkpoint"])
