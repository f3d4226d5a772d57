"""apclip.kernels.maka_score: backend choice, fallback warnings, and one-line input errors."""
from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import apclip.kernels as kernels
from apclip.testing.kernel_cases import Case, make_inputs, reference, relative_l2
from apclip.errors import ApclipError, MissingExtraError
from apclip.kernels import KernelInputError, KernelUnavailableError, maka_score

CASE = Case(b=2, v=2, t=3, k=5, p=12, e=32, views="pool", dtype="float32")


@pytest.fixture
def inputs(device: str):
    return make_inputs(CASE, 7, device)


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "_warned_fallbacks", set())


@pytest.mark.parametrize("views", ["pool", "mean"])
def test_triton_backend_matches_reference_backend(inputs, views: str) -> None:
    video, classes, counts = inputs
    fused = maka_score(video, classes, counts, views=views, backend="triton")
    ref = maka_score(video, classes, counts, views=views, backend="reference")
    assert fused.dtype == torch.float32
    assert relative_l2(fused, reference(video, classes, counts, views)) <= 1e-5
    torch.testing.assert_close(fused, ref, rtol=0, atol=1e-5)


def test_auto_on_cpu_falls_back_to_reference_and_says_so_once(fresh_warnings) -> None:
    video, classes, counts = make_inputs(CASE, 8, "cpu")
    with pytest.warns(RuntimeWarning, match="needs CUDA tensors"):
        first = maka_score(video, classes, counts, backend="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise here
        second = maka_score(video, classes, counts, backend="auto")
    torch.testing.assert_close(first, reference(video, classes, counts, "pool").float(), rtol=0, atol=1e-6)
    assert torch.equal(first, second)


def test_auto_on_numpy_uses_the_numpy_reference(fresh_warnings) -> None:
    video, classes, counts = (x.numpy() for x in make_inputs(CASE, 9, "cpu"))
    with pytest.warns(RuntimeWarning, match="torch tensors"):
        scores = maka_score(video, classes, counts, views="mean")
    assert isinstance(scores, np.ndarray) and scores.shape == (2, 5)
    expected = reference(*(torch.from_numpy(x) for x in (video, classes, counts)), "mean").numpy()
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="auto picks the kernel only for CUDA tensors")
def test_auto_on_cuda_runs_the_kernel_without_warning(fresh_warnings) -> None:
    video, classes, counts = make_inputs(CASE, 10, "cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = maka_score(video, classes, counts, backend="auto")
    assert scores.device.type == "cuda" and relative_l2(scores, reference(video, classes, counts, "pool")) <= 1e-5


def test_forced_triton_on_cpu_without_interpreter_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import apclip.kernels.maka as maka

    monkeypatch.setattr(maka, "is_interpreted", lambda: False)
    video, classes, counts = make_inputs(CASE, 11, "cpu")
    with pytest.raises(KernelUnavailableError, match="TRITON_INTERPRET=1"):
        maka_score(video, classes, counts, backend="triton")


def test_forced_triton_without_triton_names_the_extra(monkeypatch: pytest.MonkeyPatch, inputs) -> None:
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` fail
    with pytest.raises(MissingExtraError, match=r'-e "\.\[triton\]"'):
        maka_score(*inputs, backend="triton")


def _bad_inputs(device: str) -> dict[str, tuple]:
    video, classes, counts = make_inputs(CASE, 12, device)
    return {
        "bf16 video": ((video.bfloat16(), classes.bfloat16(), counts), {}, "cast with"),
        "mixed dtypes": ((video.half(), classes, counts), {}, "cast both to one dtype"),
        "float64": ((video.double(), classes.double(), counts), {}, "float64"),
        "3-d video": ((video[:, 0], classes, counts), {}, r"\[B, V, T, E\]"),
        "E mismatch": ((video, classes[..., :16].contiguous(), counts), {}, "E=32"),
        "strided classes": ((video, classes.transpose(0, 1).contiguous().transpose(0, 1), counts), {},
                            "contiguous"),
        "zero count": ((video, classes, torch.zeros_like(counts)), {}, r"\[1, P=12\]"),
        "count above P": ((video, classes, counts + 12), {}, r"\[1, P=12\]"),
        "counts shape": ((video, classes, counts[:3]), {}, r"shape \[5\]"),
        "float counts": ((video, classes, counts.float()), {}, "integers"),
        "views": ((video, classes, counts), {"views": "max"}, "views must be one of"),
        "backend": ((video, classes, counts), {"backend": "cuda"}, "backend must be one of"),
    }


@pytest.mark.parametrize("name", list(_bad_inputs("cpu")))
def test_bad_input_is_a_one_line_error_naming_the_fix(name: str, device: str) -> None:
    args, kwargs, message = _bad_inputs(device)[name]
    with pytest.raises(KernelInputError, match=message) as caught:
        maka_score(*args, **{"backend": "triton", **kwargs})
    assert isinstance(caught.value, ApclipError) and "\n" not in str(caught.value)


def test_out_buffer_must_match(inputs) -> None:
    from apclip.kernels.maka import maka_score_triton

    video, classes, counts = inputs
    with pytest.raises(KernelInputError, match=r"float32 \[2, 5\]"):
        maka_score_triton(video, classes, counts, out=torch.empty(2, 6, device=video.device))


def test_import_needs_neither_torch_nor_triton() -> None:
    # The engine runtime imports apclip.kernels; with numpy inputs it must even score without torch.
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['triton'] = None\n"
        "import warnings, numpy as np, apclip.kernels as k\n"
        "v = np.random.default_rng(0).normal(size=(1, 2, 3, 16)); v /= np.linalg.norm(v, axis=-1, keepdims=True)\n"
        "c = np.random.default_rng(1).normal(size=(4, 5, 16)); c /= np.linalg.norm(c, axis=-1, keepdims=True)\n"
        "warnings.simplefilter('ignore')\n"
        "print(k.maka_score(v, c, [5, 4, 3, 1]).shape)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 4)"
