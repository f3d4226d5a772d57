"""X-CLIP bundles against transformers itself: a tiny random XCLIPModel (XCLIPConfig, saved with
save_pretrained, nothing downloaded) exported once per session; probabilities vs XCLIPModel.forward,
pixels vs XCLIPProcessor's image processor, loader safety, manifest records."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

R, T = 32, 8
LABELS = ["playing guitar", "riding a bike", "cooking pasta", "swimming"]


def _tiny_model(seed: int = 0):
    from transformers import XCLIPConfig, XCLIPModel

    torch.manual_seed(seed)
    text = dict(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77)
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=R,
                  patch_size=16, num_frames=T, mit_hidden_size=32, mit_intermediate_size=64,
                  mit_num_hidden_layers=1, mit_num_attention_heads=2)
    config = XCLIPConfig(text_config=text, vision_config=vision, projection_dim=32, prompt_layers=1,
                         prompt_num_attention_heads=2)
    model = XCLIPModel(config).eval()
    with torch.no_grad():  # random init leaves the prompt generator's alpha tiny: make its shift count
        model.prompts_generator.alpha.fill_(0.5)
        model.logit_scale.fill_(3.0)
    return model


@pytest.fixture(scope="session")
def xclip_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("xclip") / "model"
    _tiny_model().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def xclip_bundle(xclip_folder, tmp_path_factory) -> Path:
    from apclip.export.xclip_bundle import export_xclip_bundle

    labels = tmp_path_factory.mktemp("xclip_labels") / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    out = tmp_path_factory.mktemp("xclip_bundles") / "xclip"
    export_xclip_bundle(xclip_folder, out=out, labels=labels, log=lambda message: None)
    return out


def _reference_probs(folder: Path, pixels: np.ndarray, labels: list[str]) -> np.ndarray:
    from transformers import XCLIPModel

    from apclip.tokenizer import get_tokenizer

    model = XCLIPModel.from_pretrained(folder).eval()
    tokens = torch.from_numpy(get_tokenizer().tokenize(labels))
    with torch.inference_mode():
        return model(input_ids=tokens, pixel_values=torch.from_numpy(pixels)).logits_per_video.softmax(-1).numpy()


def test_xclip_probabilities_equal_transformers(xclip_bundle, xclip_folder):
    from apclip.engine.recognizer import Recognizer
    from apclip.engine.runners.encoders import encode_in_batches

    rec = Recognizer.from_bundle(xclip_bundle, backend="ort", use_cache=False)
    rng = np.random.default_rng(7)
    for seed in range(2):
        pixels = rng.standard_normal((1, T, 3, R, R)).astype(np.float32)
        got = np.full(len(LABELS), np.nan, dtype=np.float32)  # poisoned: must be overwritten
        got[:] = rec.score(encode_in_batches(rec.vision, pixels[0]))
        want = _reference_probs(xclip_folder, pixels, LABELS)[0]
        assert np.abs(got - want).max() <= 1e-4, (got, want)
        assert want.max() - want.min() > 1e-3  # not a uniform answer that any graph would match
    # Two views: the mean of each view's probabilities (each equal to transformers' for that clip).
    two = rng.standard_normal((2, T, 3, R, R)).astype(np.float32)
    got = rec.score(encode_in_batches(rec.vision, two.reshape(-1, 3, R, R)))
    assert np.abs(got - _reference_probs(xclip_folder, two, LABELS).mean(0)).max() <= 1e-4


def test_xclip_prompt_generator_changes_the_answer(xclip_bundle):
    """Without the generator's shift the probabilities differ: the generator graph is really used."""
    from apclip.engine.recognizer import Recognizer
    from apclip.engine.runners.encoders import encode_in_batches
    from apclip.engine.scoring.xclip_scorer import xclip_probabilities

    rec = Recognizer.from_bundle(xclip_bundle, backend="ort", use_cache=False)
    pixels = np.random.default_rng(3).standard_normal((T, 3, R, R)).astype(np.float32)
    rows = encode_in_batches(rec.vision, pixels)
    assert rows.shape == (1 + (R // 16) ** 2, 32)

    class NoShift:
        def run(self, _, feeds):
            return [np.zeros_like(feeds["text"])]

    plain = xclip_probabilities(rows[None], rec.classes.embeddings[:, 0], NoShift(), rec.scorer.logit_scale)[0]
    assert np.abs(plain - rec.score(rows)).max() > 1e-4


def test_xclip_pixels_equal_processor():
    from transformers import VideoMAEImageProcessor, XCLIPProcessor
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

    from apclip.engine.video.preprocess import preprocess_clip
    from apclip.preprocessing import Preprocessing

    # microsoft/xclip-* preprocessor_config.json: size 224 (shortest edge), bilinear, crop 224, ImageNet mean/std.
    image = VideoMAEImageProcessor(size={"shortest_edge": R}, crop_size={"height": R, "width": R},
                                   resample=PILImageResampling.BILINEAR, image_mean=IMAGENET_DEFAULT_MEAN,
                                   image_std=IMAGENET_DEFAULT_STD)
    assert XCLIPProcessor.image_processor_class == "VideoMAEImageProcessor"
    spec = Preprocessing(frames=T, clips=1, crops=1, resolution=R, profile="xclip")
    rng = np.random.default_rng(5)
    for h, w in ((45, 71), (80, 37)):  # landscape and portrait, odd sizes: truncation and floor offsets matter
        bgr = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(T)]
        ours = preprocess_clip(bgr, spec)[0]  # [T, 3, R, R]
        theirs = image([[f[..., ::-1].copy() for f in bgr]], return_tensors="np")["pixel_values"][0]
        assert ours.shape == theirs.shape == (T, 3, R, R)
        assert np.abs(ours - theirs).max() <= 1e-5


def test_xclip_manifest_records_family_and_protocol(xclip_bundle):
    from apclip.bundle import read_manifest

    manifest = read_manifest(xclip_bundle)
    raw = manifest.raw
    assert raw["family"] == "xclip"
    assert manifest.scoring.protocol == "xclip" and manifest.scoring.template == "{}"
    assert manifest.scoring.logit_scale == pytest.approx(float(np.exp(3.0)), rel=1e-6)
    graph = manifest.vision_graph
    assert (graph.level, graph.output, graph.frames, graph.temporal_attention) == ("clip", "tokens", T, "xclip")
    assert manifest.preprocessing.profile == "xclip"
    assert "prompt_generator.onnx" in manifest.files and raw["io"]["prompt_generator"]["file"] == "prompt_generator.onnx"
    assert raw["verification"]["max_abs_prob"] <= 1e-4
    assert raw["checkpoint"]["weights"] == "model.safetensors"


def test_xclip_tokens_equal_clip_tokenizer(tmp_path):
    """X-CLIP's tokenizer is CLIP's BPE: built from our bundled merges, transformers' CLIPTokenizer gives our ids."""
    from transformers import CLIPTokenizer

    from apclip.tokenizer import get_tokenizer

    ours = get_tokenizer()
    (tmp_path / "vocab.json").write_text(json.dumps(ours.encoder), encoding="utf-8")
    merges = sorted(ours.bpe_ranks, key=ours.bpe_ranks.get)
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                         encoding="utf-8")
    theirs = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    texts = LABELS + ["Playing   Tennis!", "tai chi, 2 people", "jumping-jacks"]
    tokens = ours.tokenize(texts)
    for text, row in zip(texts, tokens):
        ids = theirs(text)["input_ids"]
        assert row[:len(ids)].tolist() == ids and not row[len(ids):].any()


