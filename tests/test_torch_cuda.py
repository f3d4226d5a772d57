"""The torch-cuda backend on CPU: precision policy against the fp32 reference, batching and padding,
uint8 upload with device-side normalisation, device-side scoring. CUDA-only paths skip with a reason."""
from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from apclip.engine.runners.encoders import BackendUnavailable  # noqa: E402
from apclip.engine.runners.torch_cuda import (DeviceScorer, GpuNormalize, TorchCudaRunner, bucket_for,  # noqa: E402
                                      cast_for_inference, plan_batches, torch_cuda_runners)

COSINE_MIN = 0.999  # DESIGN.md: fp16 / bf16 backends against the fp32 reference
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def tiny_model():
    from apclip.model import build_preset

    return build_preset("tiny", seed=3)


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((37, 3, 32, 32)).astype(np.float32)


def reference_embeddings(model, pixels: np.ndarray) -> np.ndarray:
    from apclip.model import ImageEmbedder

    with torch.inference_mode():
        return ImageEmbedder(copy.deepcopy(model)).eval()(torch.from_numpy(pixels)).numpy()


@pytest.mark.parametrize("n, batch, expected", [(1, 32, 1), (3, 32, 4), (32, 32, 32), (17, 32, 32), (5, 6, 6)])
def test_bucket_is_next_power_of_two_capped_at_batch(n, batch, expected):
    assert bucket_for(n, batch) == expected


def test_bucket_refuses_groups_that_do_not_fit():
    with pytest.raises(ValueError):
        bucket_for(0, 32)
    with pytest.raises(ValueError):
        bucket_for(33, 32)


def test_batches_cover_every_input_once_and_pad_only_the_last():
    plan = plan_batches(100, 32)
    assert [(a, b) for a, b, _ in plan] == [(0, 32), (32, 64), (64, 96), (96, 100)]
    assert [size for _, _, size in plan] == [32, 32, 32, 4]
    assert plan_batches(0, 32) == []


@pytest.mark.parametrize("precision, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_weights_in_low_precision_layernorm_in_fp32(tiny_model, precision, dtype):
    from apclip.model import LayerNorm

    model = cast_for_inference(copy.deepcopy(tiny_model), precision)
    norms = [m for m in model.modules() if isinstance(m, LayerNorm)]
    assert norms and all(m.weight.dtype == torch.float32 and m.bias.dtype == torch.float32 for m in norms)
    assert model.visual.conv1.weight.dtype == dtype
    assert model.visual.transformer.resblocks[0].attn.in_proj_weight.dtype == dtype
    assert model.visual.proj.dtype == dtype


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_low_precision_runner_matches_fp32_reference(tiny_model, pixels, precision):
    from apclip.model import ImageEmbedder

    ref = reference_embeddings(tiny_model, pixels)
    model = cast_for_inference(copy.deepcopy(tiny_model), precision)
    runner = TorchCudaRunner(ImageEmbedder(model), tail=(3, 32, 32), input_dtype=torch.float32, device="cpu",
                             batch_size=16)
    out = runner(pixels)  # 37 = 16 + 16 + 5 (padded to 8)
    assert out.shape == ref.shape and out.dtype == np.float32
    assert cosine_rows(out, ref).min() >= COSINE_MIN
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)  # final normalisation in fp32
    # and not trivially equal: the low-precision path really ran in low precision
    assert np.abs(out - ref).max() > 1e-6


def test_padding_does_not_change_real_rows(tiny_model, pixels):
    from apclip.model import ImageEmbedder

    runner = TorchCudaRunner(ImageEmbedder(cast_for_inference(copy.deepcopy(tiny_model), "fp32")),
                             tail=(3, 32, 32), input_dtype=torch.float32, device="cpu", batch_size=16)
    together = runner(pixels)
    alone = np.concatenate([runner(pixels[i:i + 1]) for i in (0, 20, 36)])
    assert np.abs(together[[0, 20, 36]] - alone).max() < 1e-5
    with pytest.raises(ValueError, match="expected inputs"):
        runner(pixels[:, :, :16])


def test_gpu_normalisation_equals_the_engine_preprocessing():
    from apclip.config import NORMALIZATIONS
    from apclip.engine.video.preprocess import normalize

    frames = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    for norm in NORMALIZATIONS.values():
        expected = normalize(frames, norm)  # [5, 3, 32, 32]
        got = GpuNormalize(norm, "cpu", torch.float32)(torch.from_numpy(frames)).numpy()
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())


def test_uint8_upload_gives_the_float_path_result(tiny_model):
    from apclip.config import NORMALIZATIONS
    from apclip.engine.video.preprocess import normalize
    from apclip.model import ImageEmbedder

    norm = NORMALIZATIONS["clip"]
    frames = np.random.default_rng(2).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    runner = TorchCudaRunner(ImageEmbedder(cast_for_inference(copy.deepcopy(tiny_model), "fp32")),
                             tail=(3, 32, 32), input_dtype=torch.float32, device="cpu", batch_size=4,
                             normalize=GpuNormalize(norm, "cpu", torch.float32))
    assert np.abs(runner.encode_uint8(frames) - runner(normalize(frames, norm))).max() < 1e-5


