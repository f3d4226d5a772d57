"""End to end: a ViFi-CLIP checkpoint (with a yacs-style config) exported and run through apclip-infer gives
the scores of a straightforward ViFi-CLIP validate loop (its test pipeline, mean pool, softmax summed over
views); old bundles (no profile, no scoring) still load and behave as before."""
from __future__ import annotations

import json
import math
import shutil

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from apclip.bundle import CLASSES_FILE, MANIFEST, read_manifest, sha256_file  # noqa: E402
from apclip.model import build_preset  # noqa: E402
from apclip.scoring import vificlip_score  # noqa: E402
from apclip.tokenizer import tokenize  # noqa: E402

from checkpoint_layouts import vificlip_keys  # noqa: E402
from reference_pipelines import frames_bgr, vificlip_test_pipeline  # noqa: E402

LABELS = ["abseiling", "archery", "bowling", "clapping", "dribbling basketball", "juggling balls", "surfing",
          "yoga"]
QUIET = dict(progress=False, log=lambda message: None)


def write_vificlip_checkpoint(folder, *, num_frames, num_clip, num_crop, ctx_init="a photo of a", zs_eval=False,
                              seed=7):
    """model.pth as ViFi-CLIP's main.py saves it (weights under `model`, the yacs config as nested dicts) plus the
    OpenAI base file its token embedding comes from; logit_scale set to CLIP's trained ln(100)."""
    model = build_preset("tiny", seed=seed)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))
    config = {"DATA": {"NUM_FRAMES": num_frames, "INPUT_SIZE": model.config.image_resolution, "NUM_CLASSES": len(LABELS)},
              "TEST": {"NUM_CLIP": num_clip, "NUM_CROP": num_crop},
              "TRAINER": {"ViFi_CLIP": {"CTX_INIT": ctx_init, "ZS_EVAL": zs_eval, "PROMPT_MODEL": False}}}
    torch.save({"model": vificlip_keys(model.state_dict()), "config": config, "epoch": 3}, folder / "vifi.pth")
    torch.save(model.state_dict(), folder / "ViT-tiny.pt")
    return model


def write_frames(folder, count=23, size=(45, 70)):
    """A lossless image folder (PNG), so the reference reads exactly the pixels apclip decodes."""
    folder.mkdir()
    frames = []
    for i, frame in enumerate(frames_bgr(*size, count=count, seed=3)):
        cv2.imwrite(str(folder / f"img_{i:05d}.png"), frame)
        frames.append(frame)
    return frames


def apclip_clip_indices(count, frames, clips):
    """apclip's deterministic test clips (README: ViFi-CLIP draws random ones instead), written out."""
    avg = count / frames
    return [[min(int(i * avg + avg * (2 * j + 1) / (2 * clips)), count - 1) for i in range(frames)]
            for j in range(clips)]


@torch.inference_mode()
def vificlip_validate(model, frames_bgr_list, indices, *, input_size, num_frames, num_crop, template):
    """ViFi-CLIP main.py validate for one video: pipeline -> [n views, t] -> per view ViFi_CLIP.forward
    (visual, mean over t, normalise, logit_scale * cosine), softmax, summed."""
    sampled = [frames_bgr_list[i][..., ::-1].copy() for row in indices for i in row]  # clip-major, RGB
    images = torch.from_numpy(vificlip_test_pipeline(sampled, input_size, num_crop))  # [views * t, 3, R, R]
    t = num_frames
    n = images.shape[0] // t
    images = images.view(n, t, *images.shape[1:])  # [n, t, 3, R, R]
    prompts = [template.format(c) for c in LABELS]
    text = model.encode_text(torch.from_numpy(tokenize(prompts)))
    text = text / text.norm(dim=-1, keepdim=True)
    total = torch.zeros(len(LABELS), dtype=torch.float64)
    for i in range(n):
        features = model.visual(images[i]).view(1, t, -1).mean(dim=1)  # [1, E]
        features = features / features.norm(dim=-1, keepdim=True)
        logits = model.logit_scale.exp() * features @ text.t()
        total += logits.view(1, -1).softmax(dim=-1)[0].double()
    return total.numpy()


