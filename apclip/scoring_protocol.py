"""How a bundle turns frame embeddings into class scores: the scoring protocol, recorded in the manifest.

    maka      AP-CLIP: MAKA (apclip.scoring.maka_score) over all frame embeddings of all views pooled into
              one set, against each class's prompts. What every bundle without a `scoring` entry means.
    vificlip  ViFi-CLIP's test (main.py validate): per view, mean-pool the T frame features (before any
              normalisation, as ViFi_CLIP.forward does), normalise, cosine x logit_scale with one prompt per
              class, softmax over the classes; the per-view probabilities are summed over views
              (apclip.scoring.vificlip_score). Scores lie in [0, V].
    ensemble  the prompt ensemble AP-CLIP's paper used on Open-VCLIP (their achieve_csf_matrix): each class's
              prompt embeddings averaged and normalised, cosine with the mean of all (normalised) frame or
              video embeddings of all views, normalised (apclip.scoring.mean_pool_score). Within one view it
              ranks as Open-VCLIP's test does (logit_scale x mean over frames of per-frame cosines).
    xclip     X-CLIP (transformers XCLIPModel.forward): per view, the prompt generator shifts each class's raw
              text embedding by the view's visual tokens, then softmax(logit_scale x cosine with the video
              embedding); probabilities averaged over views (apclip.engine.scoring.xclip_scorer).

The template is the text of a class without prompt-bank descriptions: "{}" or "{label}" marks the label.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PROTOCOLS = ("maka", "vificlip", "ensemble", "xclip")
DEFAULT_PROTOCOL = "maka"
DEFAULT_TEMPLATE = "a video of {label}."  # the paper's prefix, alone when a label has no descriptions
_PLACEHOLDERS = ("{label}", "{}")


def check_template(template: str) -> str:
    """The template, or ValueError when it does not mark the label exactly once."""
    if not isinstance(template, str) or sum(template.count(p) for p in _PLACEHOLDERS) != 1:
        raise ValueError(f"template {template!r} must contain the label placeholder {{}} (or {{label}}) exactly once, "
                         f"e.g. \"a photo of a {{}}.\"")
    return template


def format_template(template: str, label: str) -> str:
    """The template with the label in place (str.replace: braces in labels or elsewhere stay as they are)."""
    marker = "{label}" if "{label}" in template else "{}"
    return template.replace(marker, label, 1)


def vificlip_template(ctx_init: str | None, zs_eval: bool) -> str:
    """ViFi-CLIP's single prompt per class (VLPromptLearner without prompt learning): CTX_INIT with "_" as
    spaces, a space, the class name and "."; just the class name when ZS_EVAL is set."""
    if zs_eval:
        return "{}"
    return (ctx_init if ctx_init is not None else "a photo of a").replace("_", " ") + " {}."


@dataclass(frozen=True)
class Scoring:
    protocol: str = DEFAULT_PROTOCOL  # maka | vificlip | ensemble
    logit_scale: float | None = None  # exp(logit_scale) of the checkpoint; vificlip multiplies cosines by it
    template: str = DEFAULT_TEMPLATE  # text of a class without prompt-bank descriptions

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown scoring protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        if self.protocol in ("vificlip", "xclip") and not (self.logit_scale and self.logit_scale > 0):
            raise ValueError(f"the {self.protocol} scoring protocol needs the checkpoint's logit_scale (> 0)")
        check_template(self.template)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Scoring":
        """A manifest's `scoring` entry; None (bundles from before protocols) is MAKA with the paper's template."""
        if not data:
            return cls()
        scale = data.get("logit_scale")
        return cls(str(data.get("protocol", DEFAULT_PROTOCOL)), float(scale) if scale is not None else None,
                   str(data.get("template", DEFAULT_TEMPLATE)))
