"""Give a random CLIP the activation outliers of trained CLIP ViTs, for int8 tests and benchmarks.

Random weights have no outliers, so per-tensor int8 looks fine on them. Trained CLIPs carry a few
residual-stream channels of huge magnitude in every block, heavy-tailed LayerNorm gains, and MLP
hidden units far larger than the rest. This module edits a model in place to have all three:
- residual stream: `channels` channels of the patch/class/position embeddings and of every block's
  out_proj and c_proj outputs are scaled by 20-100x, so they stay large through all blocks;
- LayerNorm gains (ln_1, ln_2 of every block) are multiplied by a heavy-tailed (log-normal, a few
  x10-x50) factor per channel, and the MatMul reading the LayerNorm divides its input columns by the
  same factor: the float function is unchanged, but the int8 MatMul input gets outlier channels;
- MLP: a few c_fc rows are scaled by 10-50x, so c_proj's input (after GELU) has outlier units.
"""
from __future__ import annotations

import numpy as np


def add_outliers(model, channels: int = 4, seed: int = 0, text: bool = True) -> dict:
    """Edit the vision (and text) towers of `model` in place; returns what was changed, per tower."""
    import torch

    rng = np.random.default_rng(seed)
    changed = {}
    with torch.no_grad():
        visual = model.visual
        width = visual.conv1.weight.shape[0]
        picked = rng.choice(width, size=channels, replace=False)
        factors = rng.uniform(20, 100, size=channels)
        for c, f in zip(picked, factors):  # residual-stream channels large from the first token on
            visual.conv1.weight[c] *= float(f)
            visual.class_embedding[c] *= float(f)
            visual.positional_embedding[:, c] *= float(f)
        changed["vision"] = _blocks(visual.transformer.resblocks, picked, factors, rng)
        changed["vision"]["residual_channels"] = {int(c): round(float(f), 1) for c, f in zip(picked, factors)}
        if text:
            width = model.token_embedding.weight.shape[1]
            picked = rng.choice(width, size=channels, replace=False)
            factors = rng.uniform(20, 100, size=channels)
            for c, f in zip(picked, factors):
                model.token_embedding.weight[:, c] *= float(f)
                model.positional_embedding[:, c] *= float(f)
            changed["text"] = _blocks(model.transformer.resblocks, picked, factors, rng)
    return changed


def _blocks(blocks, picked, factors, rng) -> dict:
    hidden_units = []
    for block in blocks:
        for c, f in zip(picked, factors):  # every block writes the outlier channels back at their scale
            for linear in (block.attn.out_proj, block.mlp.c_proj):
                linear.weight[int(c)] *= float(f)
                linear.bias[int(c)] *= float(f)
        width = block.ln_1.weight.shape[0]
        for norm, weight in ((block.ln_1, block.attn.in_proj_weight), (block.ln_2, block.mlp.c_fc.weight)):
            gains = np.exp(rng.normal(0.0, 0.6, size=width))  # heavy tail: a few channels x10-x50
            gains[rng.choice(width, size=3, replace=False)] = rng.uniform(10, 50, size=3)
            scale = norm.weight.new_tensor(gains)
            norm.weight.mul_(scale)
            norm.bias.mul_(scale)
            weight.div_(scale[None, :])  # [out, in]: the float product is unchanged
        units = rng.choice(4 * width, size=4, replace=False)
        for u in units:
            f = float(rng.uniform(10, 50))
            block.mlp.c_fc.weight[int(u)] *= f
            block.mlp.c_fc.bias[int(u)] *= f
        hidden_units.append([int(u) for u in units])
    return {"blocks": len(blocks), "hidden_units": hidden_units}
