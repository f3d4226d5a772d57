"""Load CLIP / ViFi-CLIP / AP-CLIP checkpoints safely; write this project's own format.

Formats, detected automatically:
- `openai`: a plain OpenAI CLIP state_dict (`visual.*`, `transformer.*`, ...).
- `openai-torchscript`: OpenAI's released TorchScript archives (ViT-B-16.pt), whose tensors
  `safe_pickle` reads without running the archive's code.
- `vificlip`: ViFi-CLIP / AP-CLIP training checkpoints, `{"model": state_dict, ...}` with `module.`,
  `image_encoder.`, `text_encoder.`, `prompt_learner.` prefixes and no `token_embedding.weight`
  (that comes from the base OpenAI CLIP file passed as `base=`).
- `openvclip`: Open-VCLIP / FROSTER PySlowFast files (`swa_*.pth`: `{"model_state": {"model.<CLIP key>": ...}}`,
  apclip.pyslowfast), whose vision tower attends across neighbour frames (apclip.temporal_vit).
- `apclip`: this project's own checkpoint (`save_checkpoint`): state_dict + model config + labels +
  preprocessing + prompt-bank hash + training config.

Everything else is read with `torch.load(weights_only=True)`, or, for zips that pickle a known plain-data
class (ViFi-CLIP's yacs config), with `safe_pickle`'s allow-list reader: a pickle that needs code is refused
before any of it runs. Each format also implies a pixel normalisation and a preprocessing profile, reported
in `preprocessing`; a ViFi-CLIP config adds its frames, clips, crops and resolution (DATA.*, TEST.*) and its
single prompt template (TRAINER.ViFi_CLIP.CTX_INIT / ZS_EVAL). `defaults_from` says where each came from.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from apclip.config import ModelConfig
from apclip.errors import CheckpointError
from apclip.model import CLIP, build_model, config_from_state_dict
from apclip.safe_pickle import is_torchscript_archive, load_torch_zip, read_torchscript_tensors
from apclip.fileio import atomic_write

OWN_FORMAT = "apclip-checkpoint"
OWN_FORMAT_VERSION = 1
# The pixel normalisation each format was trained with (config.NORMALIZATIONS); apclip checkpoints
# carry theirs. ViFi-CLIP, and AP-CLIP trained the same way, normalise 0-255 RGB with ImageNet constants.
_FORMAT_NORMALIZATION = {"openai": "clip", "openai-torchscript": "clip", "vificlip": "imagenet255", "apclip": "clip",
                         "openvclip": "clip"}
# The preprocessing profile (apclip.preprocessing) each format's own code used; apclip checkpoints carry theirs
# (none recorded: the profile bundles had before profiles existed).
_FORMAT_PROFILE = {"openai": "clip", "openai-torchscript": "clip", "vificlip": "vificlip", "apclip": "apclip",
                   "openvclip": "clip"}
# Non-parameter entries OpenAI archives carry (build_model in openai/CLIP deletes the same).
_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")


@dataclass
class Checkpoint:
    model: CLIP
    format: str  # openai | openai-torchscript | vificlip | openvclip | apclip
    path: Path
    labels: list[str] | None = None
    preprocessing: dict[str, Any] | None = None  # e.g. {"normalize": "imagenet255", "profile": "vificlip", "frames": 8}
    prompt_bank_sha256: str | None = None
    train_config: dict[str, Any] = field(default_factory=dict)
    template: str | None = None  # the single prompt per class its code used (ViFi-CLIP's CTX_INIT), if known
    # Where each value of `preprocessing` and `template` came from, e.g. {"frames": "checkpoint config DATA.NUM_FRAMES"}
    defaults_from: dict[str, str] = field(default_factory=dict)
    # Clip-level vision attention (apclip.temporal_vit.TEMPORAL_ATTENTIONS), None for per-frame towers
    temporal: str | None = None
    patching: Any = None  # apclip.patching.Patching when the weights were patched with the original CLIP
    dropped_keys: list[str] = field(default_factory=list)  # training-only keys not loaded (FROSTER's raw_model.*)


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
    except pickle.UnpicklingError:
        if not zipfile.is_zipfile(path):
            raise
        # A refusal from this reader names the global really at fault, not the first plain-data class.
        return load_torch_zip(str(path))


# torch.save stores zip members uncompressed; a deflated member that inflates far beyond its size is a zip
# bomb (a 2 MB file reached 4.5 GB RSS). $APCLIP_MAX_CHECKPOINT_GB bounds the total inflated size too.
MAX_INFLATE_RATIO = 100
MAX_CHECKPOINT_BYTES = int(float(os.environ.get("APCLIP_MAX_CHECKPOINT_GB", "64")) * (1 << 30))


def _check_zip_sizes(path: Path) -> None:
    """Refuse a zip checkpoint whose members (as declared in its directory) would inflate past the limits,
    before torch reads a byte of them."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # torch.load reports a damaged file in its own words
    total = sum(m.file_size for m in members)
    bomb = next((m for m in members if m.compress_type != zipfile.ZIP_STORED
                 and m.file_size > max(1 << 20, MAX_INFLATE_RATIO * m.compress_size)), None)
    if bomb is not None or total > MAX_CHECKPOINT_BYTES:
        what = (f"member {bomb.filename} inflates {bomb.compress_size} bytes to {bomb.file_size}" if bomb else
                f"its members add up to {total} bytes (limit {MAX_CHECKPOINT_BYTES}, APCLIP_MAX_CHECKPOINT_GB)")
        raise CheckpointError(f"checkpoint {path} was refused before loading: {what} (a zip bomb?); "
                              f"torch.save writes members uncompressed")


