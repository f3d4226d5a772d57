"""CLIP ViT image and text encoders, with OpenAI's state_dict key names.

The reference every backend is checked against. Semantics follow openai/CLIP `clip/model.py`:
pre-LN residual blocks, QuickGELU, a causal mask on text, EOT pooling by argmax of token ids,
unnormalised outputs from `encode_image` / `encode_text`. Attention runs through
`scaled_dot_product_attention` so one graph serves eager, ONNX export and torch.compile.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from apclip.config import ModelConfig


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input and weight dtypes (fp16 LayerNorm overflows in CLIP;
    weights are cast too, so a model.half() still runs: torch has no float-input, half-weight kernel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention holding nn.MultiheadAttention's parameter names."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        n, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # [N, L, 3W]
        # [N, L, 3W] -> [3, N, H, L, W/H]
        qkv = qkv.reshape(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=causal)
        out = out.transpose(1, 2).reshape(n, length, width)  # [N, H, L, W/H] -> [N, L, W]
        return self.out_proj(out)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = Attention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(width * 4, width)),
        ]))
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, causal: bool):
        super().__init__()
        self.causal = causal
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])
        # Training (apclip-train --grad-checkpointing): recompute each block in backward to save memory.
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, L, W] batch-first
        for block in self.resblocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint

                x = checkpoint(block, x, self.causal, use_reentrant=False)
            else:
                x = block(x, self.causal)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, resolution: int, patch: int, width: int, layers: int, heads: int, out_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((resolution // patch) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, causal=False)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.transformer(self.tokens(x)))

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, R, R] -> [N, g*g+1, W]: patch and class tokens with positions, after ln_pre."""
        x = self.conv1(x.to(self.conv1.weight.dtype))  # [N, W, g, g]
        x = x.flatten(2).transpose(1, 2)  # [N, W, g*g] -> [N, g*g, W]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # [N, 1, W]
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # [N, g*g+1, W]
        return self.ln_pre(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """[N, L, W] -> [N, E]: the class token, ln_post, projection."""
        return self.ln_post(x[:, 0, :]) @ self.proj  # [N, W] @ [W, E] -> [N, E]


class CLIP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.visual = VisionTransformer(c.image_resolution, c.vision_patch_size, c.vision_width,
                                        c.vision_layers, c.vision_heads, c.embed_dim)
        self.transformer = Transformer(c.transformer_width, c.transformer_layers, c.transformer_heads, causal=True)
        self.token_embedding = nn.Embedding(c.vocab_size, c.transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(c.context_length, c.transformer_width))
        self.ln_final = LayerNorm(c.transformer_width)
        self.text_projection = nn.Parameter(torch.empty(c.transformer_width, c.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.initialize_parameters()

    def initialize_parameters(self) -> None:
        """OpenAI CLIP's init, so random presets have realistic activation scales."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        for transformer in (self.transformer, self.visual.transformer):
            width = transformer.resblocks[0].ln_1.normalized_shape[0] if len(transformer.resblocks) else 1
            layers = max(1, len(transformer.resblocks))
            proj_std = (width ** -0.5) * ((2 * layers) ** -0.5)
            attn_std = width ** -0.5
            fc_std = (2 * width) ** -0.5
            for block in transformer.resblocks:
                nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
                nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
                nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
                nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=self.config.transformer_width ** -0.5)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """[N, 3, R, R] normalised pixels -> [N, E] image embeddings (not normalised)."""
        return self.visual(image.to(self.dtype))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """[M, L] token ids -> [M, E] text embeddings (not normalised), pooled at the EOT token."""
        x = self.token_embedding(tokens).to(self.dtype)  # [M, L, W]
        x = x + self.positional_embedding[: tokens.shape[1]].to(self.dtype)
        x = self.ln_final(self.transformer(x))
        # EOT has the largest id in CLIP's vocabulary. int32 because ONNX Runtime's ArgMax has no int64 kernel.
        eot = tokens.to(torch.int32).argmax(dim=-1)  # [M]
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection  # [M, E]

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """[B, V, T, 3, R, R] clips -> [B, V, T, E] L2-normalised frame embeddings."""
        b, v, t = video.shape[:3]
        frames = video.reshape(b * v * t, *video.shape[3:])  # [B, V, T, 3, R, R] -> [B*V*T, 3, R, R]
        emb = l2_normalize(self.encode_image(frames).float())
        return emb.reshape(b, v, t, -1)  # [B*V*T, E] -> [B, V, T, E]

    def forward(self, image: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP's image-text logits (for parity with OpenAI's forward)."""
        img = F.normalize(self.encode_image(image), dim=-1)
        txt = F.normalize(self.encode_text(tokens), dim=-1)
        logits_per_image = self.logit_scale.exp() * img @ txt.t()
        return logits_per_image, logits_per_image.t()


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows scaled to unit L2 norm; spelled with ReduceSum + Sqrt so ONNX opset 17 keeps it simple."""
    return x / (x * x).sum(dim=-1, keepdim=True).sqrt().clamp_min(eps)


class _Embedder(nn.Module):
    """One tower of a CLIP model with L2-normalised float32 outputs (state_dict keys stay clip.*)."""

    def __init__(self, clip: CLIP):
        super().__init__()
        self.clip = clip


class ImageEmbedder(_Embedder):
    """[N, 3, R, R] -> [N, E] normalised: the graph exported as vision.onnx and run by the torch runner.

    normalize=False keeps the raw features, which the vificlip scoring protocol mean-pools per view
    before normalising (as ViFi-CLIP does)."""

    def __init__(self, clip: CLIP, normalize: bool = True):
        super().__init__(clip)
        self.normalize = normalize

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.clip.encode_image(pixels).float()
        return l2_normalize(features) if self.normalize else features


class TextEmbedder(_Embedder):
    """[M, L] token ids -> [M, E] normalised: the graph exported as text.onnx."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return l2_normalize(self.clip.encode_text(tokens).float())


# The keys whose shapes carry the sizes (openai/CLIP `build_model` reads the same), with their ranks.
_SIZE_KEYS = {"visual.conv1.weight": 4, "visual.positional_embedding": 2, "visual.proj": 2,
              "positional_embedding": 2, "token_embedding.weight": 2, "ln_final.weight": 1, "text_projection": 2}


def config_from_state_dict(state_dict: dict[str, torch.Tensor]) -> ModelConfig:
    """Read every size from key names and tensor shapes (as openai/CLIP `build_model` does).

    Raises ValueError naming the keys it needs and lacks (ResNet CLIPs have no `visual.proj`)."""
    sd = state_dict
    missing = [k for k in _SIZE_KEYS if k not in sd]
    if missing:
        raise ValueError(f"missing keys {_short(missing)} that give the model's sizes "
                         f"(only CLIP ViT state_dicts are supported)")
    wrong = [f"{k}: rank {sd[k].dim()} != {rank}" for k, rank in _SIZE_KEYS.items() if sd[k].dim() != rank]
    if wrong:
        raise ValueError(f"wrong shapes {_short(wrong)}")
    vision_width = sd["visual.conv1.weight"].shape[0]
    patch = sd["visual.conv1.weight"].shape[-1]
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = sd["ln_final.weight"].shape[0]
    return ModelConfig(
        embed_dim=sd["text_projection"].shape[1],
        image_resolution=patch * grid,
        vision_layers=_count_blocks(sd, "visual.transformer.resblocks."),
        vision_width=vision_width,
        vision_patch_size=patch,
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=sd["token_embedding.weight"].shape[0],
        transformer_width=text_width,
        transformer_heads=max(1, text_width // 64),
        transformer_layers=_count_blocks(sd, "transformer.resblocks."),
    )


def _count_blocks(sd: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in sd if (m := pattern.match(k))})


def build_model(state_dict: dict[str, torch.Tensor], config: ModelConfig | None = None) -> CLIP:
    """A float32 CLIP in eval mode holding exactly `state_dict`; sizes come from the shapes.

    Missing or unexpected keys and wrong shapes raise ValueError naming them; nothing is half-loaded.
    """
    config = config or config_from_state_dict(state_dict)
    with torch.device("meta"):
        model = CLIP(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(f"{k}: {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
                   for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape)
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes {_short(wrong)}")
    if problems:
        raise ValueError("; ".join(problems))
    model.load_state_dict({k: v.detach().to(torch.float32) for k, v in state_dict.items()}, assign=True)
    return model.eval()


def build_preset(name: str, seed: int = 0) -> CLIP:
    """A random-init model of a named preset (tests, benchmarks, demos)."""
    torch.manual_seed(seed)
    return CLIP(ModelConfig.from_name(name)).eval()


def _short(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)})"
