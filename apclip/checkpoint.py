"""Load CLIP / ViFi-CLIP / AP-CLIP checkpoints safely; write this project's own format.

Formats, detected automatically:
- `openai`: a plain OpenAI CLIP state_dict (`visual.*`, `transformer.*`, ...).
- `openai-torchscript`: OpenAI's released TorchScript archives (ViT-B-16.pt), read by
  `torchscript_reader` without running the archive's code.
- `vificlip`: ViFi-CLIP / AP-CLIP training checkpoints, `{"model": state_dict, ...}` with `module.`,
  `image_encoder.`, `text_encoder.`, `prompt_learner.` prefixes and no `token_embedding.weight`
  (that comes from the base OpenAI CLIP file passed as `base=`).
- `apclip`: this project's own checkpoint (`save_checkpoint`): state_dict + model config + labels +
  preprocessing + prompt-bank hash + training config.

Everything else is read only with `torch.load(weights_only=True)`: a pickle that needs code is refused.
"""
from __future__ import annotations

import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig
from .errors import CheckpointError
from .model import CLIP, build_model, config_from_state_dict
from .safe_pickle import is_torchscript_archive, load_torch_zip, read_torchscript_tensors

OWN_FORMAT = "apclip-checkpoint"
OWN_FORMAT_VERSION = 1
# Non-parameter entries OpenAI archives carry (build_model in openai/CLIP deletes the same).
_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")


@dataclass
class Checkpoint:
    model: CLIP
    format: str  # openai | openai-torchscript | vificlip | apclip
    path: Path
    labels: list[str] | None = None
    preprocessing: dict[str, Any] | None = None  # e.g. {"normalize": "imagenet255", "frames": 8}
    prompt_bank_sha256: str | None = None
    train_config: dict[str, Any] = field(default_factory=dict)


def _torch_load(path: Path) -> Any:
    """torch.load(weights_only=True), mmap where the format allows; for files it rejects only
    because of a known plain-data class (ViFi-CLIP's yacs config), the restricted zip reader."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc) and "zip" not in str(exc):
                raise
            # Legacy (non-zip) torch.save files cannot be memory-mapped.
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as first:
        try:
            return load_torch_zip(str(path))
        except pickle.UnpicklingError:
            raise first from None


def read_checkpoint_object(path: str | os.PathLike) -> tuple[Any, bool]:
    """The unpickled object and whether it came from a TorchScript archive. Never runs code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (pass the path of a .pt/.pth file)")
    try:
        if is_torchscript_archive(str(path)):
            return read_torchscript_tensors(str(path)), True
        return _torch_load(path), False
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {path} needs code to unpickle and was refused; nothing in it was run "
            f"({_refusal_reason(exc)}). Re-save its state_dict with torch.save(model.state_dict(), ...)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is not a readable torch file: {_first_line(exc)}") from None


