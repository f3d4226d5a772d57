"""Open-VCLIP / FROSTER checkpoints: PySlowFast `.pth` files around a CLIP with temporal attention.

Layout (Open-VCLIP tools/test_net.py, weight_average_tool.py, slowfast/utils/checkpoint.py):
  swa_*.pth            {"model_state": {"model.<OpenAI CLIP key>": tensor, ...}}  (weight-averaged)
  checkpoint_epoch_*   {"epoch", "model_state", "optimizer_state", "cfg": cfg.dump() (a YAML string)}
`model.` prefixes the CLIP's own keys (TemporalClipVideo.model, a CLIP whose visual tower is a
TemporalVisionTransformer with CLIP's key names); a DDP save adds `module.` in front. FROSTER's training
state also holds `raw_model.` (the frozen CLIP it distils from) and `projector_v.` / `projector_t.`
(residual projectors its test does not apply): those are dropped and reported. Anything else is left in,
so the model build names it as an unexpected key.

Test protocol (configs/Kinetics/TemporalCLIP_vitb16_8x16_STAdapter.yaml, script/testing/*): 8 frames
(DATA.NUM_FRAMES), 3 temporal views (TEST.NUM_ENSEMBLE_VIEWS) x 1 crop (TEST.NUM_SPATIAL_CROPS),
224 px (DATA.TEST_CROP_SIZE), CLIP mean/std on 0-1 RGB (DATA.MEAN/STD), `expand_temporal_view`
(MODEL.TEMPORAL_MODELING_TYPE), 28 prompt templates averaged per class.
"""
from __future__ import annotations

from typing import Any

import torch

from apclip.errors import CheckpointError

# Prefixes of training-only state (FROSTER): not part of the deployed model.
DROPPED_PREFIXES = ("raw_model.", "projector_v.", "projector_t.")
# Config entries -> preprocessing keys, and the values of their published test protocol.
CONFIG_KEYS = {"frames": "DATA.NUM_FRAMES", "clips": "TEST.NUM_ENSEMBLE_VIEWS", "crops": "TEST.NUM_SPATIAL_CROPS",
               "resolution": "DATA.TEST_CROP_SIZE"}
PROTOCOL = {"frames": 8, "clips": 3, "crops": 1}
PROTOCOL_SOURCE = "Open-VCLIP/FROSTER test protocol (8 frames x 3 temporal views x 1 crop)"
DEFAULT_TEMPORAL = "expand_temporal_view"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)


def is_pyslowfast(obj: Any) -> bool:
    state = obj.get("model_state") if isinstance(obj, dict) else None
    return isinstance(state, dict) and bool(state) and all(isinstance(v, torch.Tensor) for v in state.values())


def pyslowfast_state_dict(model_state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(OpenAI-named state_dict, dropped training-only keys)."""
    renamed: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in model_state.items():
        k = key[len("module."):] if key.startswith("module.") else key
        if k.startswith(DROPPED_PREFIXES):
            dropped.append(key)
            continue
        k = k[len("model."):] if k.startswith("model.") else k
        if k in renamed:
            raise CheckpointError(f"two PySlowFast keys map to {k}")
        renamed[k] = value
    return renamed, dropped


def _config(raw: Any) -> dict[str, Any]:
    """Their `cfg.dump()` YAML string (or a dict) as plain dicts; {} when absent or unreadable."""
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str):
        return {}
    try:
        import yaml
    except ImportError:  # the cfg only refines defaults that have the published values anyway
        return {}
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _get(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def pyslowfast_metadata(obj: dict[str, Any]) -> dict[str, Any]:
    """preprocessing, temporal attention and where each came from (cfg entries, else their test protocol)."""
    config = _config(obj.get("cfg"))
    preprocessing: dict[str, Any] = {"normalize": "clip", "profile": "clip"}
    sources = {"normalize": "Open-VCLIP/FROSTER DATA.MEAN/STD (CLIP's, on 0-1 RGB)",
               "profile": "closest profile to PySlowFast's test transform (short side R, centre crop)"}
    for key, dotted in CONFIG_KEYS.items():
        value = _get(config, dotted)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            preprocessing[key], sources[key] = value, f"checkpoint cfg {dotted}={value}"
        elif key in PROTOCOL:
            preprocessing[key], sources[key] = PROTOCOL[key], PROTOCOL_SOURCE
    mean = _get(config, "DATA.MEAN")
    if isinstance(mean, list) and [round(float(m), 6) for m in mean] != [round(m, 6) for m in CLIP_MEAN]:
        raise CheckpointError(f"checkpoint cfg DATA.MEAN {mean} is not CLIP's: only CLIP-normalised "
                              f"Open-VCLIP/FROSTER checkpoints are supported")
    model_cfg = config.get("MODEL") if isinstance(config.get("MODEL"), dict) else {}
    temporal = model_cfg.get("TEMPORAL_MODELING_TYPE")
    if temporal is None and "TEMPORAL_MODELING_TYPE" in model_cfg:  # their cfg.dump() writes null: plain CLIP
        temporal_source = "checkpoint cfg MODEL.TEMPORAL_MODELING_TYPE=None (per-frame CLIP)"
    elif temporal is None:
        temporal, temporal_source = DEFAULT_TEMPORAL, "Open-VCLIP/FROSTER configs (TemporalCLIP_*_8x16_STAdapter.yaml)"
    else:
        temporal_source = f"checkpoint cfg MODEL.TEMPORAL_MODELING_TYPE={temporal}"
    sources["temporal"] = temporal_source
    sources["template"] = "one of Open-VCLIP's 28 templates (their test averages all 28 per class)"
    return {"preprocessing": preprocessing, "train_config": config, "temporal": temporal, "defaults_from": sources,
            "template": "a video of {}."}
