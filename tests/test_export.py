"""apclip-export: round trips per checkpoint format, manifest contents, atomicity and failure paths."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from apclip.bundle import (CLASSES_FILE, MANIFEST, PROMPTS_FILE, SCORER_FILE, TEXT_FILE, VISION_FILE, VOCAB_FILE, BundleError,
                           read_manifest, sha256_file)
from apclip.class_matrix import load_class_matrix
from apclip.export.api import export_bundle
from apclip.export.errors import ExportError
from apclip.export.cli import main as export_main
from apclip.labels import labels_sha256
from apclip.model import ImageEmbedder, TextEmbedder, build_preset
from apclip.prompt_bank import load_prompt_bank
from apclip.tokenizer import tokenize
from checkpoint_layouts import vificlip_keys

QUIET = dict(progress=False, log=lambda message: None)


@pytest.fixture
def reuse_session_onnx(monkeypatch, tiny_bundle):
    """Copy the session bundle's ONNX files instead of exporting again (same demo weights): the
    torch exporter takes ~15 s a call on 2 cores, and these tests are about what surrounds it."""
    import shutil

    import apclip.export.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "export_vision", lambda m, path, *a: shutil.copy(tiny_bundle / VISION_FILE, path))
    monkeypatch.setattr(onnx_export, "export_text", lambda m, path, *a: shutil.copy(tiny_bundle / TEXT_FILE, path))


@contextlib.contextmanager
def _before_rename(hook):
    """Run hook(work folder) when the finished export is about to be renamed into place."""
    from unittest import mock

    import apclip.export.api as api

    real = api._replace_dir

    def replace(work, out):
        hook(work)
        real(work, out)

    with mock.patch.object(api, "_replace_dir", replace):
        yield


def _no_partials(folder: Path) -> None:
    leftovers = [p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    assert leftovers == []


def _onnx_vs_torch(bundle: Path, model) -> float:
    import onnxruntime as ort

    r = model.config.image_resolution
    x = torch.randn(4, 3, r, r)
    session = ort.InferenceSession(str(bundle / VISION_FILE), providers=["CPUExecutionProvider"])
    got = session.run(None, {"pixels": x.numpy()})[0]
    with torch.inference_mode():
        ref = ImageEmbedder(model, normalize=read_manifest(bundle).vision_normalized)(x).numpy()
    return float(np.abs(got - ref).max())


def test_own_format_bundle_manifest_and_class_matrix(tiny_bundle, demo_assets):
    m = read_manifest(tiny_bundle)  # verifies every sha256
    raw = m.raw
    labels = demo_assets["labels"].read_text().split("\n")[1:6]
    assert m.labels == labels
    assert raw["labels_sha256"] == labels_sha256(labels)
    bank = load_prompt_bank(demo_assets["bank"])
    assert raw["prompt_bank_sha256"] == bank.sha256
    assert set(m.files) == {VISION_FILE, TEXT_FILE, CLASSES_FILE, PROMPTS_FILE, SCORER_FILE, VOCAB_FILE}
    from apclip.tokenizer import find_vocab

    assert (tiny_bundle / VOCAB_FILE).read_bytes() == find_vocab().read_bytes()  # the merges export used
    for name, info in m.files.items():
        assert info["sha256"] == sha256_file(tiny_bundle / name)
        assert info["bytes"] == (tiny_bundle / name).stat().st_size
    assert raw["checkpoint"]["format"] == "apclip"
    assert raw["checkpoint"]["sha256"] == sha256_file(demo_assets["checkpoint"])
    assert raw["opset"] == 17 and raw["io"]["vision"]["inputs"][0]["shape"] == ["N", 3, 32, 32]
    assert raw["preprocessing"]["frames"] == 8 and raw["preprocessing"]["crops"] == 2
    assert raw["preprocessing"]["normalization"]["name"] == "clip"
    assert {"apclip", "torch", "onnx", "onnxruntime"} <= set(raw["tools"])
    assert raw["verification"]["ok"] is True
    assert raw["class_matrix"]["fallback_labels"] == ["surfing water"]

    matrix = load_class_matrix(tiny_bundle / CLASSES_FILE, m.labels)
    assert matrix.counts.tolist() == [2, 3, 2, 2, 1]
    norms = np.linalg.norm(matrix.embeddings, axis=-1)
    real = np.arange(matrix.max_prompts)[None] < matrix.counts[:, None]
    np.testing.assert_allclose(norms[real], 1.0, atol=1e-5)
    assert (matrix.embeddings[~real] == 0).all()
    # Rows are the reference text encoder on "a video of {label}. {description}".
    from apclip.checkpoint import load_model

    model = load_model(demo_assets["checkpoint"])
    texts = json.loads((tiny_bundle / PROMPTS_FILE).read_text())
    assert texts["surfing water"] == ["a video of surfing water."]
    assert texts["abseiling"][0] == "a video of abseiling. " + bank.descriptions("abseiling")[0]
    with torch.inference_mode():
        ref = TextEmbedder(model)(torch.from_numpy(tokenize(texts["playing guitar"]))).numpy()
    np.testing.assert_allclose(matrix.embeddings[1, :3], ref, atol=1e-5)


def test_scorer_onnx_equals_reference_maka(tiny_bundle):
    import onnxruntime as ort

    from apclip.scoring import maka_score

    matrix = load_class_matrix(tiny_bundle / CLASSES_FILE, read_manifest(tiny_bundle).labels)
    rng = np.random.default_rng()
    frames = rng.standard_normal((3, 24, matrix.embeddings.shape[2])).astype(np.float32)
    frames /= np.linalg.norm(frames, axis=-1, keepdims=True)
    session = ort.InferenceSession(str(tiny_bundle / SCORER_FILE), providers=["CPUExecutionProvider"])
    got = session.run(None, {"frames": frames, "classes": matrix.embeddings,
                             "counts": matrix.counts.astype(np.int64)})[0]
    ref = maka_score(frames.astype(np.float64), matrix.embeddings.astype(np.float64), matrix.counts)
    assert got.shape == (3, 5)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def _openai_checkpoint(path: Path):
    model = build_preset("tiny", seed=3)
    torch.save(model.state_dict(), path)
    return model


def test_openai_state_dict_round_trip(tmp_path, demo_assets):
    model = _openai_checkpoint(tmp_path / "clip.pt")
    out = tmp_path / "bundle"
    result = export_bundle(tmp_path / "clip.pt", out=out, labels=demo_assets["labels"], normalize="imagenet255",
                           frames=4, clips=1, crops=3, profile="apclip", **QUIET)
    assert result.verification.ok and result.fallback_labels == read_manifest(out).labels  # no bank: all template
    raw = read_manifest(out).raw
    assert raw["checkpoint"]["format"] == "openai" and raw["prompt_bank_sha256"] is None
    assert raw["preprocessing"]["normalization"]["name"] == "imagenet255"
    assert (raw["preprocessing"]["frames"], raw["preprocessing"]["clips"], raw["preprocessing"]["crops"]) == (4, 1, 3)
    assert _onnx_vs_torch(out, model) <= 1e-4
    _no_partials(tmp_path)


def test_vificlip_with_base_round_trip_and_missing_base(tmp_path, demo_assets):
    model = build_preset("tiny", seed=5)
    sd = vificlip_keys(model.state_dict())
    torch.save({"model": sd, "epoch": 10, "max_accuracy": 0.5}, tmp_path / "vifi.pth")
    torch.save(model.state_dict(), tmp_path / "base.pt")
    with pytest.raises(Exception, match="--base"):
        export_bundle(tmp_path / "vifi.pth", out=tmp_path / "b0", labels=demo_assets["labels"], **QUIET)
    assert not (tmp_path / "b0").exists()
    out = tmp_path / "bundle"
    export_bundle(tmp_path / "vifi.pth", out=out, labels=demo_assets["labels"], base=tmp_path / "base.pt",
                  verify=False, **QUIET)
    manifest = read_manifest(out)
    assert manifest.raw["checkpoint"]["format"] == "vificlip"
    # No config, no bank: ViFi-CLIP's profile, protocol and default prompt; raw features from vision.onnx.
    assert manifest.preprocessing.profile == "vificlip" and manifest.scoring.protocol == "vificlip"
    assert manifest.scoring.template == "a photo of a {}." and not manifest.vision_normalized
    assert _onnx_vs_torch(out, model) <= 1e-4


def test_parity_failure_keeps_nothing(tmp_path, demo_assets, monkeypatch):
    import apclip.export.onnx_export as onnx_export

    real = onnx_export.export_vision

    def broken(model, path, opset, batch_max, **kwargs):  # a vision.onnx of other weights: parity must catch it
        real(build_preset("tiny", seed=99), path, opset, batch_max, **kwargs)

    monkeypatch.setattr(onnx_export, "export_vision", broken)
    out = tmp_path / "bundle"
    with pytest.raises(ExportError) as info:
        export_bundle(demo_assets["checkpoint"], out=out, **QUIET)
    assert "vision, random pixels" in str(info.value) and "FAILED" in str(info.value)
    assert not out.exists()
    _no_partials(tmp_path)


def test_interrupted_export_leaves_no_bundle_and_keeps_the_old_one(tmp_path, demo_assets, reuse_session_onnx):
    out = fake_bundle(tmp_path / "bundle")
    (out / "marker").write_text("old bundle")

    def interrupt(work: Path) -> None:
        assert (work / MANIFEST).exists()  # complete, yet not in place
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), _before_rename(interrupt):
        export_bundle(demo_assets["checkpoint"], out=out, force=True, verify=False, **QUIET)
    assert (out / "marker").read_text() == "old bundle"
    _no_partials(tmp_path)


def test_killed_export_never_leaves_an_acceptable_bundle(tmp_path, demo_assets):
    out = tmp_path / "bundle"
    proc = subprocess.Popen([sys.executable, "-m", "apclip.export.cli", "--ckpt", str(demo_assets["checkpoint"]),
                             "--out", str(out), "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(".partial-" in p.name for p in tmp_path.iterdir()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    for partial in tmp_path.iterdir():
        with pytest.raises(BundleError):
            read_manifest(partial)


def test_existing_bundle_needs_force(tmp_path, demo_assets, capsys):
    out = tmp_path / "bundle"
    out.mkdir()
    code = export_main(["--ckpt", str(demo_assets["checkpoint"]), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "--force" in err and len(err.strip().splitlines()) == 1
    assert list(out.iterdir()) == []


def test_bundle_has_ordinary_permissions(tiny_bundle):
    """Built in a private temporary directory, published with the umask's modes (readable by a service)."""
    mask = os.umask(0)
    os.umask(mask)
    assert tiny_bundle.stat().st_mode & 0o777 == 0o777 & ~mask
    for file in tiny_bundle.iterdir():
        assert file.stat().st_mode & 0o777 == 0o666 & ~mask, file.name


