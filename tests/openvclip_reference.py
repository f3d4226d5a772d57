"""An independent float64 transcription of Open-VCLIP's clip-level vision tower, for the tests.

Written from their code, not from ours: slowfast/models/customize_visiontransformer.py
(TemporalVisionTransformer.forward, TimesAttentionBlock) and slowfast/models/torch_utils/functional.py
(multi_head_attention_forward's head split, `_scaled_dot_product_attention` with
temporal_shift='expand_temporal_view'), reading weights straight from their `model.`-prefixed state_dict.
Also their test-time weight patching (tools/test_net.py) and prompt ensemble (achieve_csf_matrix).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _ln(x, sd, name):
    return F.layer_norm(x, (x.shape[-1],), sd[name + ".weight"], sd[name + ".bias"], 1e-5)


def _their_attention(x, sd, prefix, num_heads, T):
    """LND input, as nn.MultiheadAttention gets it in their TimesAttentionBlock."""
    tgt_len, bsz, embed_dim = x.shape
    head_dim = embed_dim // num_heads
    q, k, v = F.linear(x, sd[prefix + "in_proj_weight"], sd[prefix + "in_proj_bias"]).chunk(3, dim=-1)
    q = q.contiguous().view(tgt_len, bsz * num_heads, head_dim).transpose(0, 1)
    k = k.contiguous().view(k.shape[0], bsz * num_heads, head_dim).transpose(0, 1)
    v = v.contiguous().view(v.shape[0], bsz * num_heads, head_dim).transpose(0, 1)
    # _scaled_dot_product_attention, expand_temporal_view branch, line by line
    B, Nt, E = q.shape
    q = q / math.sqrt(E)
    n_segment = T
    n_batch = int(B / n_segment // num_heads)
    k = k.reshape(n_batch, n_segment, num_heads, Nt, E)
    k = k.permute(0, 1, 2, 4, 3).contiguous().view(n_batch, n_segment, num_heads * E, Nt)
    v = v.reshape(n_batch, n_segment, num_heads, Nt, E)
    v = v.permute(0, 1, 2, 4, 3).contiguous().view(n_batch, n_segment, num_heads * E, Nt)
    out_k = torch.zeros((n_batch, n_segment, num_heads * E, Nt * 3), dtype=k.dtype)
    out_k[:, :-1, :, :Nt] = k[:, 1:, :]  # shift left
    out_k[:, 1:, :, Nt:2 * Nt] = k[:, :-1, :]  # shift right
    out_k[:, :, :, 2 * Nt:3 * Nt] = k[:, :, :]  # not shift
    out_v = torch.zeros((n_batch, n_segment, num_heads * E, Nt * 3), dtype=v.dtype)
    out_v[:, :-1, :, :Nt] = v[:, 1:, :]
    out_v[:, 1:, :, Nt:2 * Nt] = v[:, :-1, :]
    out_v[:, :, :, 2 * Nt:3 * Nt] = v[:, :, :]
    k = out_k.view(n_batch, n_segment, num_heads, E, 3 * Nt).permute(0, 1, 2, 4, 3).contiguous()
    v = out_v.view(n_batch, n_segment, num_heads, E, 3 * Nt).permute(0, 1, 2, 4, 3).contiguous()
    k = k.view(B, 3 * Nt, E)
    v = v.view(B, 3 * Nt, E)
    attn = torch.softmax(torch.bmm(q, k.transpose(-2, -1)), dim=-1)
    output = torch.bmm(attn, v)
    output = output.transpose(0, 1).contiguous().view(tgt_len, bsz, embed_dim)
    return F.linear(output, sd[prefix + "out_proj.weight"], sd[prefix + "out_proj.bias"])


def their_video_features(model_state: dict, video: torch.Tensor, T: int) -> torch.Tensor:
    """model_state: their {"model.visual....": tensor}; video [B, 3, T, R, R] as PySlowFast feeds it
    -> [B*T, E] frame features (TemporalClipVideo.forward's img_encode, before normalisation)."""
    sd = {k[len("model.visual."):]: v.double() for k, v in model_state.items() if k.startswith("model.visual.")}
    bz, channel_dim, clip_len, h, w = video.shape
    x = video.double().permute(0, 2, 1, 3, 4).reshape(bz * clip_len, channel_dim, h, w)
    x = F.conv2d(x, sd["conv1.weight"], stride=sd["conv1.weight"].shape[-1])
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([sd["class_embedding"] + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype), x], dim=1)
    x = _ln(x + sd["positional_embedding"], sd, "ln_pre").permute(1, 0, 2)  # NLD -> LND
    width = x.shape[-1]
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        x = x + _their_attention(_ln(x, sd, p + "ln_1"), sd, p + "attn.", width // 64, T)
        hdn = F.linear(_ln(x, sd, p + "ln_2"), sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])
        hdn = hdn * torch.sigmoid(1.702 * hdn)
        x = x + F.linear(hdn, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
    x = _ln(x.permute(1, 0, 2)[:, 0, :], sd, "ln_post")
    return x @ sd["proj"]


def their_patching(checkpoint_model: dict, clip_ori_state: dict, ratio: float) -> dict:
    """tools/test_net.py with raw_clip_flag (a TorchScript original): every original key patched."""
    missing_params_name = list(set(checkpoint_model.keys()) - set("model." + i for i in clip_ori_state.keys()))
    patched = {}
    for key in clip_ori_state:
        patched["model." + key] = clip_ori_state[key] * ratio + checkpoint_model["model." + key] * (1 - ratio)
    for key in missing_params_name:
        patched[key] = checkpoint_model[key]
    return patched
