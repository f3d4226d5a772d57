"""apclip-bundle info / verify: what a bundle holds, and whether every file is intact and loads."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from apclip.bundle import MANIFEST, TEXT_FILE, VISION_FILE, VOCAB_FILE, sha256_file

from apclip.engine.cli.bundle import COMMANDS, Command, build_parser, main


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_info(capsys, tiny_bundle):
    code, out, _ = run(capsys, "info", tiny_bundle)
    assert code == 0
    assert "labels          5: abseiling, playing guitar, riding a bike, juggling balls, surfing water" in out
    assert "T=8 x 2 clip(s) x 2 crop(s) = 4 views, 32 frames per video" in out
    assert "profile apclip, 32px, normalisation clip" in out and "scoring         maka" in out
    assert "bundled BPE vocabulary" in out and "onnx (ort, ort-cuda)" in out
    size = (tiny_bundle / VISION_FILE).stat().st_size
    assert f"{size / 1e6:.2f} MB" in out
    assert "verification at export: ok" in out and "MAKA top-1" in out
    code, out, _ = run(capsys, "info", tiny_bundle, "--json")
    info = json.loads(out)
    assert info["files"][VISION_FILE] == size and info["views"] == 4 and len(info["labels"]) == 5


def test_verify_ok_and_failures(capsys, tiny_bundle, tmp_path):
    code, out, _ = run(capsys, "verify", tiny_bundle)
    assert code == 0 and ": ok (" in out.strip().splitlines()[-1]
    loads = [line for line in out.splitlines() if " loads " in line]
    assert len(loads) == 6 and all(" ok " in line for line in loads)  # 3 ONNX, matrix, prompts, vocabulary

    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    (broken / TEXT_FILE).write_bytes(b"garbage")  # hash mismatch
    # A corrupt vocabulary whose hash is recomputed: passes the sha256 check, fails to load.
    (broken / VOCAB_FILE).write_bytes(b"\x1f\x8bnot gzip")
    raw = json.loads((broken / MANIFEST).read_text(encoding="utf-8"))
    raw["files"][VOCAB_FILE]["sha256"] = sha256_file(broken / VOCAB_FILE)
    (broken / MANIFEST).write_text(json.dumps(raw), encoding="utf-8")
    code, out, _ = run(capsys, "verify", broken)
    assert code == 1 and "FAILED: 2 problem(s)" in out
    failed = [line.split()[0:2] for line in out.splitlines() if "FAILED" in line and line.startswith("  ")]
    assert sorted(failed) == sorted([[TEXT_FILE, "sha256"], [VOCAB_FILE, "loads"]])


def test_not_a_bundle_is_one_line(capsys, tmp_path):
    code, out, err = run(capsys, "verify", tmp_path / "nowhere")
    assert code == 1 and out == "" and err.strip().splitlines() == [
        f"apclip-bundle: error: bundle {tmp_path / 'nowhere'} does not exist (create one with apclip-export --ckpt ...)"]


def test_subcommands_are_extensible(capsys, monkeypatch):
    monkeypatch.setitem(COMMANDS, "hello", Command("hello", "say hello", lambda p: p.add_argument("name"),
                                                   lambda args: print(f"hello {args.name}") or 0))
    assert "hello" in build_parser().format_help()
    assert run(capsys, "hello", "bundle")[:2] == (0, "hello bundle\n")


def test_info_and_verify_without_torch(tiny_bundle):
    code = ("import sys; sys.modules['torch'] = None; sys.modules['open_clip'] = None\n"
            "from apclip.engine.cli.bundle import main\n"
            "sys.exit(main(['info', sys.argv[1]]) or main(['verify', sys.argv[1]]))")
    proc = subprocess.run([sys.executable, "-c", code, str(tiny_bundle)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert ": ok (" in proc.stdout.strip().splitlines()[-1]


def test_engines_listed_in_info_and_hashed_by_verify(capsys, tiny_bundle, tmp_path):
    from apclip.bundle import read_manifest
    from apclip.engine.runners.engine_cache import (ENGINES_DIR, GpuIdentity, engine_entry, engine_key, profile_from_manifest,
                                         record_engine)

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = read_manifest(bundle)
    key = engine_key(manifest, "vision", "fp16", "10.9.0.34", GpuIdentity("NVIDIA H200", (9, 0)),
                     profile_from_manifest(manifest, "vision"))
    engine = bundle / ENGINES_DIR / key.file_name()
    engine.parent.mkdir()
    engine.write_bytes(b"serialized engine")
    record_engine(manifest, engine.name, engine_entry(key, engine, None, "2026-12-02T07:00:00+00:00", 1.0))

    code, out, _ = run(capsys, "info", bundle)
    assert code == 0 and "engines         1" in out and "tensorrt (trt)" in out
    assert f"{engine.name}: vision fp16, NVIDIA H200 sm90, TensorRT 10.9.0.34" in out
    assert "precisions fp16, fp32" in out
    code, out, _ = run(capsys, "verify", bundle)
    assert code == 0 and any(line.split()[:3] == [engine.name, "sha256", "ok"] for line in out.splitlines())
    engine.write_bytes(b"tampered")
    code, out, _ = run(capsys, "verify", bundle)
    assert code == 1 and any(line.split()[:3] == [engine.name, "sha256", "FAILED"] for line in out.splitlines())


def test_build_engine_is_a_subcommand_through_the_entry_point(capsys, tiny_bundle):
    """export's build-engine joins apclip-bundle through the apclip.bundle_commands entry point (the
    engine never imports export); without TensorRT it says so and exits 2."""
    pytest.importorskip("torch")
    from importlib import metadata

    names = {ep.name for ep in metadata.entry_points(group="apclip.bundle_commands")}
    assert "build-engine" in names
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert main(["build-engine", str(tiny_bundle)]) == 2
        assert "tensorrt is not installed" in capsys.readouterr().err
    assert "build-engine" in COMMANDS
