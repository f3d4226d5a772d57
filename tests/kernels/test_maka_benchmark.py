"""The kernel benchmark's baselines compute MAKA too (a faster wrong baseline would flatter nothing),
and the GPU scripts say so plainly when there is no GPU."""
from __future__ import annotations

import pytest
import torch

from apclip.benchmarks import kernel, kernel_maka, kernel_maka_check
from apclip.testing.kernel_cases import Case, make_inputs, reference, relative_l2


@pytest.mark.parametrize("views", ["pool", "mean"])
def test_eager_baseline_is_maka(views: str) -> None:
    case = Case(b=3, v=4, t=8, k=7, p=36, e=64, views=views, dtype="float32")
    video, classes, counts = make_inputs(case, 5, "cpu", padding="noise")
    eager = kernel.make_eager_maka(torch, counts, case.p, views)
    assert relative_l2(eager(video, classes), reference(video, classes, counts, views)) <= 1e-6


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed where no GPU exists")
@pytest.mark.parametrize("script", [kernel_maka, kernel_maka_check], ids=lambda m: m.__name__)
def test_gpu_scripts_exit_with_a_message_without_cuda(script, tmp_path, capsys) -> None:
    assert script.main(["--json", str(tmp_path / "out.json")]) == 2
    assert "GPU" in capsys.readouterr().err and not (tmp_path / "out.json").exists()
