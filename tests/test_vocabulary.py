"""Open vocabulary at run time: new labels equal an export with them, their on-disk cache is used on
the next run, and a damaged cache entry is rebuilt, never trusted."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from apclip.bundle import CLASSES_FILE, MANIFEST, PROMPTS_FILE, sha256_file
from apclip.class_matrix import load_class_matrix, save_class_matrix, save_prompt_texts
from apclip.labels import labels_sha256

pytest.importorskip("onnxruntime")

import apclip.engine.scoring.vocabulary as vocabulary  # noqa: E402
from apclip.engine import Recognizer  # noqa: E402

# Dropped from the bundle copy and asked for at run time: one with prompt-bank descriptions (3 rows),
# one that falls back to the template (1 row).
NEW = ["juggling balls", "surfing water"]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("APCLIP_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "classes"


@pytest.fixture(scope="module")
def reduced_bundle(tiny_bundle, tmp_path_factory) -> Path:
    """The session bundle without NEW: the same export, as if those labels had not been listed."""
    out = tmp_path_factory.mktemp("reduced") / "bundle"
    shutil.copytree(tiny_bundle, out)
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    full = load_class_matrix(out / CLASSES_FILE, manifest["labels"])
    keep = [k for k, label in enumerate(manifest["labels"]) if label not in NEW]
    labels = [manifest["labels"][k] for k in keep]
    width = int(full.counts[keep].max())
    full.embeddings, full.counts, full.labels = full.embeddings[keep, :width], full.counts[keep], labels
    save_class_matrix(out / CLASSES_FILE, full)
    prompts = json.loads((out / PROMPTS_FILE).read_text(encoding="utf-8"))
    save_prompt_texts(out / PROMPTS_FILE, labels, [prompts[label] for label in labels])
    manifest["labels"], manifest["labels_sha256"] = labels, labels_sha256(labels)
    manifest["class_matrix"]["num_classes"] = len(labels)  # read_manifest refuses shapes that lie
    for name in (CLASSES_FILE, PROMPTS_FILE):
        manifest["files"][name] = {"sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def full_labels(tiny_bundle) -> list[str]:
    return json.loads((tiny_bundle / MANIFEST).read_text(encoding="utf-8"))["labels"]


def load(bundle: Path, labels, bank, messages: list[str] | None = None, **kwargs) -> Recognizer:
    log = messages.append if messages is not None else (lambda message: None)
    return Recognizer.from_bundle(bundle, backend="ort", labels=labels, prompts=bank, scorer="numpy", log=log,
                                  **kwargs)


def test_new_labels_at_run_time_equal_the_exported_rows(tiny_bundle, reduced_bundle, full_labels, demo_assets,
                                                       cache):
    exported = load(tiny_bundle, None, None)
    runtime = load(reduced_bundle, full_labels, demo_assets["bank"])
    assert runtime.class_stats == {"reused": 3, "encoded": 2, "cached": 0}
    assert runtime.labels == exported.labels == full_labels
    np.testing.assert_array_equal(runtime.classes.counts, exported.classes.counts)
    assert runtime.classes.counts[full_labels.index("juggling balls")] == 2  # bank rows, not the template
    np.testing.assert_allclose(runtime.classes.embeddings, exported.classes.embeddings, rtol=0, atol=1e-5)
    assert runtime.classes.fallback_labels == ["surfing water"]
    a, b = runtime.predict(demo_assets["video"]), exported.predict(demo_assets["video"])
    assert [t.label for t in a.top] == [t.label for t in b.top]
    np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-5)
    # explanations name the new labels' own prompt texts
    pred = runtime.predict(demo_assets["video"], explain=True, topk=len(full_labels))
    surfing = next(e for e in pred.explanations if e.label == "surfing water")
    assert {f.prompt for f in surfing.frames} == {"a video of surfing water."}


def test_second_run_reads_the_cache_and_encodes_nothing(reduced_bundle, full_labels, demo_assets, cache,
                                                        monkeypatch):
    first = load(reduced_bundle, full_labels, demo_assets["bank"])
    assert first.class_stats["encoded"] == 2
    assert len(list(cache.glob("*.safetensors"))) == 1

    def must_not_encode(*args, **kwargs):
        raise AssertionError("the text encoder ran although the cache holds these labels")

    monkeypatch.setattr(vocabulary, "encode_class_matrix", must_not_encode)
    messages: list[str] = []
    second = load(reduced_bundle, full_labels, demo_assets["bank"], messages)
    assert second.class_stats == {"reused": 3, "encoded": 0, "cached": 2}
    assert second.text.loaded is False
    assert any("from the cache" in m for m in messages)
    assert second.classes.fallback_labels == ["surfing water"]
    np.testing.assert_array_equal(second.classes.embeddings, first.classes.embeddings)


def test_cache_key_follows_the_prompts(reduced_bundle, full_labels, demo_assets, cache):
    """Without the bank, juggling balls falls back to the template: another entry, not the banked one."""
    banked = load(reduced_bundle, full_labels, demo_assets["bank"])
    template = load(reduced_bundle, full_labels, None)
    assert template.class_stats["encoded"] == 2
    assert len(list(cache.glob("*.safetensors"))) == 2
    k = full_labels.index("juggling balls")
    assert template.classes.counts[k] == 1 and banked.classes.counts[k] == 2


def _corrupt_garbage(path: Path) -> None:
    path.write_bytes(b"\x00garbage" * 10)


def _corrupt_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


def _corrupt_one_value(path: Path) -> None:
    """Still a valid safetensors file with unit-norm-looking rows: only the hash can tell."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(path), framework="numpy") as f:
        metadata = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    tensors["embeddings"][0, 0, 0] += 1e-4
    save_file(tensors, str(path), metadata=metadata)


