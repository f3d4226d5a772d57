"""The GPU check's verdict (benchmarks/check_summary.py) on canned results: a skipped check is SKIP,
never a pass; "plugin ok" only when the plugin's parity ran and passed."""
from __future__ import annotations

import pytest

from apclip.benchmarks.check_summary import StepResult, check_exit_code, main, plugin_verdict, summarize


def _run(*codes: tuple[str, int]) -> tuple[list[str], int]:
    return summarize([StepResult(name, code, 1.0) for name, code in codes])


def test_all_passed_is_the_only_pass():
    lines, code = _run(("nvidia-smi", 0), ("kernel_check", 0), ("gpu_backends", 0), ("parity", 0))
    assert code == 0 and lines[-1] == "RESULT: PASS" and "3 passed, 0 failed, 0 skipped" in lines[-2]


@pytest.mark.parametrize("skip_code", [2, 3])
def test_a_skipped_check_is_reported_skip_and_not_counted_as_passed(skip_code):
    lines, code = _run(("nvidia-smi", 0), ("kernel_check", 0), ("gpu_backends", skip_code), ("parity", 0))
    assert code == 2 and lines[-1].startswith("RESULT: INCOMPLETE")
    assert lines[2].startswith("gpu_backends: SKIP")
    assert "2 passed, 0 failed, 1 skipped (skipped: gpu_backends)" in lines[-2]


def test_a_failure_or_timeout_fails_the_run_whatever_else_passed():
    lines, code = _run(("kernel_check", 0), ("gpu_backends", 2), ("parity", 1), ("latency", 124))
    assert code == 1 and lines[-1] == "RESULT: FAIL"
    assert "parity: FAIL" in lines[2] and "latency: TIMEOUT" in lines[3]
    assert "(failed: parity, latency)" in lines[-2]


def test_an_informational_step_does_not_decide():
    assert _run(("nvidia-smi", 2), ("kernel_check", 0))[1] == 0  # a Jetson has no nvidia-smi
    assert _run(("nvidia-smi", 0))[1] == 2  # nothing was checked: not a pass


def test_plugin_ok_only_when_its_parity_passed():
    skipped = [{"skipped": "cuda-python is not installed"}]
    assert plugin_verdict(skipped) == "SKIP" and plugin_verdict([]) == "SKIP"
    assert plugin_verdict([{"passed": True, "rel_l2": 1e-4}, {"passed": True}]) == "PASS"
    assert plugin_verdict([{"passed": True}, {"passed": False, "rel_l2": 0.3}]) == "FAIL"
    assert plugin_verdict([{"passed": True}, {"rel_l2": 0.3}]) == "FAIL"  # no verdict is not a pass
    # gpu_backends_check's exit code from its verdicts
    assert check_exit_code(["PASS", "PASS"]) == 0
    assert check_exit_code(["PASS", plugin_verdict(skipped)]) == 3
    assert check_exit_code(["FAIL", "SKIP"]) == 1 and check_exit_code(["SKIP"]) == 2


def test_the_script_reads_its_step_file(tmp_path, capsys):
    steps = tmp_path / "steps.tsv"
    steps.write_text("nvidia-smi\t0\t1\nkernel_check\t0\t30\ngpu_backends\t3\t80\n", encoding="utf-8")
    assert main([str(steps)]) == 2
    out = capsys.readouterr().out
    assert "gpu_backends: SKIP (partly: what ran passed) in 80 s" in out and "RESULT: INCOMPLETE" in out
