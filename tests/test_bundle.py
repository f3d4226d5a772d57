"""The bundle manifest is the one file without a hash of its own: what read_manifest refuses in it."""
from __future__ import annotations

import json
import shutil

import pytest

from apclip.bundle import MANIFEST, BundleError, read_manifest


def _edited_copy(tiny_bundle, tmp_path, edit):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    raw = json.loads((copy / MANIFEST).read_text())
    edit(raw)
    (copy / MANIFEST).write_text(json.dumps(raw))
    return copy


def _swap_labels(raw):
    raw["labels"][0], raw["labels"][1] = raw["labels"][1], raw["labels"][0]


@pytest.mark.parametrize("edit, message", [
    (_swap_labels, "labels_sha256"),
    (lambda raw: raw.pop("labels_sha256"), "labels_sha256"),
    (lambda raw: raw["preprocessing"].update(crops=7), "crops=7"),
    (lambda raw: raw["preprocessing"].update(frames=0), "frames=0"),
    (lambda raw: raw["preprocessing"].update(resolution=48), "resolution 48"),
    (lambda raw: raw.update(format_version=99), "newer"),
    (lambda raw: raw.pop("model"), "bad field"),
])
def test_inconsistent_manifest_is_a_one_line_error(tiny_bundle, tmp_path, edit, message):
    copy = _edited_copy(tiny_bundle, tmp_path, edit)
    with pytest.raises(BundleError, match=message) as info:
        read_manifest(copy)
    assert "\n" not in str(info.value) and ("apclip-export" in str(info.value) or "upgrade apclip" in str(info.value))


def test_untouched_copy_reads(tiny_bundle, tmp_path):
    copy = _edited_copy(tiny_bundle, tmp_path, lambda raw: None)
    assert read_manifest(copy).labels == read_manifest(tiny_bundle).labels


def _relabel_with_new_hash(raw):
    from apclip.labels import labels_sha256

    _swap_labels(raw)
    raw["labels_sha256"] = labels_sha256(raw["labels"])


@pytest.mark.parametrize("edit, message", [
    (_relabel_with_new_hash, "labels_sha256 does not match"),
    (lambda raw: raw["preprocessing"]["normalization"].update(name="imagenet255", scale=1.0), "preprocessing does not match"),
    (lambda raw: raw["preprocessing"].update(frames=16), "preprocessing does not match"),
])
def test_manifest_edits_that_recompute_hashes_still_fail(tiny_bundle, tmp_path, edit, message):
    """classes.safetensors (hashed in the manifest) carries the labels hash and preprocessing it was built for."""
    copy = _edited_copy(tiny_bundle, tmp_path, edit)
    with pytest.raises(BundleError, match=message):
        read_manifest(copy)
