"""text.onnx with a dynamic token axis: trimmed batches give the embeddings of full 77-token ones,
and bundles with the old fixed 77-token text.onnx keep loading and encoding."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from apclip.bundle import MANIFEST, TEXT_FILE, read_manifest, sha256_file
from apclip.tokenizer import tokenize

from apclip.engine.runners.precision import text_runner
from apclip.engine.runners.encoders import OrtRunner
from apclip.engine.runners.text_trim import TrimmedTextRunner, token_axis_is_dynamic, trim_to_last_eot

PROMPTS = ["a video of surfing.", "a video of abseiling. a climber descends a rock face on a rope",
           "a video of playing guitar. a man holds a guitar and strums the strings with his right hand "
           "while his left hand presses chords on the neck", "juggling", "a video of a dog."]


def _poisoned_tokens() -> np.ndarray:
    """Real prompts, with random (non-EOT) ids after each EOT instead of zeros: a causal encoder pooled
    at EOT ignores them, anything else would not."""
    tokens = tokenize(PROMPTS * 3)
    rng = np.random.default_rng(0)
    eot = tokens.argmax(axis=1)
    for row, end in enumerate(eot):
        tokens[row, end + 1:] = rng.integers(1, int(tokens[row, end]) - 1, size=tokens.shape[1] - end - 1)
    return tokens


def test_trim_cuts_after_the_last_eot():
    tokens = tokenize(PROMPTS)
    trimmed = trim_to_last_eot(tokens)
    longest = int(tokens.argmax(axis=1).max()) + 1
    assert trimmed.shape == (len(PROMPTS), longest) and longest < 77
    np.testing.assert_array_equal(trimmed, tokens[:, :longest])
    assert trim_to_last_eot(tokenize(["a"]))[0].tolist()[-1] == tokenize(["a"]).max()
    assert trim_to_last_eot(tokens[:0]).shape == (0, 77)


def test_trimmed_text_equals_untrimmed(tiny_bundle, demo_assets):
    torch = pytest.importorskip("torch")
    from apclip.checkpoint import load_model
    from apclip.model import TextEmbedder

    manifest = read_manifest(tiny_bundle)
    plain = OrtRunner(manifest.file(TEXT_FILE), "tokens", batch_size=256)
    assert plain.session.get_inputs()[0].shape[1] == "L"
    tokens = _poisoned_tokens()
    full = plain(tokens)  # [M, 77]
    with torch.inference_mode():
        reference = TextEmbedder(load_model(demo_assets["checkpoint"]))(torch.from_numpy(tokens)).numpy()
    np.testing.assert_allclose(full, reference, atol=1e-5)
    for bucket in (None, 4, 64):
        runner = TrimmedTextRunner(plain, bucket=bucket)
        got = runner(tokens)
        np.testing.assert_allclose(got, full, rtol=0, atol=1e-6)
    # And the run-time runner picks the trimming wrapper for this bundle.
    assert isinstance(text_runner(manifest, TEXT_FILE, cuda=False, threads=None), TrimmedTextRunner)


def _old_style_bundle(tiny_bundle: Path, out: Path, keep_io: bool) -> Path:
    """tiny_bundle as bundles were before the dynamic token axis: text.onnx's input fixed at [M, 77]."""
    import onnx

    shutil.copytree(tiny_bundle, out)
    model = onnx.load(str(out / TEXT_FILE))
    dim = model.graph.input[0].type.tensor_type.shape.dim[1]
    dim.ClearField("dim_param")
    dim.dim_value = 77
    onnx.save(model, str(out / TEXT_FILE))
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["io"]["text"]["inputs"][0]["shape"] = ["M", 77]
    if not keep_io:
        del manifest["io"]
    manifest.pop("precisions", None)
    manifest["files"][TEXT_FILE] = {"sha256": sha256_file(out / TEXT_FILE), "bytes": (out / TEXT_FILE).stat().st_size}
    (out / MANIFEST).write_text(json.dumps(manifest))
    return out


@pytest.mark.parametrize("keep_io", [True, False], ids=["manifest-io", "graph-shape"])
def test_old_fixed_77_token_bundles_keep_working(tiny_bundle, demo_assets, tmp_path, keep_io, monkeypatch):
    from apclip.engine.recognizer import Recognizer

    monkeypatch.setenv("APCLIP_CACHE_DIR", str(tmp_path / "cache"))
    old = _old_style_bundle(tiny_bundle, tmp_path / "old", keep_io)
    manifest = read_manifest(old)
    runner = text_runner(manifest, TEXT_FILE, cuda=False, threads=None)
    assert not isinstance(runner, TrimmedTextRunner)
    tokens = tokenize(PROMPTS)
    with pytest.raises(Exception):  # the old graph really refuses fewer than 77 tokens
        runner(trim_to_last_eot(tokens))
    new = OrtRunner(read_manifest(tiny_bundle).file(TEXT_FILE), "tokens")
    np.testing.assert_allclose(runner(tokens), new(tokens), atol=1e-6)
    # End to end: a run-time label is encoded through the old text.onnx.
    labels = ["abseiling", "unseen action here"]
    rec_old = Recognizer.from_bundle(old, "ort", labels, use_cache=False)
    rec_new = Recognizer.from_bundle(tiny_bundle, "ort", labels, use_cache=False)
    np.testing.assert_allclose(rec_old.classes.embeddings, rec_new.classes.embeddings, atol=1e-6)
    assert rec_old.predict(demo_assets["video"]).top[0].label == rec_new.predict(demo_assets["video"]).top[0].label


def test_token_axis_detection_prefers_the_manifest(tiny_bundle):
    manifest = read_manifest(tiny_bundle)
    assert token_axis_is_dynamic(manifest)
    manifest.raw["io"]["text"]["inputs"][0]["shape"] = ["M", 77]
    assert not token_axis_is_dynamic(manifest, ["M", "L"])
    del manifest.raw["io"]
    assert token_axis_is_dynamic(manifest, ["M", "L"]) and not token_axis_is_dynamic(manifest, ["M", 77])
    assert not token_axis_is_dynamic(manifest, None)