@pytest.mark.parametrize("num_frames,num_clip,num_crop", [(4, 2, 3), (3, 3, 1)])
def test_exported_vificlip_checkpoint_matches_vificlip_validate(tmp_path, num_frames, num_clip, num_crop):
    from apclip.engine.cli.infer import main as infer
    from apclip.export.api import export_bundle

    model = write_vificlip_checkpoint(tmp_path, num_frames=num_frames, num_clip=num_clip, num_crop=num_crop)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    lines = []
    export_bundle(tmp_path / "vifi.pth", out=tmp_path / "bundle", labels=labels, base=tmp_path / "ViT-tiny.pt",
                  scorer=True, progress=False, log=lines.append)
    said = "\n".join(lines)
    assert "checkpoint config DATA.NUM_FRAMES" in said and "checkpoint config TEST.NUM_CROP" in said
    assert "ViFi-CLIP checkpoint without --prompts" in said
    manifest = read_manifest(tmp_path / "bundle")
    pre, scoring = manifest.preprocessing, manifest.scoring
    assert (pre.profile, pre.frames, pre.clips, pre.crops) == ("vificlip", num_frames, num_clip, num_crop)
    assert pre.normalization.name == "imagenet255"
    assert scoring.protocol == "vificlip" and scoring.template == "a photo of a {}."
    assert scoring.logit_scale == pytest.approx(100.0, rel=1e-6)
    assert manifest.raw["verification"]["ok"]

    frames = write_frames(tmp_path / "video")
    indices = apclip_clip_indices(len(frames), num_frames, num_clip)
    ref = vificlip_validate(model, frames, indices, input_size=32, num_frames=num_frames, num_crop=num_crop,
                            template="a photo of a {}.")
    assert 0.0 < ref.max() < pre.views  # the softmax sum is informative, not saturated to one class
    for scorer in ("numpy", "onnx"):
        out = tmp_path / f"{scorer}.jsonl"
        assert infer([str(tmp_path / "video"), "--bundle", str(tmp_path / "bundle"), "--scorer", scorer,
                      "--topk", str(len(LABELS)), "--json", str(out), "--quiet", "--no-cache"]) == 0
        record = json.loads(out.read_text())
        assert record["protocol"] == "vificlip" and record["frames"] == pre.views * num_frames
        got = {t["label"]: t["score"] for t in record["top"]}
        np.testing.assert_allclose([got[label] for label in LABELS], ref, atol=1e-4, rtol=0)
        assert [t["label"] for t in record["top"][:5]] == [LABELS[k] for k in np.argsort(-ref, kind="stable")[:5]]
        assert sum(got.values()) == pytest.approx(pre.views, abs=1e-4)  # per-view probabilities, summed


@pytest.fixture(scope="module")
def vifi_bundle(tmp_path_factory):
    """An unverified bundle of a ViFi-CLIP checkpoint (3 frames, 2 clips, ThreeCrop), shared by the tests below."""
    from apclip.export.api import export_bundle

    folder = tmp_path_factory.mktemp("vifi")
    write_vificlip_checkpoint(folder, num_frames=3, num_clip=2, num_crop=3)
    labels = folder / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    export_bundle(folder / "vifi.pth", out=folder / "bundle", labels=labels, base=folder / "ViT-tiny.pt",
                  verify=False, **QUIET)
    return folder / "bundle"