def _refusal_reason(exc: BaseException) -> str:
    """The global the unpickler refused, out of torch's long weights_only message."""
    match = re.search(r"(GLOBAL [\w.]+|refused global [\w.]+|Can only [^\n]+)", str(exc))
    return match.group(1) if match else _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def openai_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the non-parameter entries OpenAI archives carry (ints stored as tensors, attention masks)."""
    return {k: v for k, v in tensors.items() if k not in _OPENAI_EXTRAS and not k.endswith(".attn_mask")}


def vificlip_state_dict(model_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ViFi-CLIP keys to OpenAI's; prompt-learner buffers (precomputed prompts) are dropped."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in model_sd.items():
        k = key[len("module."):] if key.startswith("module.") else key
        if k.startswith("prompt_learner."):
            continue
        if k.startswith("image_encoder."):
            k = "visual." + k[len("image_encoder."):]
        elif k.startswith("text_encoder."):
            k = k[len("text_encoder."):]
        if k in renamed:
            raise CheckpointError(f"two ViFi-CLIP keys map to {k}")
        renamed[k] = value
    return renamed


def load_checkpoint(path: str | os.PathLike, *, base: str | os.PathLike | None = None) -> Checkpoint:
    """Load any supported checkpoint into a float32 eval-mode CLIP plus the metadata it carries."""
    path = Path(path)
    obj, scripted = read_checkpoint_object(path)
    meta: dict[str, Any] = {}
    if scripted:
        fmt, sd = "openai-torchscript", openai_state_dict(obj)
    elif isinstance(obj, dict) and obj.get("format") == OWN_FORMAT:
        fmt, sd = "apclip", obj.get("state_dict")
        if not _is_state_dict(sd):
            raise CheckpointError(f"checkpoint {path} is an apclip checkpoint without a state_dict")
        meta = obj
    elif isinstance(obj, dict) and _is_state_dict(obj.get("model")):
        fmt, sd = "vificlip", vificlip_state_dict(obj["model"])
    elif isinstance(obj, dict) and _is_state_dict(obj.get("state_dict")):
        fmt, sd = "openai", openai_state_dict(obj["state_dict"])
    elif _is_state_dict(obj):
        fmt, sd = "openai", openai_state_dict(obj)
    else:
        raise CheckpointError(
            f"checkpoint {path} is not a CLIP state_dict, a ViFi-CLIP/AP-CLIP training checkpoint "
            f"or an apclip checkpoint (top-level type {type(obj).__name__})")

    if "token_embedding.weight" not in sd:
        sd = dict(sd)
        sd["token_embedding.weight"] = _token_embedding_from_base(path, base)
    model = _build(path, sd, meta.get("model_config"))
    return Checkpoint(
        model=model, format=fmt, path=path,
        labels=list(meta["labels"]) if meta.get("labels") else None,
        preprocessing=dict(meta["preprocessing"]) if meta.get("preprocessing") else None,
        prompt_bank_sha256=meta.get("prompt_bank_sha256"),
        train_config=dict(meta.get("train_config") or {}),
    )


def load_model(path: str | os.PathLike, *, base: str | os.PathLike | None = None) -> CLIP:
    """The CLIP model of any supported checkpoint (float32, eval mode)."""
    return load_checkpoint(path, base=base).model


def _token_embedding_from_base(path: Path, base: str | os.PathLike | None) -> torch.Tensor:
    if base is None:
        raise CheckpointError(
            f"checkpoint {path} has no token_embedding.weight (ViFi-CLIP checkpoints omit it): pass the "
            f"OpenAI CLIP file it was fine-tuned from with --base (e.g. ViT-B-16.pt)")
    base_obj, scripted = read_checkpoint_object(base)
    if isinstance(base_obj, dict) and not scripted:
        base_obj = base_obj.get("state_dict", base_obj) if not _is_state_dict(base_obj) else base_obj
    weight = base_obj.get("token_embedding.weight") if isinstance(base_obj, dict) else None
    if not isinstance(weight, torch.Tensor):
        raise CheckpointError(f"base checkpoint {base} has no token_embedding.weight (is it an OpenAI CLIP file?)")
    return weight


def _build(path: Path, sd: dict[str, torch.Tensor], config: dict[str, Any] | None) -> CLIP:
    try:
        cfg = ModelConfig.from_dict(config) if config else config_from_state_dict(sd)
        return build_model(sd, cfg)
    except KeyError as exc:
        raise CheckpointError(f"checkpoint {path} lacks {exc.args[0]}; is it a CLIP ViT checkpoint?") from None
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit the CLIP model: {exc}") from None


def save_checkpoint(path: str | os.PathLike, model: CLIP, *, labels: list[str] | None = None,
                    preprocessing: dict[str, Any] | None = None, prompt_bank_sha256: str | None = None,
                    train_config: dict[str, Any] | None = None) -> Path:
    """Write this project's checkpoint format atomically (temporary file, then rename)."""
    path = Path(path)
    payload = {
        "format": OWN_FORMAT,
        "version": OWN_FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "model_config": model.config.to_dict(),
        "labels": list(labels) if labels else None,
        "preprocessing": dict(preprocessing) if preprocessing else None,
        "prompt_bank_sha256": prompt_bank_sha256,
        "train_config": dict(train_config or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
