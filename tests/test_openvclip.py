"""Open-VCLIP / FROSTER: their .pth layout, their temporal attention and their weight patching, against an
independent float64 transcription of their code (tests/openvclip_reference.py)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from apclip.checkpoint import load_checkpoint  # noqa: E402
from apclip.errors import CheckpointError  # noqa: E402
from apclip.model import build_preset  # noqa: E402
from apclip.temporal_vit import ClipImageEmbedder  # noqa: E402

from openvclip_reference import their_patching, their_video_features  # noqa: E402


def _clip_state(seed: int) -> dict:
    """A tiny CLIP's state_dict with every bias and LayerNorm moved off its init (nothing is zero or one)."""
    model = build_preset("tiny", seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    sd = {}
    for key, value in model.state_dict().items():
        value = value.detach().clone()
        if key.endswith("bias") or ".ln" in key or key.startswith("ln_"):
            value = value + 0.1 * torch.randn(value.shape, generator=gen)
        sd[key] = value
    return sd


def _write_pyslowfast(path, sd: dict, extra: dict | None = None, cfg: str | None = None):
    """Their swa_*.pth: {"model_state": {"model.<key>": ...}} (weight_average_tool.py), cfg as cfg.dump()."""
    state = {"model." + k: v for k, v in sd.items()}
    state.update(extra or {})
    payload = {"model_state": state}
    if cfg is not None:
        payload["cfg"] = cfg
    torch.save(payload, path)
    return path


@pytest.fixture(scope="module")
def swa(tmp_path_factory):
    folder = tmp_path_factory.mktemp("openvclip")
    sd = _clip_state(1)
    frozen = {"raw_model.visual.proj": torch.randn(2, 2), "projector_v.0.weight": torch.randn(2, 2)}  # FROSTER
    return _write_pyslowfast(folder / "swa_2_22.pth", sd, extra=frozen), sd


def test_loader_reads_their_layout_and_defaults(swa):
    path, sd = swa
    ckpt = load_checkpoint(path)
    assert ckpt.format == "openvclip" and ckpt.temporal == "expand_temporal_view"
    assert sorted(ckpt.dropped_keys) == ["projector_v.0.weight", "raw_model.visual.proj"]
    for key, value in sd.items():
        assert torch.equal(ckpt.model.state_dict()[key], value), key
    pre = ckpt.preprocessing
    assert (pre["frames"], pre["clips"], pre["crops"], pre["normalize"]) == (8, 3, 1, "clip")
    assert "test protocol" in ckpt.defaults_from["clips"]


def test_config_in_the_checkpoint_sets_the_defaults(tmp_path):
    cfg = "DATA:\n  NUM_FRAMES: 4\n  TEST_CROP_SIZE: 32\nTEST:\n  NUM_ENSEMBLE_VIEWS: 2\n  NUM_SPATIAL_CROPS: 1\n" \
          "MODEL:\n  TEMPORAL_MODELING_TYPE: expand_temporal_view\n"
    ckpt = load_checkpoint(_write_pyslowfast(tmp_path / "epoch.pyth", _clip_state(2), cfg=cfg))
    assert (ckpt.preprocessing["frames"], ckpt.preprocessing["clips"]) == (4, 2)
    assert ckpt.defaults_from["frames"] == "checkpoint cfg DATA.NUM_FRAMES=4"


def test_unexpected_keys_are_named(tmp_path):
    path = _write_pyslowfast(tmp_path / "bad.pth", _clip_state(3), extra={"prompt_embed": torch.randn(8, 128)})
    with pytest.raises(CheckpointError, match="unexpected keys.*prompt_embed"):
        load_checkpoint(path)


def test_code_in_the_pickle_is_refused(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return os.system, ("echo pwned",)

    path = tmp_path / "evil.pth"
    torch.save({"model_state": {"model.visual.proj": torch.zeros(1)}, "cfg": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)


@pytest.mark.parametrize("frames", [4, 2])
def test_temporal_attention_equals_their_code_in_float64(swa, frames):
    path, _ = swa
    state = torch.load(path, weights_only=True)["model_state"]
    model = load_checkpoint(path).model
    gen = torch.Generator().manual_seed(frames)
    pixels = torch.randn(2, frames, 3, 32, 32, generator=gen)  # [B, T, 3, R, R]
    with torch.inference_mode():
        ours = ClipImageEmbedder(model, "expand_temporal_view", normalize=False)(pixels)  # [B, T, E]
        per_frame = model.encode_image(pixels.reshape(-1, 3, 32, 32)).reshape(ours.shape)
    theirs = their_video_features(state, pixels.permute(0, 2, 1, 3, 4), frames).reshape(ours.shape)  # [B,3,T,R,R] in
    assert (ours.double() - theirs).abs().max() <= 1e-4 * theirs.abs().max()
    # The neighbour frames matter (so the check above could fail): per-frame CLIP is far from it.
    assert (per_frame.double() - theirs).abs().max() > 1e-2 * theirs.abs().max()


def test_boundary_frames_attend_to_zero_keys_not_masked_ones(swa):
    """At the first and last frame their missing neighbour is a block of zero keys and values (weight
    exp(0) in the softmax), not a mask: masking those keys instead changes the boundary frames only."""
    from apclip import temporal_vit

    path, _ = swa
    attn = load_checkpoint(path).model.visual.transformer.resblocks[0].attn
    x = torch.randn(4, 5, 128, generator=torch.Generator().manual_seed(7))  # [B*T, L, W], T = 4
    original = temporal_vit.F.scaled_dot_product_attention

    def masked(q, k, v):  # the tidier variant: a zero key (exactly 0 in every dim) cannot be attended to
        return original(q, k, v, attn_mask=(k != 0).any(-1)[:, :, None, :])  # [B*T, H, 1, 3L]

    with torch.inference_mode():
        ours = temporal_vit.expand_temporal_view_attention(attn, x, 4)
        temporal_vit.F.scaled_dot_product_attention = masked
        try:
            tidy = temporal_vit.expand_temporal_view_attention(attn, x, 4)
        finally:
            temporal_vit.F.scaled_dot_product_attention = original
    change = (ours - tidy).abs().amax(dim=(1, 2))  # [T]
    assert change[0] > 1e-3 and change[-1] > 1e-3
    assert torch.all(change[1:-1] < 1e-6)


def test_patching_equals_their_code_and_ratio_one_is_the_original(tmp_path):
    finetuned, original = _clip_state(4), _clip_state(5)
    # OpenAI's archive holds fp16 weights: their patching rounds `original * ratio` in fp16.
    original16 = {k: (v.half() if v.is_floating_point() else v) for k, v in original.items()}
    base = tmp_path / "ViT-B-16.pt"
    torch.save(original16, base)
    path = _write_pyslowfast(tmp_path / "swa.pth", finetuned)
    state = torch.load(path, weights_only=True)["model_state"]
    for ratio in (0.5, 0.7):
        ckpt = load_checkpoint(path, base=base, patch_ratio=ratio)
        theirs = their_patching(state, original16, ratio)
        got = ckpt.model.state_dict()
        for key, value in theirs.items():
            assert torch.equal(got[key[len("model."):]], value.float()), (ratio, key)
        assert ckpt.patching.ratio == ratio and ckpt.patching.patched_keys == len(original)
    exact = load_checkpoint(path, base=base, patch_ratio=1.0).model.state_dict()
    assert all(torch.equal(exact[k], v.float()) for k, v in original16.items())
    assert not torch.equal(exact["visual.proj"], finetuned["visual.proj"])
    unpatched = load_checkpoint(path, base=base, patch_ratio=0.0).model.state_dict()
    assert all(torch.equal(unpatched[k], v) for k, v in finetuned.items())


def test_patching_needs_the_base_and_a_ratio_in_range(swa, tmp_path):
    path, _ = swa
    with pytest.raises(CheckpointError, match="--base"):
        load_checkpoint(path, patch_ratio=0.5)
    with pytest.raises(CheckpointError, match=r"\[0, 1\]"):
        load_checkpoint(path, patch_ratio=1.5)


def test_patching_works_for_other_clip_family_formats(tmp_path):
    """ViFi-CLIP (token embedding from --base, then patched) and plain OpenAI-format state_dicts."""
    from checkpoint_layouts import vificlip_keys

    finetuned, original = _clip_state(6), _clip_state(7)
    base = tmp_path / "ViT-B-16.pt"
    torch.save(original, base)
    vifi = tmp_path / "vificlip.pth"
    torch.save({"model": vificlip_keys(finetuned)}, vifi)
    plain = tmp_path / "plain.pt"
    torch.save(finetuned, plain)
    for path in (vifi, plain):
        one = load_checkpoint(path, base=base, patch_ratio=1.0).model.state_dict()
        assert all(torch.equal(one[k], v) for k, v in original.items()), path
        half = load_checkpoint(path, base=base, patch_ratio=0.5).model.state_dict()
        assert torch.allclose(half["visual.proj"], (original["visual.proj"] + finetuned["visual.proj"]) / 2)