def test_vificlip_explain_is_per_view(vifi_bundle, tmp_path):
    from apclip.engine.recognizer import Recognizer

    write_frames(tmp_path / "video", count=12)
    rec = Recognizer.from_bundle(vifi_bundle, scorer="numpy", use_cache=False)
    pred = rec.predict(tmp_path / "video", explain=True, topk=3)
    assert pred.protocol == "vificlip"
    for top, explanation in zip(pred.top, pred.explanations):
        assert explanation.frames == [] and len(explanation.views) == 6  # 2 clips x 3 crops
        assert sum(v.probability for v in explanation.views) == pytest.approx(top.score, abs=1e-5)
        assert explanation.views[0].prompt == f"a photo of a {top.label}."
    record = pred.to_dict()
    assert record["protocol"] == "vificlip" and "views" in record["explain"][0]
    with pytest.raises(Exception, match="triton scorer computes MAKA"):
        Recognizer.from_bundle(vifi_bundle, scorer="triton")


def test_run_time_labels_use_the_template(vifi_bundle, demo_assets):
    """New labels at infer: the bundle's template by default, --template when given (ViFi-CLIP's one prompt)."""
    from apclip.engine.recognizer import Recognizer

    rec = Recognizer.from_bundle(vifi_bundle, labels=["archery", "kite flying"], use_cache=False)
    assert rec.classes.prompt_texts == [["a photo of a archery."], ["a photo of a kite flying."]]
    rec = Recognizer.from_bundle(vifi_bundle, labels=["archery", "playing guitar"], use_cache=False,
                                 template="a video of a person {}.", prompts=demo_assets["bank"])
    # the bank has descriptions of "playing guitar", but ViFi-CLIP scores one prompt per class
    assert rec.classes.prompt_texts[1] == ["a video of a person playing guitar."]
    assert rec.classes.max_prompts == 1
    with pytest.raises(Exception, match="placeholder"):
        Recognizer.from_bundle(vifi_bundle, template="no label here")


@pytest.mark.parametrize("ctx_init,zs_eval,expected", [("a_video_of", False, "a video of {}."),
                                                       ("a photo of a", True, "{}")])
def test_checkpoint_template_from_ctx_init_and_zs_eval(tmp_path, ctx_init, zs_eval, expected):
    from apclip.checkpoint import load_checkpoint

    write_vificlip_checkpoint(tmp_path, num_frames=16, num_clip=4, num_crop=2, ctx_init=ctx_init, zs_eval=zs_eval)
    checkpoint = load_checkpoint(tmp_path / "vifi.pth", base=tmp_path / "ViT-tiny.pt")
    assert checkpoint.template == expected
    assert checkpoint.preprocessing == {"normalize": "imagenet255", "profile": "vificlip", "frames": 16,
                                        "resolution": 32, "clips": 4, "crops": 1}  # NUM_CROP 2: one centre crop
    assert "TEST.NUM_CROP=2" in checkpoint.defaults_from["crops"]


def test_explicit_options_win_and_conflicts_are_refused(tmp_path, demo_assets):
    from apclip.export.api import export_bundle
    from apclip.export.errors import ExportError

    write_vificlip_checkpoint(tmp_path, num_frames=4, num_clip=2, num_crop=3)
    common = dict(labels=demo_assets["labels"], base=tmp_path / "ViT-tiny.pt", verify=False, **QUIET)
    lines = []
    export_bundle(tmp_path / "vifi.pth", out=tmp_path / "b1", frames=2, clips=1, scoring="maka",
                  template="a clip of {}.", progress=False, log=lines.append,
                  **{k: v for k, v in common.items() if k not in QUIET})
    m = read_manifest(tmp_path / "b1")
    assert (m.preprocessing.frames, m.preprocessing.clips, m.preprocessing.crops) == (2, 1, 3)
    assert m.scoring.protocol == "maka" and m.scoring.template == "a clip of {}." and m.vision_normalized
    assert any("frames" in line and "(option)" in line for line in lines)
    with pytest.raises(ExportError, match="drop --prompts"):
        export_bundle(tmp_path / "vifi.pth", out=tmp_path / "b2", prompts=demo_assets["bank"], scoring="vificlip",
                      **common)
    with pytest.raises(ExportError, match="profile clip takes crops 1"):
        export_bundle(tmp_path / "vifi.pth", out=tmp_path / "b3", profile="clip", crops=2, **common)
    with pytest.raises(ExportError, match="normalises with imagenet255"):
        export_bundle(tmp_path / "vifi.pth", out=tmp_path / "b4", normalize="clip", **common)
    with pytest.raises(ExportError, match="placeholder"):
        export_bundle(tmp_path / "vifi.pth", out=tmp_path / "b5", template="a video", **common)
    # a prompt bank: MAKA by default, with the checkpoint's template for labels without descriptions
    export_bundle(tmp_path / "vifi.pth", out=tmp_path / "b6", prompts=demo_assets["bank"], **common)
    m = read_manifest(tmp_path / "b6")
    assert m.scoring.protocol == "maka" and m.preprocessing.profile == "vificlip"
    texts = json.loads((tmp_path / "b6" / "prompts.json").read_text())
    assert texts["surfing water"] == ["a photo of a surfing water."]


