"""The backend x precision table: one row per pair, every chooser reads it, `--backend auto` takes the
fastest row that runs here and says why not the others; an impossible pair is one usage error."""
from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("onnxruntime")

from apclip.bundle import read_manifest  # noqa: E402
from apclip.cli_common import UsageError  # noqa: E402
from apclip.engine.runners import probes, table  # noqa: E402
from apclip.engine.runners.encoders import BackendUnavailable  # noqa: E402
from apclip.engine.runners.table import Context, candidates, choose, find  # noqa: E402


class FakeRunner:
    def __init__(self, name):
        self.name = name
        self.batch_size = 32


def test_every_pair_once_and_the_choices_come_from_it():
    keys = [row.key for row in table.rows()]
    assert len(keys) == len(set(keys))
    assert {"ort:fp32", "ort:int8", "ort-cuda:fp32", "torch:fp32", "torch-cuda:fp16", "torch-cuda:bf16",
            "torch-cuda:fp32", "trt:fp16", "trt:int8"} <= set(keys)
    assert table.backend_choices()[0] == "auto" and set(table.backend_choices()[1:]) == {r.name for r in table.rows()}
    assert "bf16" in table.precision_choices()
    assert [r.key for r in table.rows() if r.auto] == ["trt:fp16", "torch-cuda:fp16", "ort-cuda:fp32", "ort:fp32"]
    assert [r.key for r in table.rows() if r.reference] == ["torch:fp32"]
    for row in table.rows():
        assert row.device in ("cpu", "cuda") and row.extra


def test_readers_use_the_table():
    from apclip.bundle import PRECISIONS
    from apclip.engine.cli.infer import build_parser
    from apclip.engine.runners.engine_cache import engine_precisions
    from apclip.benchmarks import contenders

    assert table.precisions("ort") == PRECISIONS  # the ONNX files an export writes are what ort runs
    assert engine_precisions() == table.precisions("trt")
    assert [c.name for c in contenders.encoders()] == [r.key for r in table.rows()]
    actions = {a.dest: a for a in build_parser()._actions}
    assert tuple(actions["backend"].choices) == table.backend_choices()
    assert tuple(actions["precision"].choices) == table.precision_choices()


@pytest.mark.parametrize("backend, precision, expected", [
    ("auto", "auto", ["trt:fp16", "torch-cuda:fp16", "ort-cuda:fp32", "ort:fp32"]),
    ("auto", "fp32", ["torch-cuda:fp32", "ort-cuda:fp32", "ort:fp32", "openvino:fp32"]),  # never the torch reference
    ("auto", "int8", ["trt:int8", "ort:int8", "openvino:int8"]),
    ("torch-cuda", "auto", ["torch-cuda:fp16"]), ("torch-cuda", "fp32", ["torch-cuda:fp32"]),
    ("torch-cuda", "bf16", ["torch-cuda:bf16"]), ("ort", "auto", ["ort:fp32"]), ("trt", "int8", ["trt:int8"]),
])
def test_candidates(backend, precision, expected):
    assert [r.key for r in candidates(backend, precision)] == expected


@pytest.mark.parametrize("backend, precision, match", [
    ("ort", "bf16", "--backend ort has no bf16 precision .*bf16 runs on --backend torch-cuda"),
    ("trt", "fp32", "--backend trt has no fp32"), ("torch", "int8", "int8 runs on --backend trt, --backend ort"),
    ("warp", "auto", "unknown backend 'warp'"), ("ort", "fp8", "unknown precision 'fp8'"),
])
def test_impossible_pairs_are_one_usage_error(backend, precision, match):
    with pytest.raises(UsageError, match=match) as info:
        candidates(backend, precision)
    assert "\n" not in str(info.value)


def test_on_this_cpu_machine_auto_runs_ort_and_says_why_not_the_others(tiny_bundle, monkeypatch):
    monkeypatch.setattr(probes, "nvidia_gpu_may_be_present", lambda root=None: False)
    messages: list[str] = []
    row, (vision, _) = choose("auto", "auto", Context(read_manifest(tiny_bundle), batch_size=8, threads=1),
                              log=messages.append)
    assert row.key == "ort:fp32" and vision.name == "ort-cpu"
    assert messages[0] == "backend auto -> ort-cpu"
    why = messages[1]
    assert why.startswith("backend auto chose ort:fp32: ")
    for skipped in ("trt:fp16: ", "torch-cuda:fp16: no NVIDIA GPU driver found", "ort-cuda:fp32: "):
        assert skipped in why