def test_xclip_loader_names_missing_and_unexpected_keys(xclip_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    from apclip.export.errors import ExportError
    from apclip.export.xclip import load_xclip

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_bytes((xclip_folder / "config.json").read_bytes())
    state = load_file(str(xclip_folder / "model.safetensors"))
    state.pop("prompts_generator.alpha")
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(ExportError) as err:
        load_xclip(bad)
    message = str(err.value)
    assert "\n" not in message and "prompts_generator.alpha" in message and "extra.weight" in message


def test_xclip_loader_refuses_pickled_objects(xclip_folder, tmp_path):
    """pytorch_model.bin is read with weights_only=True: an arbitrary pickled object is refused, not run."""
    from apclip.export.errors import ExportError
    from apclip.export.xclip import load_xclip

    bad = tmp_path / "pickled"
    bad.mkdir()
    (bad / "config.json").write_bytes((xclip_folder / "config.json").read_bytes())
    torch.save({"weight": torch.zeros(1), "payload": Path("/etc/passwd")}, bad / "pytorch_model.bin")
    with pytest.raises(ExportError, match="unreadable or not plain tensors"):
        load_xclip(bad)


def test_xclip_export_cli_folder_without_weights(xclip_folder, tmp_path):
    from apclip.export.cli import main

    empty = tmp_path / "noweights"
    empty.mkdir()
    (empty / "config.json").write_bytes((xclip_folder / "config.json").read_bytes())
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n", encoding="utf-8")
    assert main(["--ckpt", str(empty), "--labels", str(labels), "--out", str(tmp_path / "b")]) != 0
    assert not (tmp_path / "b").exists()


def test_xclip_predicts_a_video_with_new_labels(xclip_bundle, tmp_path):
    """apclip-infer's path: decode, xclip profile, clip-level graph, run-time labels through text.onnx."""
    cv2 = pytest.importorskip("cv2")
    from apclip.engine.recognizer import Recognizer

    video = tmp_path / "v.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 25, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(40):
        writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    writer.release()
    rec = Recognizer.from_bundle(xclip_bundle, backend="ort", labels=["dancing", "cooking pasta"], use_cache=False)
    pred = rec.predict(video, explain=True)
    scores = {s.label: s.score for s in pred.top}
    assert set(scores) == {"dancing", "cooking pasta"} and sum(scores.values()) == pytest.approx(1.0, abs=1e-5)
    assert all(s.probability == pytest.approx(s.score, abs=1e-6) for s in pred.top)  # not softmaxed twice
    assert [e.label for e in pred.explanations] and all(e.frames == [] for e in pred.explanations)


def _videos(folder: Path, count: int = 2) -> list[Path]:
    cv2 = pytest.importorskip("cv2")
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for number in range(count):
        video = folder / f"v{number}.mp4"
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 25, (64, 48))
        rng = np.random.default_rng(10 + number)
        for _ in range(30):
            writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
        writer.release()
        out.append(video)
    return out