def _corrupt_nan(path: Path) -> None:
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(path), framework="numpy") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    tensors["embeddings"][1, 0] = np.nan
    save_file(tensors, str(path))  # no metadata: as if written by hand or by an older apclip


@pytest.mark.parametrize("corrupt", [_corrupt_garbage, _corrupt_truncate, _corrupt_one_value, _corrupt_nan])
def test_damaged_cache_entry_is_rebuilt(reduced_bundle, full_labels, demo_assets, cache, corrupt):
    good = load(reduced_bundle, full_labels, demo_assets["bank"])
    [entry] = cache.glob("*.safetensors")
    corrupt(entry)
    messages: list[str] = []
    again = load(reduced_bundle, full_labels, demo_assets["bank"], messages)
    assert again.class_stats["encoded"] == 2 and again.class_stats["cached"] == 0
    assert any("damaged" in m and "rebuilding" in m for m in messages)
    np.testing.assert_array_equal(again.classes.embeddings, good.classes.embeddings)
    assert load(reduced_bundle, full_labels, demo_assets["bank"]).class_stats["cached"] == 2  # rewritten


def test_entry_of_other_labels_is_not_used(reduced_bundle, full_labels, demo_assets, cache):
    """A valid entry copied under another key's file name (same shapes) is refused by its recorded key."""
    from apclip.bundle import read_manifest
    from apclip.class_matrix import class_prompts
    from apclip.prompt_bank import load_prompt_bank

    first = load(reduced_bundle, full_labels, demo_assets["bank"])
    [entry] = cache.glob("*.safetensors")
    other = ["juggling balls", "skiing snow"]  # same prompt counts as NEW: 2 bank rows, 1 template
    prompts, _ = class_prompts(other, load_prompt_bank(demo_assets["bank"]))
    manifest = read_manifest(reduced_bundle)
    key = vocabulary.label_cache_key(first.text.cache_identity, other, prompts, template=manifest.scoring.template,
                                     bank_sha256=load_prompt_bank(demo_assets["bank"]).sha256,
                                     vocab_sha256=vocabulary.vocab_sha256(manifest))
    shutil.copyfile(entry, cache / f"{key}.safetensors")
    swapped = [label if label != "surfing water" else "skiing snow" for label in full_labels]
    rec = load(reduced_bundle, swapped, demo_assets["bank"])
    assert rec.class_stats["encoded"] == 2
    k = full_labels.index("surfing water")
    assert not np.allclose(rec.classes.embeddings[k], first.classes.embeddings[k], atol=1e-3)


