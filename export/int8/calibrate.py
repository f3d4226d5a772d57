"""The int8 calibration set: clips of the user's videos (or the export's own verification video) through
the bundle's sampler and preprocessing, and the bundle's class prompts, split into the part that sets
the activation ranges and the held-out part the gate judges.

    apclip-export --precision fp32,int8 --calibrate videos/ @list.txt clip.mp4

Sources are taken as apclip-infer takes them (files, folders, globs, @lists; engine/video/sources_list.py).
Each video gives one clip, decoded and preprocessed exactly as at run time (engine/video/clips.py
load_clip with the bundle's Preprocessing): [V*T, 3, R, R]. Every 4th clip is held out. Without
sources, the views of the generated verification video stand in for clips (weak: say so).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from apclip.preprocessing import Preprocessing

from apclip.export.errors import ExportError

DEFAULT_MAX_CLIPS = 32  # "a few dozen": enough clips for MinMax ranges and a held-out set of 8
MAX_PROMPTS = 1024  # prompts taken from a large bank (evenly spread); a quarter of them held out
HOLD_OUT_EVERY = 4  # clip i is held out when i % 4 == 3


@dataclass(frozen=True)
class CalibrationSet:
    """What the int8 step calibrates on and what its gate checks (held-out: never used for ranges)."""

    clips: list[np.ndarray]  # [V*T, 3, R, R] float32 per calibration clip
    held_out: list[np.ndarray]  # [V*T, 3, R, R] float32 per held-out clip
    tokens: np.ndarray  # [M, L] int64 calibration prompts (cut after the last EOT)
    held_out_tokens: np.ndarray  # [M', L'] int64 held-out prompts
    source: str  # where the clips came from, for the log and the manifest
    sha256: str  # of every pixel and token above, in order: the manifest's calibration set hash

    def describe(self) -> str:
        return (f"{len(self.clips)} calibration + {len(self.held_out)} held-out clips from {self.source}; "
                f"{len(self.tokens)} + {len(self.held_out_tokens)} prompts")

    def to_dict(self) -> dict:
        return {"source": self.source, "sha256": self.sha256, "clips": len(self.clips),
                "held_out_clips": len(self.held_out), "frames_per_clip": int(self.clips[0].shape[0]),
                "prompts": int(len(self.tokens)), "held_out_prompts": int(len(self.held_out_tokens))}


def calibration_set(pre: Preprocessing, sources: Sequence[str] | None, prompt_texts: Sequence[str], *,
                    max_clips: int = DEFAULT_MAX_CLIPS, log: Callable[[str], None] = print) -> CalibrationSet:
    """The calibration set of an export; `prompt_texts`: the class matrix's prompts (and templated labels)."""
    if sources:
        clips, source = _source_clips(pre, sources, max_clips, log)
    else:
        clips, source = _verification_views(pre), "the generated verification video (no --calibrate given)"
        log(f"int8: no --calibrate sources: calibrating on {source}; pass your own videos for a real gate")
    held = {i for i in range(len(clips)) if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1} or {len(clips) - 1}
    calibration = [c for i, c in enumerate(clips) if i not in held]
    held_out = [c for i, c in enumerate(clips) if i in held]
    texts = list(dict.fromkeys(prompt_texts))  # unique, in order
    if len(texts) > MAX_PROMPTS:
        texts = [texts[i] for i in np.linspace(0, len(texts) - 1, MAX_PROMPTS).round().astype(int)]
    if len(texts) < 2:
        raise ExportError("int8 needs at least 2 distinct class prompts to calibrate and check the text encoder")
    held_texts = texts[HOLD_OUT_EVERY - 1::HOLD_OUT_EVERY] or texts[-1:]
    cal_texts = [t for t in texts if t not in set(held_texts)]
    tokens, held_tokens = _tokens(cal_texts), _tokens(held_texts)
    digest = hashlib.sha256()
    for array in calibration + held_out + [tokens, held_tokens]:
        digest.update(np.ascontiguousarray(array).tobytes())
    return CalibrationSet(calibration, held_out, tokens, held_tokens, source, digest.hexdigest())


def _tokens(texts: Sequence[str]) -> np.ndarray:
    from apclip.tokenizer import get_tokenizer

    from apclip.engine.runners.text_trim import trim_to_last_eot

    return trim_to_last_eot(get_tokenizer().tokenize(list(texts)))


def _source_clips(pre: Preprocessing, sources: Sequence[str], max_clips: int,
                  log: Callable[[str], None]) -> tuple[list[np.ndarray], str]:
    from apclip.engine.video.clips import load_clip
    from apclip.engine.video.preprocess import flatten_views
    from apclip.engine.video.sources_list import expand_sources, is_live

    items = expand_sources(sources, recursive=True)
    missing = [f"{i.path} ({i.missing})" for i in items if i.missing]
    if missing:
        raise ExportError(f"--calibrate: {', '.join(missing[:3])}: give existing videos, folders or @lists")
    if any(is_live(i.path) for i in items):
        raise ExportError("--calibrate takes recorded videos, folders or @lists, not a camera or a stream")
    if len(items) > max_clips:  # spread over the whole list, not its first folder
        picks = np.linspace(0, len(items) - 1, max_clips).round().astype(int)
        items = [items[i] for i in sorted(set(picks.tolist()))]
    clips = []
    for item in items:
        try:
            clips.append(flatten_views(load_clip(item.path, pre).views).astype(np.float32, copy=False))
        except Exception as exc:  # noqa: BLE001 - one bad video is skipped with its reason, not fatal
            log(f"int8: calibration source {item.path} skipped: {str(exc).strip().splitlines()[0]}")
    if len(clips) < 2:
        raise ExportError(f"--calibrate gave {len(clips)} usable clip(s); int8 needs at least 2 (one is held out)")
    return clips, f"{len(clips)} video(s) given to --calibrate"


def _verification_views(pre: Preprocessing) -> list[np.ndarray]:
    """The verification video's views (clips x crops), one pseudo-clip each."""
    from apclip.export.verify import generated_video_pixels

    pixels = generated_video_pixels(pre)  # [V*T, 3, R, R]
    views = pixels.reshape((-1, pre.frames) + pixels.shape[1:])  # [V, T, 3, R, R]
    return [np.ascontiguousarray(v) for v in views]