def test_xclip_bench_parity_passes_against_xclipmodel(xclip_bundle, xclip_folder, tmp_path, capsys):
    """apclip-bench parity on an X-CLIP bundle: ort:fp32 against transformers' XCLIPModel, exit 0."""
    from apclip.benchmarks.cli import main

    videos = _videos(tmp_path / "videos")
    listing = tmp_path / "videos.txt"
    listing.write_text("\n".join(map(str, videos)) + "\n", encoding="utf-8")
    out_json = tmp_path / "parity.json"
    code = main(["parity", str(xclip_bundle), "--ckpt", str(xclip_folder), "--backends", "ort,trt",
                 "--videos", str(listing), "--json", str(out_json), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads(out_json.read_text(encoding="utf-8"))
    rows = {r["contender"]: r for r in report["rows"]}
    assert report["passed"] and report["reference"] == "transformers:fp32"
    assert "sha256" not in rows["transformers:fp32"]["reason"]  # the folder the bundle was exported from
    ort = rows["ort:fp32"]
    assert ort["status"] == "pass" and ort["top1_agreement"] == 1.0
    assert ort["score_diff_max"] <= 1e-4 and ort["cosine_min"] >= 0.99999
    for name in ("ort:int8", "trt:fp16"):
        assert rows[name]["status"] == "unavailable" and "not supported for X-CLIP" in rows[name]["reason"]
    assert "ort:fp32" in printed and "PASS" in printed


def test_xclip_bench_parity_fails_against_another_model(xclip_bundle, tmp_path):
    """The same bundle against a different random XCLIPModel folder: the row fails (the check can fail)."""
    from apclip.benchmarks.parity import run_parity

    other = tmp_path / "other"
    _tiny_model(seed=1).save_pretrained(other)
    report = run_parity(xclip_bundle, other, _videos(tmp_path / "videos"), backends="ort:fp32")
    row = {r.contender: r for r in report.rows}["ort:fp32"]
    assert row.status == "fail" and report.failed == [row]
    assert row.cosine_min < 0.99999 and "cosine" in row.reason
    assert "sha256 is not" in report.rows[0].reason  # the reference row says the folder is not the exported one
