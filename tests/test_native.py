"""The native runtime builds, its ctest programs pass, the C example of docs/native.md compiles and runs,
and bad input gets one line and an error code, never a crash (the parity tests are in test_native_parity.py)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from native_helpers import CLI, HEADER, LIBRARY, ROOT, run_cli, write_lossless_video


def test_cmake_builds_the_library_header_and_cli_and_ctest_passes(native_build):
    assert (native_build / LIBRARY).is_file() and (native_build / CLI).is_file() and HEADER.is_file()
    exported = subprocess.run(["nm", "-D", "--defined-only", str(native_build / LIBRARY)], capture_output=True,
                              text=True).stdout if shutil.which("nm") else ""
    if exported:  # the C API and nothing of the internal C++ API
        assert " T apclip_open" in exported and " T apclip_last_error" in exported
        assert "Recognizer" not in exported and "open_bundle" not in exported
    done = subprocess.run(["ctest", "--test-dir", str(native_build), "--output-on-failure"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "100% tests passed" in done.stdout
    assert len(re.findall(r"Test +#\d+: \w+ \.+ +Passed", done.stdout)) >= 5


@pytest.fixture(scope="module")
def example_program(native_build, tmp_path_factory) -> Path:
    """docs/native.md's C example, compiled against the built library and the header."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (cc) to build the docs example")
    text = (ROOT / "docs" / "native.md").read_text(encoding="utf-8")
    programs = [block for block in re.findall(r"```c\n(.*?)```", text, flags=re.S) if "int main" in block]
    assert len(programs) == 1, "docs/native.md should hold exactly one C example program"
    assert len(programs[0].strip().splitlines()) <= 25  # the page promises a short example
    folder = tmp_path_factory.mktemp("example")
    source = folder / "example.c"
    source.write_text(programs[0], encoding="utf-8")
    binary = folder / "example"
    done = subprocess.run([compiler, "-std=c99", "-Wall", "-Werror", str(source), f"-I{HEADER.parent}",
                           f"-L{native_build}", "-lapclip_runtime", f"-Wl,-rpath,{native_build}", "-o", str(binary)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return binary


@pytest.fixture(scope="module")
def clean_video(tmp_path_factory) -> Path:
    return write_lossless_video(tmp_path_factory.mktemp("native_video") / "clip.avi", frames=21, size=(75, 41))


def test_docs_example_program_prints_the_cli_top5(example_program, native_build, tiny_bundle, clean_video):
    done = subprocess.run([str(example_program), str(tiny_bundle), str(clean_video)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [line.split(" ", 1)[1].rsplit(" ", 1) for line in done.stdout.splitlines()]
    cli = run_cli(native_build, tiny_bundle, clean_video, "--json", "-")
    record = json.loads(cli.stdout)
    assert [label for label, _ in rows] == [t["label"] for t in record["top"]]
    assert [float(score) for _, score in rows] == pytest.approx([t["score"] for t in record["top"]], abs=2e-6)


def _tampered(bundle: Path, folder: Path) -> Path:
    copy = folder / "tampered"
    shutil.copytree(bundle, copy)
    data = bytearray((copy / "vision.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the weights
    (copy / "vision.onnx").write_bytes(bytes(data))
    return copy


def test_tampered_bundle_is_refused_in_one_line(native_build, example_program, tiny_bundle, clean_video, tmp_path):
    bundle = _tampered(tiny_bundle, tmp_path)
    out = tmp_path / "out.jsonl"
    cli = run_cli(native_build, bundle, clean_video, "--json", out)
    assert cli.returncode == 1 and cli.stdout == ""
    assert len(cli.stderr.strip().splitlines()) == 1
    assert "vision.onnx does not match its sha256" in cli.stderr and "re-run apclip-export" in cli.stderr
    assert not out.exists() and not Path(f"{out}.partial").exists()
    c = subprocess.run([str(example_program), str(bundle), str(clean_video)], capture_output=True, text=True, timeout=60)
    assert c.returncode == 2  # APCLIP_ERROR_BUNDLE
    assert c.stderr.startswith("error 2: ") and "does not match its sha256" in c.stderr


def test_unreadable_videos_are_reported_and_skipped_like_apclip_infer(native_build, example_program, tiny_bundle,
                                                                      clean_video, tmp_path, capsys):
    from infer_cli_helpers import read_jsonl, run

    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 100)
    missing = tmp_path / "missing.mp4"
    sources = [garbage, clean_video, missing]
    native_json, python_json = tmp_path / "native.jsonl", tmp_path / "python.jsonl"
    cli = run_cli(native_build, tiny_bundle, *sources, "--json", native_json)
    code, _, err = run(capsys, *sources, "--bundle", tiny_bundle, "--json", python_json, "--backend", "ort",
                       "--no-cache")
    assert (cli.returncode, code) == (1, 1)  # skipped sources make both exit 1
    skipped = [line for line in cli.stderr.splitlines() if line.startswith("apclip-infer-native: skipped")]
    assert len(skipped) == 2 and str(garbage) in skipped[0] and str(missing) in skipped[1]
    assert [r["source"] for r in read_jsonl(native_json)] == [r["source"] for r in read_jsonl(python_json)] \
        == [str(clean_video)]
    c = subprocess.run([str(example_program), str(tiny_bundle), str(garbage)], capture_output=True, text=True, timeout=60)
    assert c.returncode == 3 and str(garbage) in c.stderr  # APCLIP_ERROR_SOURCE


def test_cli_usage_errors_exit_2_with_one_message(native_build, tiny_bundle):
    for args in ([tiny_bundle], [tiny_bundle, "x.mp4", "--topk", "0"], [tiny_bundle, "x.mp4", "--frobnicate"]):
        done = run_cli(native_build, *args)
        assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("apclip-infer-native: error:")
