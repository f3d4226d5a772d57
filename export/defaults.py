"""What an export decides about frames and scores: explicit options, else the checkpoint's, else the paper's.

Every value is reported with where it came from, so a user sees which of them the checkpoint chose:

    profile   --profile > the checkpoint's (its format: OpenAI -> clip, ViFi-CLIP -> vificlip) > apclip
    frames, clips, crops, normalisation
              --frames/--clips/--crops/--normalize > the checkpoint's (ViFi-CLIP config DATA.NUM_FRAMES,
              TEST.NUM_CLIP, TEST.NUM_CROP) > the paper's 8 x 2 x 2 (crops: 1 for the clip profile)
    scoring   --scoring > vificlip for a ViFi-CLIP checkpoint exported without --prompts > ensemble for an
              Open-VCLIP/FROSTER checkpoint (the protocol AP-CLIP's paper used on Open-VCLIP) > maka
    vision    the checkpoint's: per-frame, or clip-level with its temporal attention (Open-VCLIP cfg
              MODEL.TEMPORAL_MODELING_TYPE, else their configs' expand_temporal_view)
    patch     --patch-ratio r with --base (weights old * r + new * (1 - r)), else none: Open-VCLIP's test
              scripts patch with 0.5, FROSTER's do not, and their .pth files do not say which they are
    template  --template > the checkpoint's (ViFi-CLIP's CTX_INIT / ZS_EVAL) > "a video of {label}."

The vificlip profile takes ViFi-CLIP's crop rule for whatever number of crops it is given: 3 -> ThreeCrop,
anything else -> one centre crop (TEST.NUM_CROP = 2 is one centre crop in ViFi-CLIP's own code).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from apclip.config import DEFAULT_CLIPS, DEFAULT_CROPS, DEFAULT_FRAMES
from apclip.preprocessing import PROFILE_NORMALIZATION, Preprocessing, vificlip_crops
from apclip.scoring_protocol import DEFAULT_TEMPLATE, Scoring

from apclip.export.errors import ExportError


@dataclass
class ExportChoices:
    preprocessing: Preprocessing
    scoring: Scoring
    sources: dict[str, str] = field(default_factory=dict)  # name -> where its value came from
    notes: list[str] = field(default_factory=list)  # adjustments the user should know about
    vision: str = "per-frame"  # per-frame | clip-level <temporal attention>
    patch_ratio: float | None = None  # weight patching applied at load (None: none)

    def lines(self) -> list[str]:
        pre, sc = self.preprocessing, self.scoring
        values = {"profile": pre.profile, "frames": pre.frames, "clips": pre.clips, "crops": pre.crops,
                  "normalize": pre.normalization.name, "scoring": sc.protocol, "template": repr(sc.template),
                  "logit_scale": f"{sc.logit_scale:.4g}" if sc.logit_scale else "-", "vision": self.vision,
                  "patch_ratio": "-" if self.patch_ratio is None else f"{self.patch_ratio:g}"}
        return [f"  {name:12s} {value!s:22s} ({self.sources.get(name, '?')})" for name, value in values.items()] + \
            [f"  note: {note}" for note in self.notes]


def _pick(name: str, option: Any, checkpoint: dict[str, Any], ckpt_sources: dict[str, str], default: Any,
          default_source: str, sources: dict[str, str]) -> Any:
    if option is not None:
        sources[name] = "option"
        return option
    if checkpoint.get(name) is not None:
        sources[name] = ckpt_sources.get(name, "checkpoint")
        return checkpoint[name]
    sources[name] = default_source
    return default


def choose(checkpoint, *, profile: str | None = None, frames: int | None = None, clips: int | None = None,
           crops: int | None = None, normalize: str | None = None, scoring: str | None = None,
           template: str | None = None, has_bank: bool = False) -> ExportChoices:
    """The bundle's Preprocessing and Scoring for a loaded apclip.checkpoint.Checkpoint and the export options."""
    pre = dict(checkpoint.preprocessing or {})
    from_ckpt = dict(checkpoint.defaults_from or {})
    sources: dict[str, str] = {}
    notes: list[str] = []
    model_resolution = checkpoint.model.config.image_resolution
    if pre.get("resolution") not in (None, model_resolution):
        raise ExportError(f"checkpoint {checkpoint.path}: its config says input size {pre['resolution']} "
                          f"({from_ckpt.get('resolution', 'checkpoint')}), but its weights are for {model_resolution} px")
    chosen_profile = _pick("profile", profile, pre, from_ckpt, "apclip", "default", sources)
    n_frames = int(_pick("frames", frames, pre, from_ckpt, DEFAULT_FRAMES, "paper default", sources))
    n_clips = int(_pick("clips", clips, pre, from_ckpt, DEFAULT_CLIPS, "paper default", sources))
    default_crops = 1 if chosen_profile == "clip" else DEFAULT_CROPS
    n_crops = int(_pick("crops", crops, pre, from_ckpt, default_crops,
                        "CLIP's single centre crop" if chosen_profile == "clip" else "paper default", sources))
    if chosen_profile == "vificlip" and vificlip_crops(n_crops) != n_crops:
        notes.append(f"crops {n_crops} -> {vificlip_crops(n_crops)}: ViFi-CLIP's test pipeline takes one centre "
                     f"crop unless NUM_CROP is 3")
        sources["crops"] += f", {n_crops} -> ViFi-CLIP's single centre crop"
        n_crops = vificlip_crops(n_crops)
    if chosen_profile == "apclip":
        norm = _pick("normalize", normalize, pre, from_ckpt, "clip", "default", sources)
    else:
        norm = normalize or PROFILE_NORMALIZATION[chosen_profile]
        sources["normalize"] = "option" if normalize else f"{chosen_profile} profile"
        trained = pre.get("normalize")
        if normalize is None and trained not in (None, norm):
            notes.append(f"the checkpoint records normalisation {trained}, the {chosen_profile} profile uses {norm}")
    try:
        preprocessing = Preprocessing(frames=n_frames, clips=n_clips, crops=n_crops, resolution=model_resolution,
                                      normalization=norm, profile=chosen_profile)
    except ValueError as exc:
        hint = " (pass --profile apclip for 2 or 3 crops along the long side or another normalisation)" \
            if chosen_profile != "apclip" else ""
        raise ExportError(f"checkpoint {checkpoint.path}: {exc}{hint}; pass --frames/--clips/--crops/--profile") from None

    if scoring is not None:
        protocol, sources["scoring"] = scoring, "option"
    elif checkpoint.format == "vificlip" and not has_bank:
        protocol, sources["scoring"] = "vificlip", "ViFi-CLIP checkpoint without --prompts"
    elif checkpoint.format == "openvclip":
        protocol, sources["scoring"] = "ensemble", "the protocol AP-CLIP's paper used on Open-VCLIP"
    else:
        protocol = "maka"
        sources["scoring"] = "a prompt bank is given" if has_bank else f"default for {checkpoint.format} checkpoints"
    if protocol == "vificlip" and has_bank:
        raise ExportError("--scoring vificlip scores one prompt per class (ViFi-CLIP's): drop --prompts, or use "
                          "--scoring maka for a prompt bank")
    if template is not None:
        chosen_template, sources["template"] = template, "option"
    elif checkpoint.template is not None:
        chosen_template = checkpoint.template
        sources["template"] = from_ckpt.get("template", "checkpoint")
    else:
        chosen_template, sources["template"] = DEFAULT_TEMPLATE, "paper default"
    trainer = ((checkpoint.train_config or {}).get("TRAINER") or {}).get("ViFi_CLIP") or {}
    if checkpoint.format == "vificlip" and isinstance(trainer, dict) and trainer.get("PROMPT_MODEL") is True:
        notes.append("the checkpoint learned prompt vectors (TRAINER.ViFi_CLIP.PROMPT_MODEL); they are not used: "
                     f"classes are encoded from the template {chosen_template!r}")
    logit_scale = float(checkpoint.model.logit_scale.detach().exp())
    sources["logit_scale"] = "checkpoint logit_scale (exp)"
    try:
        chosen_scoring = Scoring(protocol, logit_scale, chosen_template)
    except ValueError as exc:
        raise ExportError(f"{exc}") from None
    temporal, patching = getattr(checkpoint, "temporal", None), getattr(checkpoint, "patching", None)
    vision = f"clip-level {temporal}" if temporal else "per-frame"
    sources["vision"] = from_ckpt.get("temporal", f"checkpoint format {checkpoint.format}")
    if patching is not None:
        sources["patch_ratio"] = f"option, with the original CLIP {patching.base}"
    elif checkpoint.format == "openvclip":
        sources["patch_ratio"] = "none given (Open-VCLIP's test scripts use --patch-ratio 0.5 --base ViT-B-16.pt)"
    else:
        sources["patch_ratio"] = "none given"
    return ExportChoices(preprocessing, chosen_scoring, sources, notes, vision,
                         patching.ratio if patching is not None else None)