def test_openai_checkpoint_gets_the_clip_profile(tmp_path, demo_assets):
    from apclip.export.api import export_bundle

    torch.save(build_preset("tiny", seed=4).state_dict(), tmp_path / "clip.pt")
    export_bundle(tmp_path / "clip.pt", out=tmp_path / "bundle", labels=demo_assets["labels"], verify=False, **QUIET)
    m = read_manifest(tmp_path / "bundle")
    assert (m.preprocessing.profile, m.preprocessing.crops, m.preprocessing.normalization.name) == ("clip", 1, "clip")
    assert m.scoring.protocol == "maka"


def _as_old_bundle(src, dst):
    """A bundle as exported before profiles and protocols: no profile, no scoring, no io.vision.normalized,
    a class-matrix header without them."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    shutil.copytree(src, dst)
    raw = json.loads((dst / MANIFEST).read_text())
    raw["preprocessing"].pop("profile")
    raw.pop("scoring")
    raw["io"]["vision"].pop("normalized")
    with safe_open(str(dst / CLASSES_FILE), framework="numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        header = dict(f.metadata())
    header.pop("scoring")
    header["preprocessing"] = json.dumps({k: v for k, v in json.loads(header["preprocessing"]).items()
                                          if k != "profile"}, sort_keys=True)
    save_file(tensors, str(dst / CLASSES_FILE), metadata=header)
    raw["files"][CLASSES_FILE] = {"sha256": sha256_file(dst / CLASSES_FILE), "bytes": (dst / CLASSES_FILE).stat().st_size}
    (dst / MANIFEST).write_text(json.dumps(raw, indent=2))


def test_old_bundles_load_and_behave_as_before(tiny_bundle, demo_assets, tmp_path):
    from apclip.engine.recognizer import Recognizer

    old = tmp_path / "old"
    _as_old_bundle(tiny_bundle, old)
    manifest = read_manifest(old)
    assert "profile" not in manifest.raw["preprocessing"] and "scoring" not in manifest.raw
    assert manifest.preprocessing.profile == "apclip" and manifest.scoring.protocol == "maka"
    assert manifest.vision_normalized
    now = Recognizer.from_bundle(tiny_bundle, scorer="numpy", use_cache=False).predict(demo_assets["video"])
    before = Recognizer.from_bundle(old, scorer="numpy", use_cache=False).predict(demo_assets["video"])
    assert before.protocol == "maka" and before.to_dict()["protocol"] == "maka"
    np.testing.assert_array_equal(before.scores, now.scores)
    # an old bundle edited to claim another protocol no longer matches its class matrix
    raw = json.loads((old / MANIFEST).read_text())
    raw["scoring"] = {"protocol": "vificlip", "logit_scale": 100.0, "template": "{}"}
    (old / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(Exception, match="scoring does not match"):
        read_manifest(old)


def test_vificlip_score_torch_and_numpy_agree():
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((2, 12, 16)) * 3  # raw features, [B, V*T, E] with T=4
    text = rng.standard_normal((5, 16))
    text /= np.linalg.norm(text, axis=-1, keepdims=True)
    ref = vificlip_score(frames, text, 4, 50.0)
    got = vificlip_score(torch.from_numpy(frames), torch.from_numpy(text), 4, 50.0).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-12)
    np.testing.assert_allclose(ref.sum(axis=1), 3.0)  # 3 views of softmax probabilities
    pooled = frames.reshape(2, 3, 4, 16).mean(axis=2)  # normalising before pooling is a different score
    assert not np.allclose(vificlip_score(frames / np.linalg.norm(frames, axis=-1, keepdims=True), text, 4, 50.0),
                           ref, atol=1e-3) or np.allclose(pooled, 0)


def test_choose_reports_sources_and_adjustments():
    """export/defaults.choose on a checkpoint record (no export): where each value came from, and the notes."""
    from types import SimpleNamespace

    from apclip.export.defaults import choose

    model = build_preset("tiny", seed=1)
    checkpoint = SimpleNamespace(
        path="vifi.pth", format="vificlip", model=model, template="a photo of a {}.",
        preprocessing={"normalize": "imagenet255", "profile": "vificlip", "frames": 16, "resolution": 32},
        defaults_from={"frames": "checkpoint config DATA.NUM_FRAMES=16", "profile": "checkpoint format vificlip",
                       "template": "checkpoint config TRAINER.ViFi_CLIP.CTX_INIT"},
        train_config={"TRAINER": {"ViFi_CLIP": {"PROMPT_MODEL": True}}})
    choices = choose(checkpoint, clips=3)
    pre = choices.preprocessing
    assert (pre.frames, pre.clips, pre.crops) == (16, 3, 1)  # paper's 2 crops -> ViFi-CLIP's one centre crop
    assert choices.sources["frames"] == "checkpoint config DATA.NUM_FRAMES=16" and choices.sources["clips"] == "option"
    assert any("crops 2 -> 1" in note for note in choices.notes)
    assert any("PROMPT_MODEL" in note for note in choices.notes)
    assert choices.scoring.protocol == "vificlip" and choices.scoring.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    text = "\n".join(choices.lines())
    assert "DATA.NUM_FRAMES" in text and "ViFi-CLIP checkpoint without --prompts" in text
    checkpoint.preprocessing["resolution"] = 224
    with pytest.raises(Exception, match="input size 224.*32 px"):
        choose(checkpoint)


def test_vision_maka_engine_is_refused_for_vificlip_bundles(vifi_bundle, monkeypatch):
    """A TensorRT engine with the MAKA plugin as its tail cannot score a vificlip bundle (fake TensorRT module)."""
    import sys

    import fake_tensorrt

    from apclip.export.tensorrt.build import BuildRequest, EngineBuildError, build_engine

    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt.module("10.9.0.34"))
    with pytest.raises(EngineBuildError, match="build --graph vision"):
        build_engine(BuildRequest(vifi_bundle, graph="vision+maka"), log=lambda message: None)


def test_torch_runners_give_raw_features_for_vificlip_bundles(vifi_bundle):
    """The torch and torch-cuda (here on CPU, fp32) runners emit what vision.onnx emits: raw features."""
    import onnxruntime as ort

    from apclip.engine.runners.encoders import torch_runners
    from apclip.engine.runners.torch_cuda import torch_cuda_runners

    manifest = read_manifest(vifi_bundle)
    ckpt, base = vifi_bundle.parent / "vifi.pth", str(vifi_bundle.parent / "ViT-tiny.pt")
    pixels = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(str(vifi_bundle / "vision.onnx"), providers=["CPUExecutionProvider"])
    ref = session.run(None, {"pixels": pixels})[0]
    assert np.abs(np.linalg.norm(ref, axis=-1) - 1).max() > 0.1  # not normalised
    vision, _ = torch_runners(manifest, ckpt, base, batch_size=8)
    np.testing.assert_allclose(vision(pixels), ref, rtol=0, atol=1e-4)
    vision, _ = torch_cuda_runners(manifest, ckpt, base, precision="fp32", device="cpu", graphs=False)
    np.testing.assert_allclose(vision(pixels), ref, rtol=0, atol=1e-4)