def test_device_scorer_equals_numpy_maka(tiny_model):
    from apclip.class_matrix import ClassMatrix
    from apclip.scoring import maka_score

    rng = np.random.default_rng(4)
    emb = rng.standard_normal((3, 4, 64)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    counts = np.array([4, 1, 2], dtype=np.int32)
    emb[1, 1:] = np.nan  # padding must never be read
    emb[2, 2:] = np.nan
    classes = ClassMatrix(emb, counts, ["a", "b", "c"], [])
    frames = rng.standard_normal((2, 8, 64)).astype(np.float32)
    frames /= np.linalg.norm(frames, axis=-1, keepdims=True)
    runner = TorchCudaRunner(torch.nn.Identity(), tail=(64,), input_dtype=torch.float32, device="cpu")
    got = DeviceScorer(runner, classes)(torch.from_numpy(frames)).numpy()
    clean = np.nan_to_num(emb)
    assert np.abs(got - maka_score(frames, clean, counts)).max() < 1e-5


def test_runners_from_bundle_need_a_gpu_and_the_matching_checkpoint(tiny_bundle, demo_assets, tmp_path):
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="needs a CUDA GPU"):
            torch_cuda_runners(_manifest(tiny_bundle), demo_assets["checkpoint"], None)
    with pytest.raises(BackendUnavailable, match="--ckpt"):
        torch_cuda_runners(_manifest(tiny_bundle), None, None, device="cpu")
    other = tmp_path / "other.pt"
    shutil.copy(demo_assets["checkpoint"], other)
    with open(other, "ab") as f:
        f.write(b"\0")
    with pytest.raises(BackendUnavailable, match="sha256 differs"):
        torch_cuda_runners(_manifest(tiny_bundle), other, None, device="cpu")


def test_bundle_runners_on_cpu_match_onnx_runtime(tiny_bundle, demo_assets):
    """The same bundle, bf16 torch vs the fp32 ONNX graph: both encoders within the fp16/bf16 gate."""
    from apclip.engine.runners.encoders import ort_runners
    from apclip.export.verify import generated_video_pixels
    from apclip.tokenizer import get_tokenizer

    manifest = _manifest(tiny_bundle)
    vision, text = torch_cuda_runners(manifest, demo_assets["checkpoint"], None, device="cpu", precision="bf16")
    ort_vision, ort_text = ort_runners(manifest, cuda=False, threads=1, batch_size=32)
    pixels = generated_video_pixels(manifest.preprocessing)
    assert cosine_rows(vision(pixels), ort_vision(pixels)).min() >= COSINE_MIN
    tokens = get_tokenizer().tokenize(["a video of surfing.", "a video of juggling balls."])
    assert not text.loaded
    assert cosine_rows(text(tokens), ort_text(tokens)).min() >= COSINE_MIN
    assert vision.name == "torch-cuda-bf16"


def _manifest(bundle):
    from apclip.bundle import read_manifest

    return read_manifest(bundle)


@needs_cuda
def test_cuda_graph_replay_equals_eager(tiny_model, pixels):
    from apclip.model import ImageEmbedder

    model = ImageEmbedder(cast_for_inference(copy.deepcopy(tiny_model), "fp16"))
    graphs = TorchCudaRunner(model, tail=(3, 32, 32), input_dtype=torch.float32, batch_size=16, graphs=True)
    eager = TorchCudaRunner(model, tail=(3, 32, 32), input_dtype=torch.float32, batch_size=16, graphs=False)
    first, second = graphs(pixels), graphs(pixels[::-1].copy())  # replays must not leak between calls
    assert np.abs(first - eager(pixels)).max() < 1e-3
    assert np.abs(second - eager(pixels[::-1].copy())).max() < 1e-3
    assert set(graphs._graphs) == {(16, "float"), (8, "float")}
    assert cosine_rows(first, reference_embeddings(tiny_model, pixels)).min() >= COSINE_MIN


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_from_bundle_runs_the_precision_asked_for(tiny_bundle, demo_assets, monkeypatch, precision, dtype):
    """precision="fp32" with backend torch-cuda used to run fp16. On CPU: the CUDA constructor pointed at the CPU."""
    from apclip.engine import Recognizer
    from apclip.engine.runners import torch_cuda

    real = torch_cuda.torch_cuda_runners
    monkeypatch.setattr(torch_cuda, "torch_cuda_runners",
                        lambda *args, **options: real(*args, **{**options, "device": "cpu", "graphs": False}))
    rec = Recognizer.from_bundle(tiny_bundle, backend="torch-cuda", precision=precision,
                                 ckpt=demo_assets["checkpoint"], use_cache=False)
    assert rec.backend == f"torch-cuda-{precision}"
    assert rec.vision.module.clip.visual.conv1.weight.dtype == dtype


def test_precision_choice_on_the_command_line(tiny_bundle, demo_assets, capsys):
    from apclip.engine.cli.infer import build_parser, main

    assert build_parser().parse_args(["v.mp4", "--backend", "torch-cuda", "--precision", "bf16"]).precision == "bf16"
    code = main([str(demo_assets["video"]), "--bundle", str(tiny_bundle), "--backend", "ort", "--precision", "bf16"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--backend ort has no bf16" in err and len(err.splitlines()) == 1
