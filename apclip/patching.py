"""Weight patching (WiSE-FT): fine-tuned weights interpolated with the original CLIP's, at export.

Open-VCLIP's test (tools/test_net.py, `TEST.PATCHING_MODEL`) does, for every key of the original CLIP
(`torch.jit.load(ViT-B-16.pt).state_dict()` without `input_resolution`, `context_length`, `vocab_size`):

    patched[key] = original[key] * ratio + finetuned[key] * (1 - ratio)

computed in each tensor's stored dtype (OpenAI's archive is fp16, so `original * ratio` rounds in fp16 and
the sum is promoted), and keeps every fine-tuned key the original CLIP lacks unpatched. Every key of the
original must be in the fine-tuned weights (their code raises KeyError otherwise; we name the keys).
With ratio 1 the result is exactly the original CLIP's weights; with 0, exactly the fine-tuned ones.
TC-CLIP uses 0.7, Open-VCLIP's test scripts 0.5.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from apclip.errors import CheckpointError


@dataclass(frozen=True)
class Patching:
    ratio: float  # weight of the original CLIP: old * ratio + new * (1 - ratio)
    base: str  # file name of the original CLIP
    base_sha256: str
    patched_keys: int  # keys interpolated (every key of the original CLIP)
    kept_keys: int  # fine-tuned keys the original lacks, kept as they are

    def to_dict(self) -> dict:
        return asdict(self)


def check_ratio(ratio: float) -> float:
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0.0 <= float(ratio) <= 1.0:
        raise CheckpointError(f"--patch-ratio {ratio!r}: must lie in [0, 1] (1 = the original CLIP, "
                              f"0 = the fine-tuned weights; Open-VCLIP uses 0.5)")
    return float(ratio)


def patch_state_dict(finetuned: dict[str, torch.Tensor], original: dict[str, torch.Tensor],
                     ratio: float) -> tuple[dict[str, torch.Tensor], int, int]:
    """(patched state_dict, keys patched, keys kept). Both dicts carry OpenAI CLIP key names."""
    ratio = check_ratio(ratio)
    missing = sorted(set(original) - set(finetuned))
    if missing:
        shown = ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")
        raise CheckpointError(f"cannot patch: the fine-tuned checkpoint lacks {len(missing)} key(s) of the original "
                              f"CLIP ({shown}); is --base the CLIP it was fine-tuned from?")
    wrong = sorted(f"{k}: {tuple(finetuned[k].shape)} vs {tuple(v.shape)}" for k, v in original.items()
                   if finetuned[k].shape != v.shape)
    if wrong:
        raise CheckpointError(f"cannot patch: shapes differ from the original CLIP's ({', '.join(wrong[:4])}); "
                              f"is --base the CLIP it was fine-tuned from (same size)?")
    patched = {key: original[key] * ratio + finetuned[key] * (1 - ratio) for key in original}
    kept = {key: value for key, value in finetuned.items() if key not in original}
    return {**patched, **kept}, len(patched), len(kept)
