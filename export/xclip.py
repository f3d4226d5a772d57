"""X-CLIP (Hugging Face `transformers` XCLIPModel folders) -> apclip bundle.

transformers' own modules are exported (not a transcription), so the bundle computes what
XCLIPModel.forward computes (modeling_x_clip.py):

    vision.onnx            pixels [B, T, 3, R, R] -> embeddings [B, 1 + L, E]
                           row 0: the MIT video embedding, L2-normalised (visual_projection + mit);
                           rows 1..L: `img_features`, the prompt generator's visual input
                           (prompts_visual_layernorm, @ prompts_visual_projection, mean over the T frames)
    text.onnx              tokens [M, L] -> text_projection(pooled EOT state) [M, E], NOT normalised
                           (the prompt generator shifts the raw text embedding)
    prompt_generator.onnx  text [B, K, E], visual [B, L, E] -> shift [B, K, E] (prompts_generator)

and the `xclip` protocol (engine/scoring/xclip_scorer.py) finishes the forward per view:
text + shift, normalise, logit_scale x cosine with the video embedding, softmax over the classes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from apclip.export.errors import ExportError

CONFIG = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
PROMPT_GENERATOR_FILE = "prompt_generator.onnx"
GENERATOR_INPUTS = ("text", "visual")
GENERATOR_OUTPUT = "shift"
# X-CLIP's zero-shot test tokenizes the bare class name (the prompt generator does the prompting).
XCLIP_TEMPLATE = "{}"
# Buffers some transformers versions saved and others recompute: never a missing or unexpected weight.
_IGNORABLE = ("position_ids",)


def is_xclip_folder(path: str | os.PathLike) -> bool:
    """A directory with a config.json whose model_type is xclip."""
    config = Path(path) / CONFIG
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") == "xclip"
    except (ValueError, OSError, AttributeError):
        return False


def load_xclip(folder: str | os.PathLike):
    """(XCLIPModel float32 eval, weights file) from a save_pretrained folder; weights loaded safely
    (safetensors, or torch.load weights_only=True); missing / unexpected keys are one error line."""
    import torch
    from transformers import XCLIPConfig, XCLIPModel

    folder = Path(folder)
    try:
        config = XCLIPConfig.from_dict(json.loads((folder / CONFIG).read_text(encoding="utf-8")))
    except (ValueError, OSError, TypeError) as exc:
        raise ExportError(f"X-CLIP folder {folder}: {CONFIG} is unreadable ({' '.join(str(exc).split())[:160]})") from None
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise ExportError(f"X-CLIP folder {folder} has no {' or '.join(WEIGHT_FILES)}; download the whole "
                          f"model folder (config.json and weights)")
    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(weights))
        else:
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable or unsafe file is one line
        raise ExportError(f"X-CLIP weights {weights} are unreadable or not plain tensors "
                          f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExportError(f"X-CLIP weights {weights} are not a state dict of tensors")
    model = XCLIPModel(config).float().eval()
    expected = {k for k in model.state_dict() if not k.endswith(_IGNORABLE)}
    given = {k for k in state if not k.endswith(_IGNORABLE)}
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        raise ExportError(f"X-CLIP weights {weights} do not fit its {CONFIG}: {len(missing)} missing key(s) "
                          f"{missing[:3]}, {len(unexpected)} unexpected key(s) {unexpected[:3]}")
    try:
        model.load_state_dict({k: v.float() for k, v in state.items() if k in expected}, strict=False)
    except RuntimeError as exc:
        raise ExportError(f"X-CLIP weights {weights}: {' '.join(str(exc).split())[:240]}") from None
    return model, weights


def _modules():
    import torch
    from torch import nn

    class XclipVision(nn.Module):
        """pixels [B, T, 3, R, R] -> [B, 1 + L, E]: normalised video embedding, then img_features."""

        def __init__(self, model):
            super().__init__()
            self.m = model

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            m = self.m
            b, t, c, h, w = pixels.shape
            out = m.vision_model(pixel_values=pixels.reshape(-1, c, h, w))
            cls = m.visual_projection(out[1]).reshape(b, t, -1)  # [B, T, E]
            video = m.mit(cls)[1]  # [B, E]
            video = video / video.norm(p=2, dim=-1, keepdim=True)
            img = m.prompts_visual_layernorm(out[0][:, 1:, :]) @ m.prompts_visual_projection  # [B*T, L, E]
            img = img.reshape(b, t, -1, video.shape[-1]).mean(dim=1)  # [B, L, E]
            return torch.cat([video[:, None], img], dim=1)

    class XclipText(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.m = model

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.m.text_projection(self.m.text_model(input_ids=tokens)[1])

    class XclipGenerator(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.g = model.prompts_generator

        def forward(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
            return self.g(text, visual)

    return XclipVision, XclipText, XclipGenerator


def export_xclip_graphs(model, work: Path, frames: int, opset: int, clips_max: int = 64) -> None:
    """vision.onnx, text.onnx and prompt_generator.onnx of `model` into `work`."""
    import torch

    from apclip.bundle import EMBEDDINGS_OUTPUT, TEXT_FILE, TEXT_INPUT, VISION_FILE, VISION_INPUT
    from apclip.export.onnx_export import _export

    vision_cls, text_cls, gen_cls = _modules()
    r = model.config.vision_config.image_size
    e = model.config.projection_dim
    b = torch.export.Dim("B", min=1, max=clips_max)
    _export(vision_cls(model).eval(), (torch.randn(2, frames, 3, r, r),), work / VISION_FILE, [VISION_INPUT],
            [EMBEDDINGS_OUTPUT], {VISION_INPUT: {0: b}}, opset)
    m, length = torch.export.Dim("M", min=1, max=4096), torch.export.Dim("L", min=2, max=77)
    tokens = torch.randint(1, 1000, (3, 7))
    tokens[:, -1] = 49407
    _export(text_cls(model).eval(), (tokens,), work / TEXT_FILE, [TEXT_INPUT], [EMBEDDINGS_OUTPUT],
            {TEXT_INPUT: {0: m, 1: length}}, opset)
    k = torch.export.Dim("K", min=1, max=100_000)
    grid = (r // model.config.vision_config.patch_size) ** 2
    _export(gen_cls(model).eval(), (torch.randn(2, 3, e), torch.randn(2, grid, e)), work / PROMPT_GENERATOR_FILE,
            list(GENERATOR_INPUTS), [GENERATOR_OUTPUT],
            {GENERATOR_INPUTS[0]: {0: b, 1: k}, GENERATOR_INPUTS[1]: {0: b}}, opset)


def model_config_of(model) -> dict[str, Any]:
    """The manifest's `model` record (apclip.config.ModelConfig fields) of an XCLIPModel."""
    c, v, t = model.config, model.config.vision_config, model.config.text_config
    return {"embed_dim": c.projection_dim, "image_resolution": v.image_size, "vision_layers": v.num_hidden_layers,
            "vision_width": v.hidden_size, "vision_patch_size": v.patch_size,
            "context_length": t.max_position_embeddings, "vocab_size": t.vocab_size,
            "transformer_width": t.hidden_size, "transformer_heads": t.num_attention_heads,
            "transformer_layers": t.num_hidden_layers}