def _fake_rows(monkeypatch, working, broken=()):
    def fake(row):
        def probe(ctx):
            return None if row.key in working else f"{row.key} missing"

        def build(ctx):
            if row.key in broken:
                raise BackendUnavailable(f"engine of {row.key} was built by TensorRT 10.3.0")
            return FakeRunner(row.key), FakeRunner(row.key)
        return dataclasses.replace(row, probe=probe, build=build)
    monkeypatch.setattr(table, "ROWS", tuple(fake(row) for row in table.ROWS))


@pytest.mark.parametrize("working, expected", [({"trt:fp16", "ort:fp32"}, "trt:fp16"),
                                               ({"torch-cuda:fp16", "ort-cuda:fp32", "ort:fp32"}, "torch-cuda:fp16"),
                                               ({"ort-cuda:fp32", "ort:fp32", "torch-cuda:bf16"}, "ort-cuda:fp32"),
                                               ({"ort:fp32", "trt:int8"}, "ort:fp32")])
def test_first_available_row_wins(tiny_bundle, monkeypatch, working, expected):
    _fake_rows(monkeypatch, working)
    messages: list[str] = []
    row, _ = choose("auto", "auto", Context(read_manifest(tiny_bundle)), log=messages.append)
    assert row.key == expected
    assert messages[-1].startswith(f"backend auto chose {expected}: ")


def test_a_row_that_fails_to_build_falls_back_with_its_reason(tiny_bundle, monkeypatch):
    _fake_rows(monkeypatch, {r.key for r in table.ROWS}, broken={"trt:fp16"})
    messages: list[str] = []
    row, (vision, _) = choose("auto", "auto", Context(read_manifest(tiny_bundle)), log=messages.append)
    assert row.key == "torch-cuda:fp16" and vision.name == "torch-cuda:fp16"
    assert any("TensorRT 10.3.0" in m and "falling back" in m for m in messages)


def test_nothing_available_is_one_error_listing_every_reason(tiny_bundle, monkeypatch):
    _fake_rows(monkeypatch, set())
    with pytest.raises(BackendUnavailable, match="no backend can run here: trt:fp16: trt:fp16 missing; .*ort:fp32"):
        choose("auto", "auto", Context(read_manifest(tiny_bundle)))


def test_probes_report_without_building(tiny_bundle, monkeypatch):
    monkeypatch.setattr(probes, "nvidia_gpu_may_be_present", lambda root=None: False)
    found = {row["backend"] + ":" + row["precision"]: row for row in table.describe(Context(read_manifest(tiny_bundle)))}
    assert [f"{r.name}:{r.precision}" for r in table.rows()] == list(found)
    assert found["ort:fp32"]["available"] and found["ort:fp32"]["file"] == "vision.onnx"
    assert not found["torch-cuda:fp16"]["available"] and not found["trt:fp16"]["available"]
    assert "int8" in found["ort:int8"]["reason"]  # the tiny bundle has no int8 files
    assert "--ckpt" in found["torch:fp32"]["reason"]


def test_torch_cuda_is_an_explicit_backend_choice(tiny_bundle, demo_assets):
    pytest.importorskip("torch")
    import torch

    from apclip.engine import Recognizer

    assert find("torch-cuda", "fp16") is not None
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the CPU refusal cannot be checked")
    with pytest.raises(BackendUnavailable, match="torch-cuda needs a CUDA GPU"):
        Recognizer.from_bundle(tiny_bundle, backend="torch-cuda", ckpt=demo_assets["checkpoint"])


def test_bench_backends_prints_the_table(tiny_bundle, tmp_path, capsys):
    import json

    from apclip.benchmarks import cli

    assert cli.main(["backends", str(tiny_bundle), "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:5] == ["backend", "precision", "device", "extra", "file"]
    for row in table.rows():
        assert any(line.split()[:4] == [row.name, row.precision, row.device, row.extra] for line in out), row.key
    ort = next(line for line in out if line.split()[:2] == ["ort", "fp32"])
    assert "vision.onnx" in ort and "available" in ort and "[auto]" in ort
    data = json.loads((tmp_path / "b.json").read_text())
    assert len(data["rows"]) == len(table.rows()) and {s["scorer"] for s in data["scorers"]} >= {"numpy", "onnx"}
