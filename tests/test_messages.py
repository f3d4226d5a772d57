"""Messages that used to mislead: each says what the input is and what to do."""
from __future__ import annotations

import json
import sys

import pytest

from infer_cli_helpers import run


def test_bundle_given_a_file_or_the_manifest_says_what_it_is(capsys, tmp_path, tiny_bundle):
    from apclip.engine.cli.bundle import main

    notes = tmp_path / "notes.txt"
    notes.write_text("x", encoding="utf-8")
    assert main(["info", str(notes)]) == 1
    line = capsys.readouterr().err.strip()
    assert "is a file, not a bundle folder" in line and "does not exist" not in line
    assert main(["info", str(tiny_bundle / "manifest.json")]) == 1
    line = capsys.readouterr().err.strip()
    assert "manifest file" in line and f"--bundle {tiny_bundle}" in line and "does not exist" not in line


def test_a_prompt_bank_as_labels_points_to_prompts(tmp_path):
    from apclip.labels import LabelsError, read_labels

    bank = tmp_path / "bank.json"
    bank.write_text(json.dumps({"format": "apclip-prompt-bank", "classes": {"waving": ["a person waving"]}},
                               indent=1), encoding="utf-8")
    with pytest.raises(LabelsError) as info:
        read_labels(bank)
    assert "prompt bank" in str(info.value) and "--prompts" in str(info.value) and "twice" not in str(info.value)


def test_trt_on_a_machine_without_a_gpu_says_there_is_none(tiny_bundle, monkeypatch):
    from apclip.bundle import read_manifest
    from apclip.engine.runners import probes
    from apclip.engine.runners.encoders import BackendUnavailable
    from apclip.engine.runners.tensorrt import trt_runners

    monkeypatch.setattr(probes, "nvidia_gpu_may_be_present", lambda root=None: False)
    with pytest.raises(BackendUnavailable) as info:
        trt_runners(read_manifest(tiny_bundle))
    assert "this machine has none" in str(info.value) and "torch-cuda" not in str(info.value)


def test_ckpt_without_a_torch_backend_is_said_to_be_unused(capsys, tiny_bundle, demo_assets):
    code, _, err = run(capsys, demo_assets["video"], "--bundle", tiny_bundle, "--ckpt", demo_assets["checkpoint"],
                       "--backend", "ort")
    assert code == 0
    assert f"--ckpt {demo_assets['checkpoint']} is not used: backend ort-cpu" in err


def test_cpu_run_names_its_backend_in_one_line_and_verbose_says_why(capsys, tiny_bundle, demo_assets, monkeypatch):
    from apclip.engine.runners import probes

    monkeypatch.setattr(probes, "nvidia_gpu_may_be_present", lambda root=None: False)
    code, _, err = run(capsys, demo_assets["video"], "--bundle", tiny_bundle)
    assert code == 0
    assert len([line for line in err.splitlines() if "backend auto" in line]) == 1
    assert "TensorRT" not in err and "install" not in err, err
    code, _, err = run(capsys, demo_assets["video"], "--bundle", tiny_bundle, "--verbose")
    assert code == 0 and "passed over trt:" in err


def test_verify_names_the_checks_it_skipped(capsys, tiny_bundle, monkeypatch):
    from apclip.engine.cli.bundle import main

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails: ONNX loads are skipped
    assert main(["verify", str(tiny_bundle)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "NOT checked: " in last and "vision.onnx loads" in last and "onnxruntime not installed" in last
    assert not last.endswith(": ok")


def test_progress_bars_only_on_a_terminal(capsys, tiny_bundle, demo_assets, tmp_path):
    from apclip.export.cli import build_parser as export_parser
    from apclip.train.cli import build_parser as train_parser
    from apclip.train.eval_cli import build_parser as eval_parser
    from apclip.train.eval_cli import main as eval_main

    assert export_parser().parse_args(["--ckpt", "x"]).progress is None
    assert train_parser().parse_args(["--output", "x"]).progress is None
    video = demo_assets["video"]
    listing = tmp_path / "test.txt"
    listing.write_text(f"{video.name} 0\n", encoding="utf-8")
    assert eval_parser().parse_args(["--list", "l", "--labels", "l"]).progress is None
    code = eval_main(["--bundle", str(tiny_bundle), "--list", str(listing), "--root", str(video.parent),
                      "--labels", str(demo_assets["labels"])])
    err = capsys.readouterr().err
    assert code == 0 and "evaluating" not in err and "\r" not in err  # stderr is not a terminal here
