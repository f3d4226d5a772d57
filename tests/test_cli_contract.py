"""One contract for every console script, checked on the installed scripts themselves (.venv/bin),
for every entry point pyproject.toml declares: --help, --version, a usage error exits 2 with
`PROG: error: ...`, a missing optional package exits 2 naming the extra and the install command, a
failure exits 1 with one line, Ctrl-C exits 130, and no traceback without --debug."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from apclip import __version__

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
BIN = Path(sys.executable).parent

# Injected through PYTHONPATH into the script's interpreter: APCLIP_TEST_BLOCK makes modules unimportable
# (a machine without that extra); APCLIP_TEST_SIGINT sends the process a real SIGINT right after parsing.
SITECUSTOMIZE = textwrap.dedent('''
    import os, sys
    blocked = set(filter(None, os.environ.get("APCLIP_TEST_BLOCK", "").split(",")))
    if blocked:
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in blocked:
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None
        sys.meta_path.insert(0, _Block())
    if os.environ.get("APCLIP_TEST_SIGINT"):
        import argparse, signal
        for method in ("parse_args", "parse_intermixed_args"):
            def wrap(original):
                def parse(self, *args, **kwargs):
                    result = original(self, *args, **kwargs)
                    os.kill(os.getpid(), signal.SIGINT)
                    return result
                return parse
            setattr(argparse.ArgumentParser, method, wrap(getattr(argparse.ArgumentParser, method)))
''')


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    return {**os.environ, "PYTHONPATH": str(site), "ORT_DISABLE_TELEMETRY": "1", "OPENAI_API_KEY": "test",
            "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    (d / "v.mp4").write_bytes(b"not a video")
    (d / "labels.txt").write_text("waving\nclapping\n", encoding="utf-8")
    (d / "list.txt").write_text("v.mp4 0\n", encoding="utf-8")
    (d / "best.pt").write_bytes(b"not a checkpoint")
    return {"dir": d, **{p.stem.replace(".", "_"): p for p in d.iterdir()}}


def script(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed next to {sys.executable} (pip install -e .)")
    return path


def call(name: str, argv, env, *, block: str = "", sigint: bool = False, timeout: int = 180):
    extra = {"APCLIP_TEST_BLOCK": block, "APCLIP_TEST_SIGINT": "1" if sigint else ""}
    return subprocess.run([str(script(name)), *map(str, argv)], capture_output=True, text=True, timeout=timeout,
                          env={**env, **extra}, cwd=ROOT if False else None)


def one_error_line(proc, prog: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert lines and lines[-1].startswith(f"{prog}: error: "), proc.stderr
    return lines[-1]


def test_every_command_is_covered():
    assert set(SCRIPTS) == set(FAILURES) == set(USAGE) == set(MISSING) == set(INTERRUPT), set(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_and_version(name, env):
    proc = call(name, ["--help"], env)
    assert proc.returncode == 0 and "usage:" in proc.stdout and "--version" in proc.stdout, proc.stderr
    proc = call(name, ["--version"], env)
    assert proc.returncode == 0 and proc.stdout.strip() == f"{name} {__version__} (apclip)", proc


# A failure (exit 1): an input that does not exist or is not what it claims to be.
FAILURES = {
    "apclip-infer": lambda f: [f["v"], "--bundle", f["dir"] / "no-bundle"],
    "apclip-export": lambda f: ["--ckpt", f["dir"] / "absent.pt"],
    "apclip-prompts": lambda f: ["review", f["dir"] / "absent.json", "--csv", f["dir"] / "out.csv"],
    "apclip-bench": lambda f: ["backends", f["dir"] / "no-bundle"],
    "apclip-train": lambda f: ["--output", f["dir"] / "no-run", "--resume"],
    "apclip-eval": lambda f: ["--bundle", f["dir"] / "no-bundle", "--list", f["list"], "--labels",
                              f["dir"] / "absent.txt"],
    "apclip-bundle": lambda f: ["info", f["dir"] / "no-bundle"],
    "apclip-build-engine": None,  # needs TensorRT before it reads anything (see MISSING)
    "apclip-batch": lambda f: [f["dir"] / "no-bundle", "--input", f["v"], "--output", f["dir"] / "o.jsonl"],
    "apclip-serve": lambda f: [f["dir"] / "no-bundle"],
    "apclip-triton-repo": lambda f: [f["dir"] / "no-bundle", "--out", f["dir"] / "repo"],
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_a_failure_is_one_line_exit_1_and_debug_shows_the_traceback(name, env, files):
    if FAILURES[name] is None:
        pytest.skip(f"{name} has no failure reachable without its optional package")
    argv = FAILURES[name](files)
    proc = call(name, argv, env)
    assert proc.returncode == 1, proc.stderr
    one_error_line(proc, name)
    proc = call(name, [*argv, "--debug"], env)
    assert proc.returncode == 1 and "Traceback" in proc.stderr, proc.stderr


# Usage errors (exit 2), including the ones the README promised and the commands did not keep.
USAGE = {
    "apclip-infer": lambda f: [[f["v"], "--topk", "0"], [f["v"], "--out-video", f["dir"] / "over.txt"]],
    "apclip-export": lambda f: [["--ckpt", f["best"], "--frames", "0"], ["--ckpt", f["best"], "--opset", "12"]],
    "apclip-prompts": lambda f: [["generate", "--labels", f["labels"], "--out", f["dir"] / "b.json",
                                  "--concurrency", "0"]],
    "apclip-bench": lambda f: [["parity", f["dir"]]],  # no --ckpt
    "apclip-train": lambda f: [["--output", f["dir"] / "r", "--frobnicate"]],
    "apclip-eval": lambda f: [["--list", f["list"], "--labels", f["labels"]]],  # neither --bundle nor --ckpt
    "apclip-bundle": lambda f: [["frobnicate"]],
    "apclip-build-engine": lambda f: [[f["dir"], "--precision", "fp64"]],
    "apclip-batch": lambda f: [[f["dir"], "--input", f["v"], "--output", f["dir"] / "o.jsonl", "--topk", "0"]],
    "apclip-serve": lambda f: [[f["dir"], "--topk", "0"]],
    "apclip-triton-repo": lambda f: [[f["dir"]]],  # --out is required
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_usage_errors_exit_2_with_prog_error(name, env, files):
    for argv in USAGE[name](files) + [["--no-such-option"]]:
        proc = call(name, argv, env)
        assert proc.returncode == 2, (argv, proc.stderr)
        prog = name if not (argv and argv[0] == "frobnicate") else name
        assert f"{prog}" in proc.stderr.strip().splitlines()[-1] and ": error: " in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


# A missing optional package: (modules made unimportable, the extra the message must name, argv).
MISSING = {
    "apclip-infer": ("onnxruntime", "cpu", lambda f, b: [f["v"], "--bundle", b]),
    "apclip-export": ("torch,onnx", "torch", lambda f, b: ["--ckpt", f["best"], "--out", f["dir"] / "nb"]),
    "apclip-prompts": ("openai", "llm", lambda f, b: ["generate", "--labels", f["labels"], "--out",
                                                       f["dir"] / "bank.json", "--base-url", "http://127.0.0.1:9/v1",
                                                       "--max-retries", "0"]),
    "apclip-bench": ("matplotlib", "bench", lambda f, b: ["latency", b, "--plot", f["dir"] / "p.png", "--quiet"]),
    "apclip-train": ("torch", "train", lambda f, b: ["--output", f["dir"] / "r2", "--preset", "tiny"]),
    "apclip-eval": ("torch", "torch", lambda f, b: ["--ckpt", f["best"], "--list", f["list"], "--labels",
                                                    f["labels"], "--root", f["dir"], "--no-progress"]),
    "apclip-bundle": ("tensorrt", "trt", lambda f, b: ["build-engine", b]),
    "apclip-build-engine": ("tensorrt", "trt", lambda f, b: [b]),
    "apclip-batch": ("ray", "scale", lambda f, b: [b, "--input", f["v"], "--output", f["dir"] / "o2.jsonl"]),
    "apclip-serve": None,  # the server runs in its own environment: a missing one is reported by --server-env
    "apclip-triton-repo": None,  # numpy only
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_a_missing_optional_package_exits_2_and_names_the_extra(name, env, files, tiny_bundle):
    if MISSING[name] is None:
        pytest.skip(f"{name} needs no optional package in this environment")
    block, extra, argv = MISSING[name]
    proc = call(name, argv(files, tiny_bundle), env, block=block)
    line = one_error_line(proc, name)
    assert proc.returncode == 2, proc.stderr
    assert f'pip install -c constraints.txt -e ".[{extra}]"' in line, line


INTERRUPT = {name: True for name in SCRIPTS}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_ctrl_c_exits_130_without_a_traceback(name, env, files):
    argv = (FAILURES[name] or (lambda f: [f["dir"]]))(files)
    proc = call(name, argv, env, sigint=True)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and "interrupted" in proc.stderr, proc.stderr
