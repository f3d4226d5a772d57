"""A bundle is a trust boundary: hostile manifests and files, built here, are refused in one line by the one
loader every reader goes through (apclip.bundle.read_manifest / Manifest.file), before anything outside the
bundle is opened."""
from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest

from apclip.bundle import CLASSES_FILE, MANIFEST, SCORER_FILE, VISION_FILE, BundleError, read_manifest, sha256_file


@pytest.fixture
def copy(tiny_bundle, tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)
    return out


def edit_manifest(bundle, edit) -> None:
    raw = json.loads((bundle / MANIFEST).read_text())
    edit(raw)
    (bundle / MANIFEST).write_text(json.dumps(raw))


def refused(bundle, message: str) -> str:
    with pytest.raises(BundleError, match=message) as info:
        read_manifest(bundle)
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("name", ["../outside.bin", "/etc/hostname", "a/../../outside.bin", "", ".", "x\\y"])
def test_names_outside_the_bundle_are_refused_before_opening(copy, tmp_path, name):
    # The outside file is a FIFO: opening it would block, so a refusal proves it was never opened.
    os.mkfifo(tmp_path / "outside.bin")
    edit_manifest(copy, lambda raw: raw["files"].update({name: {"sha256": "0" * 64, "bytes": 0}}))
    refused(copy, "not a plain name|bad file name")


def test_symlink_leaving_the_bundle_is_refused_even_with_the_right_hash(copy, tmp_path):
    outside = tmp_path / "outside.onnx"
    shutil.copyfile(copy / VISION_FILE, outside)
    (copy / VISION_FILE).unlink()
    (copy / VISION_FILE).symlink_to(outside)  # same bytes, same sha256: only the location is wrong
    refused(copy, "symlink that leaves the bundle")


def test_unlisted_model_file_is_never_loaded(copy):
    """Removing a file from files[] and swapping it used to load (scores of 126.6 where MAKA is in [-1, 1])."""
    from apclip.engine.recognizer import Recognizer

    edit_manifest(copy, lambda raw: raw["files"].pop(SCORER_FILE))
    (copy / SCORER_FILE).write_bytes(b"swapped")
    manifest = read_manifest(copy)
    with pytest.raises(BundleError, match="does not list scorer.onnx"):
        manifest.file(SCORER_FILE)
    edit_manifest(copy, lambda raw: raw["files"].pop(VISION_FILE))
    with pytest.raises(BundleError, match="does not list vision.onnx"):
        Recognizer.from_bundle(copy, threads=1)
    edit_manifest(copy, lambda raw: raw["files"].pop(CLASSES_FILE))
    refused(copy, "does not list classes.safetensors")


@pytest.mark.parametrize("edit, message", [
    (lambda raw: raw.update(format_version="abc"), "format_version 'abc' is not a version number"),
    (lambda raw: raw.update(format_version=True), "not a version number"),
    (lambda raw: raw.update(labels="abc"), "labels must be"),
    (lambda raw: raw.update(labels=[1, 2]), "labels must be"),
    (lambda raw: raw.update(files=[]), "files must be an object"),
    (lambda raw: raw["files"][VISION_FILE].update(sha256=5), "sha256"),
    (lambda raw: raw["files"][VISION_FILE].update(bytes=-1), "size in bytes"),
    (lambda raw: raw["files"][VISION_FILE].update(bytes="12"), "size in bytes"),
    (lambda raw: raw.update(model=[]), "model must be an object"),
    (lambda raw: raw["model"].update(embed_dim="x"), "bad field"),
    (lambda raw: raw["preprocessing"].update(frames=10**9), "frames"),
    (lambda raw: raw["class_matrix"].update(num_classes=10**6), "num_classes"),  # shapes that lie
    (lambda raw: raw["class_matrix"].update(embed_dim=7), "embed_dim"),
])
def test_bad_fields_are_one_line_errors(copy, edit, message):
    edit_manifest(copy, edit)
    refused(copy, message)


@pytest.mark.parametrize("text", [b"[1, 2, 3]", b"[" * 200_000 + b"]" * 200_000, b'{"format": "apclip-bundle"',
                                  b"\xff\xfe"])
def test_manifest_that_is_not_an_object_is_a_one_line_error(copy, text):
    (copy / MANIFEST).write_bytes(text)
    refused(copy, "not an apclip bundle manifest|unreadable")


def test_fifo_manifest_is_refused_not_read_forever(copy):
    (copy / MANIFEST).unlink()
    os.mkfifo(copy / MANIFEST)
    refused(copy, "not a regular file")


def test_declared_size_is_checked_before_hashing(copy):
    """A 50 GiB sparse file in place of the class matrix costs a stat, not 50 GiB of reading."""
    with open(copy / CLASSES_FILE, "r+b") as f:
        f.truncate(50 << 30)
    start = time.perf_counter()
    message = refused(copy, "bytes, not the")
    assert time.perf_counter() - start < 5, message
    edit_manifest(copy, lambda raw: raw["files"][CLASSES_FILE].update(bytes=50 << 30))
    refused(copy, "size in bytes up to")  # over APCLIP_MAX_BUNDLE_FILE_MB's default


def test_nan_class_matrix_is_refused_at_load(copy, tmp_path):
    from safetensors.numpy import load_file, save_file

    from apclip.engine.recognizer import Recognizer

    tensors = load_file(str(copy / CLASSES_FILE))
    with open(copy / CLASSES_FILE, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    tensors["embeddings"][0, 0, 0] = np.nan
    save_file(tensors, str(copy / CLASSES_FILE), metadata=header.get("__metadata__"))
    size = (copy / CLASSES_FILE).stat().st_size
    edit_manifest(copy, lambda raw: raw["files"][CLASSES_FILE].update(sha256=sha256_file(copy / CLASSES_FILE),
                                                                          bytes=size))
    with pytest.raises(Exception, match="NaN"):
        Recognizer.from_bundle(copy, threads=1)


def test_json_output_never_has_bare_nan():
    from apclip.engine.cli.outputs import finite_json

    text = json.dumps(finite_json({"top": [{"score": float("nan")}, {"score": float("inf")}], "x": [1.5]}),
                      allow_nan=False)
    assert json.loads(text) == {"top": [{"score": None}, {"score": None}], "x": [1.5]}


def test_triton_repo_never_copies_a_symlinks_target(copy, tmp_path):
    from apclip.errors import ApclipError
    from apclip.scale.triton_repo import _copy_regular

    secret = tmp_path / "secret.txt"
    secret.write_text("not for the repository")
    (copy / "link.onnx").symlink_to(secret)
    with pytest.raises(ApclipError, match="symlink"):
        _copy_regular(copy / "link.onnx", tmp_path / "model.onnx", sha256_file(secret))
    assert not (tmp_path / "model.onnx").exists()