def fake_bundle(path: Path) -> Path:
    """A folder --force may replace: it has a readable apclip manifest."""
    path.mkdir()
    (path / MANIFEST).write_text(json.dumps({"format": "apclip-bundle", "format_version": 1}), encoding="utf-8")
    return path


def test_cli_export_with_force_prints_summary(tmp_path, demo_assets, capsys, reuse_session_onnx):
    out = fake_bundle(tmp_path / "bundle")
    code = export_main(["--ckpt", str(demo_assets["checkpoint"]), "--out", str(out), "--force", "--no-progress"])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "classes K=5" in stdout and "parity" in stdout and "FAILED" not in stdout
    read_manifest(out)


@pytest.mark.parametrize("args, message", [
    (["--ckpt", "missing.pt"], "does not exist"),
    (["--ckpt", "{ckpt}", "--labels", "missing.txt"], "labels file"),
    (["--ckpt", "{ckpt}", "--opset", "13"], "opset"),
    (["--ckpt", "{ckpt}", "--frames", "0"], "--frames 0"),
    (["--ckpt", "{ckpt}", "--batch-max", "0"], "--batch-max 0"),
    (["--ckpt", "{ckpt}", "--bpe-vocab", "missing.gz"], "missing.gz"),
    (["--ckpt", "{ckpt}", "--out", "/proc/apclip-no/bundle"], "/proc/apclip-no"),
])
def test_cli_errors_are_one_line(tmp_path, demo_assets, capsys, args, message):
    args = [a.format(ckpt=demo_assets["checkpoint"]) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "b")]
    code = export_main(args + ["--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_checkpoint_without_labels_needs_labels(tmp_path):
    _openai_checkpoint(tmp_path / "clip.pt")
    with pytest.raises(ExportError, match="--labels"):
        export_bundle(tmp_path / "clip.pt", out=tmp_path / "b", **QUIET)


def test_tampered_bundle_is_refused(tiny_bundle, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    data = bytearray((copy / CLASSES_FILE).read_bytes())
    data[-1] ^= 0xFF
    (copy / CLASSES_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=CLASSES_FILE):
        read_manifest(copy)


def test_force_rechecks_the_target_before_replacing_it(tmp_path, demo_assets, reuse_session_onnx):
    """A bundle swapped for other files while the export ran is not deleted at the final rename."""
    import shutil

    out = fake_bundle(tmp_path / "bundle")

    def swap(work: Path) -> None:
        shutil.rmtree(out)
        out.mkdir()
        (out / "thesis.tex").write_text("precious", encoding="utf-8")

    with pytest.raises(ExportError, match="no longer an apclip bundle"), _before_rename(swap):
        export_bundle(demo_assets["checkpoint"], out=out, force=True, verify=False, **QUIET)
    assert (out / "thesis.tex").read_text(encoding="utf-8") == "precious"
    _no_partials(tmp_path)
