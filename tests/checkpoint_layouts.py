"""Checkpoint layouts the tests write, shared by the checkpoint and export tests."""
from __future__ import annotations

import torch


def vificlip_keys(state_dict: dict) -> dict:
    """A ViFi-CLIP `model` state_dict: DataParallel prefix, renamed encoders, prompt learner, no token embedding."""
    out = {}
    for key, value in state_dict.items():
        if key == "token_embedding.weight":
            continue
        if key.startswith("visual."):
            out["module.image_encoder." + key[len("visual."):]] = value
        elif key == "logit_scale":
            out["module.logit_scale"] = value
        else:
            out["module.text_encoder." + key] = value
    gen = torch.Generator().manual_seed(2)
    out["module.prompt_learner.token_prefix"] = torch.randn(4, 1, state_dict["ln_final.weight"].shape[0], generator=gen)
    out["module.prompt_learner.token_suffix"] = torch.randn(4, 70, state_dict["ln_final.weight"].shape[0], generator=gen)
    return out
