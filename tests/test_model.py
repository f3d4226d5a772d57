"""The reference model against a from-scratch CLIP written here with explicit attention math.

The independent implementation reads the same state_dict and does everything by hand in float64
(patches by reshape, softmax(QK^T / sqrt(d)) with an explicit causal mask, QuickGELU, LayerNorm),
so a wrong transpose, scale, mask, pooling or block order in apclip.model shows up as a large error.
"""
from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import math
import sys
import types

import pytest
import torch

from apclip.config import PRESETS, ModelConfig
from apclip.model import CLIP, build_model, build_preset, config_from_state_dict

EOT = 49407
SOT = 49406

# Bigger than tiny in every direction, with 3 heads of 64, a 6x6 grid and a short context.
CUSTOM = ModelConfig(embed_dim=96, image_resolution=48, vision_layers=3, vision_width=192, vision_patch_size=8,
                     context_length=20, vocab_size=1000, transformer_width=192, transformer_heads=3,
                     transformer_layers=3)


@functools.lru_cache(maxsize=None)  # shared across tests, which therefore never modify it
def perturbed_model(config: ModelConfig, seed: int) -> CLIP:
    """A random model whose every parameter (LayerNorm gains, zero-initialised biases) is non-trivial."""
    torch.manual_seed(seed)
    model = CLIP(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


# ---- the independent implementation -------------------------------------------------------------

def ref_layer_norm(x: torch.Tensor, sd: dict, prefix: str) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * sd[prefix + ".weight"] + sd[prefix + ".bias"]


def ref_attention(x: torch.Tensor, sd: dict, prefix: str, heads: int, causal: bool) -> torch.Tensor:
    n, length, width = x.shape
    d = width // heads
    qkv = x @ sd[prefix + ".in_proj_weight"].T + sd[prefix + ".in_proj_bias"]
    q, k, v = qkv[..., :width], qkv[..., width:2 * width], qkv[..., 2 * width:]
    out = torch.zeros_like(x)
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        scores = q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(d)  # [N, L, L]
        if causal:
            mask = torch.full((length, length), float("-inf"), dtype=x.dtype).triu(1)
            scores = scores + mask
        weights = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        out[..., cols] = weights @ v[..., cols]
    return out @ sd[prefix + ".out_proj.weight"].T + sd[prefix + ".out_proj.bias"]


def ref_transformer(x: torch.Tensor, sd: dict, prefix: str, layers: int, heads: int, causal: bool) -> torch.Tensor:
    for i in range(layers):
        p = f"{prefix}.resblocks.{i}"
        x = x + ref_attention(ref_layer_norm(x, sd, p + ".ln_1"), sd, p + ".attn", heads, causal)
        h = ref_layer_norm(x, sd, p + ".ln_2") @ sd[p + ".mlp.c_fc.weight"].T + sd[p + ".mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h)
        x = x + h @ sd[p + ".mlp.c_proj.weight"].T + sd[p + ".mlp.c_proj.bias"]
    return x


def ref_encode_image(sd: dict, cfg: ModelConfig, images: torch.Tensor) -> torch.Tensor:
    n, p, g = images.shape[0], cfg.vision_patch_size, cfg.image_resolution // cfg.vision_patch_size
    patches = images.reshape(n, 3, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(n, g * g, 3 * p * p)
    x = patches @ sd["visual.conv1.weight"].reshape(cfg.vision_width, -1).T  # [N, g*g, W], row-major patches
    cls = sd["visual.class_embedding"].expand(n, 1, -1)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
    x = ref_layer_norm(x, sd, "visual.ln_pre")
    x = ref_transformer(x, sd, "visual.transformer", cfg.vision_layers, cfg.vision_width // 64, causal=False)
    return ref_layer_norm(x[:, 0], sd, "visual.ln_post") @ sd["visual.proj"]


def ref_encode_text(sd: dict, cfg: ModelConfig, tokens: torch.Tensor) -> torch.Tensor:
    x = sd["token_embedding.weight"][tokens] + sd["positional_embedding"]
    x = ref_transformer(x, sd, "transformer", cfg.transformer_layers, cfg.transformer_heads, causal=True)
    x = ref_layer_norm(x, sd, "ln_final")
    rows = []
    for i, row in enumerate(tokens.tolist()):
        rows.append(x[i, row.index(max(row))])  # the (first) EOT, CLIP's highest id
    return torch.stack(rows) @ sd["text_projection"]


# ---- helpers ------------------------------------------------------------------------------------

def random_images(cfg: ModelConfig, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, cfg.image_resolution, cfg.image_resolution, generator=gen)


def random_tokens(cfg: ModelConfig, eot_positions: list[int], seed: int) -> torch.Tensor:
    """Token rows as the tokenizer writes them: SOT, words, EOT, zero padding."""
    gen = torch.Generator().manual_seed(seed)
    top = min(cfg.vocab_size, SOT)
    tokens = torch.zeros(len(eot_positions), cfg.context_length, dtype=torch.int64)
    for row, pos in enumerate(eot_positions):
        tokens[row, 0] = min(SOT, cfg.vocab_size - 2)
        tokens[row, 1:pos] = torch.randint(1, top - 2, (pos - 1,), generator=gen)
        tokens[row, pos] = min(EOT, cfg.vocab_size - 1)
    return tokens


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Worst row's ||actual - expected|| / ||expected||."""
    diff = (actual.double() - expected).norm(dim=-1) / expected.norm(dim=-1)
    return float(diff.max())


def float64_state_dict(model: CLIP) -> dict:
    return {k: v.detach().double() for k, v in model.state_dict().items()}


# ---- parity -------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [PRESETS["tiny"], CUSTOM], ids=["tiny", "custom"])
def test_encoders_match_explicit_implementation(config):
    model = perturbed_model(config, seed=1)
    sd = float64_state_dict(model)
    images = random_images(config, 3, seed=2)
    tokens = random_tokens(config, [config.context_length - 1, 5, 1, config.context_length // 2], seed=3)
    with torch.no_grad():
        image_emb = model.encode_image(images)
        text_emb = model.encode_text(tokens)
    assert image_emb.shape == (3, config.embed_dim) and image_emb.dtype == torch.float32
    assert text_emb.shape == (4, config.embed_dim) and text_emb.dtype == torch.float32
    assert relative_error(image_emb, ref_encode_image(sd, config, images.double())) <= 1e-5
    assert relative_error(text_emb, ref_encode_text(sd, config, tokens)) <= 1e-5


@pytest.fixture(scope="module")
def open_clip_model_module():
    """open_clip's port of OpenAI's model.py, imported without open_clip/__init__.py. Its utils import
    torchvision for a ResNet-only class, so an inert stand-in is installed when torchvision is absent."""
    touched = ("open_clip", "torchvision")
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in touched}
    try:
        spec = importlib.util.find_spec("open_clip")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip("open_clip_torch is not installed")
        package = types.ModuleType("open_clip")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["open_clip"] = package
        if importlib.util.find_spec("torchvision") is None:
            torchvision, ops, misc = (types.ModuleType(n) for n in ("torchvision", "torchvision.ops",
                                                                    "torchvision.ops.misc"))
            misc.FrozenBatchNorm2d = type("FrozenBatchNorm2d", (torch.nn.Module,), {})
            torchvision.ops, ops.misc = ops, misc
            sys.modules.update({"torchvision": torchvision, "torchvision.ops": ops, "torchvision.ops.misc": misc})
        yield importlib.import_module("open_clip.model")
    except ImportError as exc:
        pytest.skip(f"cannot import open_clip.model on its own: {exc}")
    finally:
        for name in [k for k in sys.modules if k.split(".")[0] in touched]:
            del sys.modules[name]
        sys.modules.update(saved)


@pytest.mark.parametrize("config", [PRESETS["tiny"], CUSTOM], ids=["tiny", "custom"])
def test_encoders_match_openai_clip_as_ported_by_open_clip(open_clip_model_module, config):
    model = perturbed_model(config, seed=1)
    state_dict = {k: v.clone() for k, v in model.state_dict().items()}
    original = open_clip_model_module.build_model_from_openai_state_dict(
        dict(state_dict), quick_gelu=True, cast_dtype=torch.float32)
    original = original.float().eval()  # it rounds weights to fp16 as OpenAI's build_model does: reload fp32
    original.load_state_dict(state_dict, strict=True)
    images = random_images(config, 3, seed=18)
    tokens = random_tokens(config, [config.context_length - 1, 3, 1], seed=19)
    with torch.no_grad():
        assert relative_error(model.encode_image(images), original.encode_image(images).double()) <= 1e-5
        assert relative_error(model.encode_text(tokens), original.encode_text(tokens).double()) <= 1e-5


def test_text_is_causal_and_pooled_at_eot():
    config = PRESETS["tiny"]
    model = perturbed_model(config, seed=1)
    tokens = random_tokens(config, [6], seed=5).repeat(2, 1)
    tokens[1, 7:20] = torch.arange(100, 113)  # differs only after the EOT
    changed_before = tokens[:1].clone()
    changed_before[0, 3] += 1  # differs before the EOT
    with torch.no_grad():
        out = model.encode_text(torch.cat([tokens, changed_before]))
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=1e-6)
    assert (out[0] - out[2]).abs().max() > 1e-3


def test_forward_gives_clip_logits():
    config = PRESETS["tiny"]
    model = perturbed_model(config, seed=1)
    images, tokens = random_images(config, 2, seed=7), random_tokens(config, [4, 9, 12], seed=8)
    with torch.no_grad():
        per_image, per_text = model(images, tokens)
        img = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
    expected = model.logit_scale.exp() * img @ txt.T
    torch.testing.assert_close(per_image, expected)
    torch.testing.assert_close(per_text, expected.T)


def test_encode_video_is_normalised_frame_embeddings_in_order():
    config = PRESETS["tiny"]
    model = perturbed_model(config, seed=1)
    gen = torch.Generator().manual_seed(10)
    video = torch.randn(2, 3, 4, 3, config.image_resolution, config.image_resolution, generator=gen)
    with torch.no_grad():
        emb = model.encode_video(video)
        frames = model.encode_image(video.reshape(24, 3, config.image_resolution, config.image_resolution))
    assert emb.shape == (2, 3, 4, config.embed_dim)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2, 3, 4))
    expected = frames / frames.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(emb, expected.reshape(2, 3, 4, -1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(emb[1, 2, 3], expected[23], rtol=1e-5, atol=1e-6)


def test_half_model_runs_and_stays_close():
    """model.half() must run (LayerNorm upcasts its fp16 weights too) and track the fp32 model."""
    config = PRESETS["tiny"]
    model = perturbed_model(config, seed=1)
    images, tokens = random_images(config, 2, seed=15), random_tokens(config, [7, 30], seed=16)
    with torch.no_grad():
        image32, text32 = model.encode_image(images), model.encode_text(tokens)
        half = copy.deepcopy(model).half()
        image16, text16 = half.encode_image(images), half.encode_text(tokens)
    assert image16.dtype == text16.dtype == torch.float16
    assert relative_error(image16.float(), image32.double()) <= 1e-2
    assert relative_error(text16.float(), text32.double()) <= 1e-2


# ---- sizes from shapes --------------------------------------------------------------------------

# Parameter counts OpenAI reports for its released models (logit_scale included).
OPENAI_PARAMETER_COUNTS = {"ViT-B-32": 151_277_313, "ViT-B-16": 149_620_737, "ViT-L-14": 427_616_513}


@pytest.mark.parametrize("name", ["tiny", "ViT-B-32", "ViT-B-16", "ViT-L-14"])
def test_build_model_reads_every_size_from_shapes(name):
    config = ModelConfig.from_name(name)
    with torch.device("meta"):  # full-size shapes without allocating weights
        state_dict = CLIP(config).state_dict()
    assert config_from_state_dict(state_dict) == config
    model = build_model(state_dict)
    assert model.config == config
    assert not model.training
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in state_dict.items()}
    if name in OPENAI_PARAMETER_COUNTS:
        assert sum(v.numel() for v in state_dict.values()) == OPENAI_PARAMETER_COUNTS[name]


def test_presets_hold_clip_vit_b16_sizes():
    cfg = ModelConfig.from_name("ViT-B-16")
    assert (cfg.vision_width, cfg.vision_layers, cfg.vision_heads, cfg.vision_patch_size, cfg.vision_grid) == \
        (768, 12, 12, 16, 14)
    assert (cfg.transformer_width, cfg.transformer_layers, cfg.transformer_heads) == (512, 12, 8)
    assert (cfg.context_length, cfg.vocab_size, cfg.embed_dim) == (77, 49408, 512)
    with pytest.raises(ValueError, match="ViT-B-16"):
        ModelConfig.from_name("ViT-B-61")


def test_build_model_loads_exact_weights_as_float32():
    source = perturbed_model(CUSTOM, seed=1)
    half = {k: v.half() for k, v in source.state_dict().items()}
    model = build_model(half)
    assert model.config == CUSTOM
    for key, value in model.state_dict().items():
        assert value.dtype == torch.float32, key
        assert torch.equal(value, half[key].float()), key
    images = random_images(CUSTOM, 2, seed=12)
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), build_model(half).encode_image(images))


def test_build_preset_is_seeded():
    images = random_images(PRESETS["tiny"], 1, seed=13)
    with torch.no_grad():
        a, b = build_preset("tiny", seed=3).encode_image(images), build_preset("tiny", seed=3).encode_image(images)
        c = build_preset("tiny", seed=4).encode_image(images)
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---- bad state dicts ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_state_dict() -> dict:
    return build_preset("tiny").state_dict()


def test_missing_key_is_named(tiny_state_dict):
    sd = dict(tiny_state_dict)
    del sd["visual.transformer.resblocks.1.ln_2.bias"], sd["ln_final.bias"]
    with pytest.raises(ValueError, match=r"missing keys .*ln_final\.bias.*resblocks\.1\.ln_2\.bias"):
        build_model(sd)


def test_unexpected_key_is_named(tiny_state_dict):
    sd = dict(tiny_state_dict, **{"visual.extra_head.weight": torch.ones(2)})
    with pytest.raises(ValueError, match=r"unexpected keys \[visual\.extra_head\.weight\]"):
        build_model(sd)


def test_wrong_shape_is_named(tiny_state_dict):
    sd = dict(tiny_state_dict)
    sd["visual.proj"] = sd["visual.proj"].T.contiguous()
    sd["transformer.resblocks.0.mlp.c_fc.bias"] = torch.ones(7)
    with pytest.raises(ValueError, match=r"wrong shapes .*mlp\.c_fc\.bias: \(7,\) != \(512,\).*visual\.proj"):
        build_model(sd)


@pytest.mark.parametrize("key", ["visual.conv1.weight", "visual.positional_embedding", "ln_final.weight",
                                 "text_projection", "positional_embedding", "token_embedding.weight",
                                 "visual.proj"])
def test_missing_size_key_is_named(tiny_state_dict, key):
    sd = {k: v for k, v in tiny_state_dict.items() if k != key}
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_model(sd)


def test_bad_state_dict_leaves_nothing_loaded(tiny_state_dict):
    """A rejected state dict raises before any model exists; a gap in block numbering is caught."""
    sd = {k: v for k, v in tiny_state_dict.items() if not k.startswith("transformer.resblocks.0.")}
    with pytest.raises(ValueError, match=r"missing keys \[transformer\.resblocks\.0\."):
        build_model(sd)


def test_size_key_of_wrong_rank_is_named(tiny_state_dict):
    sd = dict(tiny_state_dict, text_projection=torch.ones(128))
    with pytest.raises(ValueError, match=r"wrong shapes \[text_projection: rank 1 != 2\]"):
        build_model(sd)