def read_checkpoint_object(path: str | os.PathLike) -> tuple[Any, bool]:
    """The unpickled object and whether it came from a TorchScript archive. Never runs code."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist (pass the path of a .pt/.pth file)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file (pass the path of a .pt/.pth file)")
    if zipfile.is_zipfile(path):
        _check_zip_sizes(path)
    try:
        if is_torchscript_archive(str(path)):
            return read_torchscript_tensors(str(path)), True
        return _torch_load(path), False
    except pickle.UnpicklingError as exc:
        refused = _refused_global(exc)
        if refused is None:
            raise CheckpointError(f"checkpoint {path} is not a readable torch file (damaged, truncated or "
                                  f"another format): pickle: {_unpickling_reason(exc)}") from None
        raise CheckpointError(
            f"checkpoint {path} needs code to unpickle ({refused}) and was refused; nothing in it was run. "
            f"Re-save its state_dict with torch.save(model.state_dict(), ...)"
        ) from None
    except Exception as exc:  # a damaged or foreign file can fail anywhere inside torch's or our reader
        raise CheckpointError(
            f"checkpoint {path} is not a readable torch file (damaged, truncated or another format): "
            f"{_describe(exc)}"
        ) from None


def _refused_global(exc: BaseException) -> str | None:
    """The global an unpickler refused (torch: 'GLOBAL posix.system ...', ours: 'refused global ...')."""
    match = re.search(r"(?:GLOBAL|refused global) ([\w.]+)", str(exc))
    return match.group(1) if match else None


def _unpickling_reason(exc: BaseException) -> str:
    """The cause out of torch's long weights_only message (e.g. 'Unsupported operand 200')."""
    match = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(exc))
    return match.group(1).strip() if match else _first_sentence(exc)


def _first_sentence(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0].split(". ")[0][:300] if lines else ""


def _describe(exc: BaseException) -> str:
    sentence = _first_sentence(exc)
    return f"{type(exc).__name__}: {sentence}" if sentence else type(exc).__name__


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