def test_unwritable_cache_costs_speed_not_the_run(reduced_bundle, full_labels, demo_assets, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be", encoding="utf-8")
    monkeypatch.setenv("APCLIP_CACHE_DIR", str(blocker))
    messages: list[str] = []
    rec = load(reduced_bundle, full_labels, demo_assets["bank"], messages)
    assert rec.class_stats["encoded"] == 2
    assert any(m.startswith("warning: could not write the label cache") for m in messages)
    assert rec.predict(demo_assets["video"]).top


def test_no_cache_neither_reads_nor_writes(reduced_bundle, full_labels, demo_assets, cache):
    load(reduced_bundle, full_labels, demo_assets["bank"], use_cache=False)
    assert not cache.exists() or not list(cache.iterdir())


def test_subset_and_reorder_of_bundle_labels_reuse_rows(tiny_bundle, full_labels, demo_assets, cache):
    exported = load(tiny_bundle, None, None)
    order = [full_labels[3], full_labels[0], full_labels[4]]
    rec = load(tiny_bundle, order, None)
    assert rec.class_stats == {"reused": 3, "encoded": 0, "cached": 0}
    assert rec.text.loaded is False and not cache.exists()
    full, sub = exported.predict(demo_assets["video"]), rec.predict(demo_assets["video"])
    np.testing.assert_allclose(sub.scores, full.scores[[3, 0, 4]], rtol=0, atol=1e-6)


class _OtherPrecisionText:
    """A text runner of another encoder (torch-cuda bf16, or ONNX Runtime int8): its rows are close to
    the fp32 ones but not equal (here 3e-3 apart, like bf16), and it says so through its identity."""

    def __init__(self, fp32_runner, identity):
        self.fp32, self.cache_identity = fp32_runner, identity
        self.name, self.batch_size = identity.runner, 256

    def __call__(self, tokens):
        rows = self.fp32(tokens)
        rows = rows + 3e-3 * np.sign(np.sin(np.arange(rows.shape[1])))  # a fixed, visible offset
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("runner, precision, source", [("torch-cuda", "bf16", "checkpoint"),
                                                       ("ort-cpu", "int8", "text.int8.onnx")])
def test_rows_of_another_encoder_are_not_reused_by_fp32(reduced_bundle, full_labels, demo_assets, cache,
                                                        runner, precision, source):
    """The cache used to key rows by a `file` attribute set from outside: rows a bf16 runner made were
    recorded as text.onnx rows and served to the next fp32 ONNX Runtime run."""
    from apclip.bundle import read_manifest
    from apclip.engine.runners.encoders import EncoderIdentity
    from apclip.prompt_bank import load_prompt_bank

    uncached = load(reduced_bundle, full_labels, demo_assets["bank"], use_cache=False)
    manifest = read_manifest(reduced_bundle)
    other = _OtherPrecisionText(uncached.text, EncoderIdentity(runner, precision, source, "f" * 64))
    bank = load_prompt_bank(demo_assets["bank"])
    low, stats = vocabulary.resolve_classes(manifest, full_labels, bank, other, use_cache=True)
    assert stats["encoded"] == 2 and len(list(cache.glob("*.safetensors"))) == 1
    k = full_labels.index("surfing water")
    assert np.abs(low.embeddings[k] - uncached.classes.embeddings[k]).max() > 1e-3  # the rows do differ
    fp32 = load(reduced_bundle, full_labels, demo_assets["bank"])
    assert fp32.class_stats == {"reused": 3, "encoded": 2, "cached": 0}
    np.testing.assert_array_equal(fp32.classes.embeddings, uncached.classes.embeddings)
    again, stats = vocabulary.resolve_classes(manifest, full_labels, bank, other, use_cache=True)
    assert stats["cached"] == 2  # each encoder finds its own rows
    np.testing.assert_array_equal(again.embeddings, low.embeddings)
