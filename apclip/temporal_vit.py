"""Clip-level vision towers: CLIP's ViT whose attention also sees the neighbour frames (Open-VCLIP, FROSTER).

Open-VCLIP's `expand_temporal_view` (slowfast/models/torch_utils/functional.py, `_scaled_dot_product_attention`)
keeps CLIP's weights and changes only which keys and values each frame's queries attend to: those of
frame t+1, of frame t-1 and of frame t itself, in that order (3L keys per query). At the clip's last frame
the t+1 keys and values are ZEROS, and so are the t-1 ones at the first frame: they are not masked out, so
each boundary query still gives L extra keys the logit 0 and averages in L zero values (their `out_k`
is a `torch.zeros` buffer filled by shifted copies). We do the same, so the answers are theirs.

T is the graph's own constant (their `cfg.DATA.NUM_FRAMES`): a clip-level graph takes [B, T, 3, R, R].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from apclip.model import CLIP, Attention, l2_normalize

TEMPORAL_ATTENTIONS = ("expand_temporal_view",)


def expand_temporal_view_attention(attn: Attention, x: torch.Tensor, frames: int) -> torch.Tensor:
    """[B*T, L, W] (frame-major within each clip) -> [B*T, L, W]: CLIP's attention over [t+1, t-1, t] keys."""
    n, length, width = x.shape
    heads, t = attn.heads, frames
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)  # [B*T, L, 3W]
    # [B*T, L, 3W] -> [3, B, T, H, L, W/H]
    qkv = qkv.reshape(n // t, t, length, 3, heads, width // heads).permute(3, 0, 1, 4, 2, 5)
    q, k, v = qkv[0], qkv[1], qkv[2]

    def neighbours(z: torch.Tensor) -> torch.Tensor:  # [B, T, H, L, d] -> [B, T, H, 3L, d]
        zero = torch.zeros_like(z[:, :1])  # the missing neighbour at either end of the clip
        following = torch.cat([z[:, 1:], zero], dim=1)  # frame t+1 ("shift left")
        preceding = torch.cat([zero, z[:, :-1]], dim=1)  # frame t-1 ("shift right")
        return torch.cat([following, preceding, z], dim=3)

    d = width // heads
    q4 = q.reshape(n, heads, length, d)  # [B, T, H, L, d] -> [B*T, H, L, d]
    k4 = neighbours(k).reshape(n, heads, 3 * length, d)
    v4 = neighbours(v).reshape(n, heads, 3 * length, d)
    out = F.scaled_dot_product_attention(q4, k4, v4)  # [B*T, H, L, d]
    out = out.transpose(1, 2).reshape(n, length, width)  # [B*T, H, L, d] -> [B*T, L, W]
    return attn.out_proj(out)


def encode_clip_frames(clip: CLIP, pixels: torch.Tensor, temporal: str) -> torch.Tensor:
    """[B, T, 3, R, R] -> [B, T, E] frame features (not normalised) with the clip-level attention."""
    if temporal not in TEMPORAL_ATTENTIONS:
        raise ValueError(f"unknown temporal attention {temporal!r}; known: {', '.join(TEMPORAL_ATTENTIONS)}")
    b, t = pixels.shape[:2]
    visual = clip.visual
    x = visual.tokens(pixels.reshape(b * t, *pixels.shape[2:]).to(clip.dtype))  # [B*T, L, W]
    for block in visual.transformer.resblocks:
        x = x + expand_temporal_view_attention(block.attn, block.ln_1(x), t)
        x = x + block.mlp(block.ln_2(x))
    return visual.pool(x).reshape(b, t, -1)  # [B*T, E] -> [B, T, E]


class ClipImageEmbedder(nn.Module):
    """[B, T, 3, R, R] -> [B, T, E] L2-normalised: the clip-level graph exported as vision.onnx."""

    def __init__(self, clip: CLIP, temporal: str, normalize: bool = True):
        super().__init__()
        self.clip = clip
        self.temporal = temporal
        self.normalize = normalize

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = encode_clip_frames(self.clip, pixels, self.temporal).float()
        return l2_normalize(features) if self.normalize else features