def load_checkpoint(path: str | os.PathLike, *, base: str | os.PathLike | None = None,
                    patch_ratio: float | None = None) -> Checkpoint:
    """Load any supported checkpoint into a float32 eval-mode CLIP plus the metadata it carries.

    patch_ratio: interpolate with the original CLIP `base` (apclip.patching): old * r + new * (1 - r)."""
    from apclip.pyslowfast import is_pyslowfast, pyslowfast_metadata, pyslowfast_state_dict

    path = Path(path)
    obj, scripted = read_checkpoint_object(path)
    meta: dict[str, Any] = {}
    dropped: list[str] = []
    if scripted:
        fmt, sd = "openai-torchscript", openai_state_dict(obj)
    elif isinstance(obj, dict) and obj.get("format") == OWN_FORMAT:
        fmt, sd = "apclip", obj.get("state_dict")
        if not _is_state_dict(sd):
            raise CheckpointError(f"checkpoint {path} is an apclip checkpoint without a state_dict")
        if not isinstance(obj.get("version"), int) or obj["version"] > OWN_FORMAT_VERSION:
            raise CheckpointError(f"checkpoint {path} has apclip checkpoint version {obj.get('version')!r}; this "
                                  f"apclip reads up to {OWN_FORMAT_VERSION}: upgrade apclip")
        meta = obj
    elif is_pyslowfast(obj) and not scripted:
        fmt, meta = "openvclip", pyslowfast_metadata(obj)
        sd, dropped = pyslowfast_state_dict(obj["model_state"])
    elif isinstance(obj, dict) and _is_state_dict(obj.get("model")):
        fmt, sd = "vificlip", vificlip_state_dict(obj["model"])
        meta = _vificlip_metadata(obj.get("config"))
    elif isinstance(obj, dict) and _is_state_dict(obj.get("state_dict")):
        fmt, sd = "openai", openai_state_dict(obj["state_dict"])
    elif _is_state_dict(obj):
        fmt, sd = "openai", openai_state_dict(obj)
    else:
        raise CheckpointError(
            f"checkpoint {path} is not a CLIP state_dict, a ViFi-CLIP/AP-CLIP training checkpoint, an "
            f"Open-VCLIP/FROSTER .pth or an apclip checkpoint (top-level type {type(obj).__name__})")

    # Only a CLIP-looking state_dict is missing just the token embedding; others get build's key list.
    if "token_embedding.weight" not in sd and (base is not None or {"visual.proj", "text_projection"} <= set(sd)):
        sd = dict(sd)
        sd["token_embedding.weight"] = _token_embedding_from_base(path, base)
    patching = None
    if patch_ratio is not None:
        sd, patching = _patch(path, sd, base, patch_ratio)
    model = _build(path, sd, meta.get("model_config"))
    preprocessing = dict(meta.get("preprocessing") or {"normalize": _FORMAT_NORMALIZATION[fmt]})
    defaults_from = dict(meta.get("defaults_from") or {})
    for key in preprocessing:
        defaults_from.setdefault(key, f"checkpoint ({fmt})" if meta.get("preprocessing") else f"checkpoint format {fmt}")
    if "profile" not in preprocessing:
        preprocessing["profile"] = _FORMAT_PROFILE[fmt]
        defaults_from["profile"] = (f"checkpoint format {fmt}" if fmt != "apclip" else
                                    "apclip checkpoint without a profile (the profile of bundles before profiles)")
    return Checkpoint(
        model=model, format=fmt, path=path,
        labels=list(meta["labels"]) if meta.get("labels") else None,
        preprocessing=preprocessing,
        prompt_bank_sha256=meta.get("prompt_bank_sha256"),
        train_config=dict(meta.get("train_config") or {}),
        template=meta.get("template"),
        defaults_from=defaults_from,
        temporal=meta.get("temporal"),
        patching=patching,
        dropped_keys=dropped,
    )


def _patch(path: Path, sd: dict[str, torch.Tensor], base: str | os.PathLike | None, ratio: float):
    """Open-VCLIP's weight patching with the original CLIP `base` (apclip.patching)."""
    from apclip.bundle import sha256_file
    from apclip.patching import Patching, check_ratio, patch_state_dict

    check_ratio(ratio)
    if base is None or not Path(base).is_file():
        raise CheckpointError(f"--patch-ratio needs the original CLIP weights: pass --base ViT-B-16.pt (the OpenAI "
                              f"CLIP {path.name} was fine-tuned from)" + (f"; {base} does not exist" if base else ""))
    original = _base_state_dict(base)
    patched, n_patched, n_kept = patch_state_dict(sd, original, ratio)
    return patched, Patching(float(ratio), Path(base).name, sha256_file(base), n_patched, n_kept)


def _base_state_dict(base: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The original CLIP's state_dict with OpenAI key names (TorchScript archive or a plain state_dict)."""
    obj, scripted = read_checkpoint_object(base)
    if isinstance(obj, dict) and not scripted and not _is_state_dict(obj):
        obj = obj.get("state_dict")  # an apclip checkpoint or a {"state_dict": ...} wrapper
    if not _is_state_dict(obj) or "visual.proj" not in obj:
        raise CheckpointError(f"base checkpoint {base} is not an OpenAI CLIP ViT state_dict (pass ViT-B-16.pt)")
    return openai_state_dict(obj)


# ViFi-CLIP config entries -> preprocessing keys (TEST.NUM_CROP is turned into the crops its pipeline takes).
_VIFICLIP_CONFIG = {"frames": "DATA.NUM_FRAMES", "resolution": "DATA.INPUT_SIZE", "clips": "TEST.NUM_CLIP",
                    "crops": "TEST.NUM_CROP"}


def _config_value(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _vificlip_metadata(config: Any) -> dict[str, Any]:
    """ViFi-CLIP's yacs config (if pickled alongside) as plain dicts, and the preprocessing and single prompt
    template it implies (datasets/build.py's test pipeline, trainers/vificlip.py's VLPromptLearner)."""
    from apclip.preprocessing import vificlip_crops
    from apclip.scoring_protocol import vificlip_template

    config = _plain_dict(config) if isinstance(config, dict) else {}
    preprocessing: dict[str, Any] = {"normalize": _FORMAT_NORMALIZATION["vificlip"], "profile": "vificlip"}
    sources = {"normalize": "checkpoint format vificlip", "profile": "checkpoint format vificlip"}
    for key, dotted in _VIFICLIP_CONFIG.items():
        value = _config_value(config, dotted)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            preprocessing[key] = vificlip_crops(value) if key == "crops" else value
            sources[key] = f"checkpoint config {dotted}={value}"
    ctx_init = _config_value(config, "TRAINER.ViFi_CLIP.CTX_INIT")
    zs_eval = _config_value(config, "TRAINER.ViFi_CLIP.ZS_EVAL") is True
    template = vificlip_template(ctx_init if isinstance(ctx_init, str) else None, zs_eval)
    sources["template"] = ("checkpoint config TRAINER.ViFi_CLIP.ZS_EVAL" if zs_eval else
                           "checkpoint config TRAINER.ViFi_CLIP.CTX_INIT" if isinstance(ctx_init, str) else
                           "ViFi-CLIP's default CTX_INIT 'a photo of a'")
    return {"preprocessing": preprocessing, "train_config": config, "template": template, "defaults_from": sources}


def _plain_dict(node: dict) -> dict[str, Any]:
    return {str(k): _plain_dict(v) if isinstance(v, dict) else v for k, v in node.items()}


def load_model(path: str | os.PathLike, *, base: str | os.PathLike | None = None,
               patch_ratio: float | None = None) -> CLIP:
    """The CLIP model of any supported checkpoint (float32, eval mode)."""
    return load_checkpoint(path, base=base, patch_ratio=patch_ratio).model


def _token_embedding_from_base(path: Path, base: str | os.PathLike | None) -> torch.Tensor:
    if base is None:
        raise CheckpointError(
            f"checkpoint {path} has no token_embedding.weight (ViFi-CLIP checkpoints omit it): pass the "
            f"OpenAI CLIP file it was fine-tuned from with --base (e.g. ViT-B-16.pt)")
    if not Path(base).is_file():
        raise CheckpointError(f"base checkpoint {base} does not exist (pass the OpenAI CLIP file, e.g. ViT-B-16.pt)")
    base_obj, scripted = read_checkpoint_object(base)
    if isinstance(base_obj, dict) and not scripted and not _is_state_dict(base_obj):
        base_obj = base_obj.get("state_dict")  # an apclip checkpoint or a {"state_dict": ...} wrapper
    weight = base_obj.get("token_embedding.weight") if isinstance(base_obj, dict) else None
    if not isinstance(weight, torch.Tensor):
        raise CheckpointError(f"base checkpoint {base} has no token_embedding.weight (pass an OpenAI CLIP file)")
    return weight


def _build(path: Path, sd: dict[str, torch.Tensor], config: dict[str, Any] | None) -> CLIP:
    """build_model with its errors (missing, unexpected, wrong-shape keys) as one-line CheckpointErrors."""
    try:
        cfg = ModelConfig.from_dict(config) if config else config_from_state_dict(sd)
        return build_model(sd, cfg)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit the CLIP model: {exc}") from None


def _plain_data(data: dict[str, Any]) -> dict[str, Any]:
    """JSON types only (Paths and other objects become strings, tuples lists): anything else would make
    torch.load(weights_only=True) refuse the checkpoint when it is read back."""
    return json.loads(json.dumps(data, default=str))


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
        "labels": [str(label) for label in labels] if labels else None,
        "preprocessing": _plain_data(preprocessing) if preprocessing else None,
        "prompt_bank_sha256": prompt_bank_sha256,
        "train_config": _plain_data(train_config or {}),
    }
    with atomic_write(path, "wb") as f:
        torch.save(payload, f)
    return path
