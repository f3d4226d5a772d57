"""--explain as a person reads it: per top class, the few prompts its frames chose most, with how many
frames chose each and their similarity (the full per-frame detail goes to --json and --report)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from apclip.engine.predictions import Explanation


@dataclass(frozen=True)
class PromptChoice:
    prompt: str
    frames: int  # frame embeddings (all views) whose best prompt in this class it is
    mean_similarity: float
    best_similarity: float


def prompt_choices(explanation: Explanation) -> list[PromptChoice]:
    """The prompts chosen by the class's frames, most chosen first (ties: higher mean similarity)."""
    chosen: dict[str, list[float]] = {}
    for match in explanation.frames:
        chosen.setdefault(match.prompt, []).append(match.similarity)
    choices = [PromptChoice(p, len(s), sum(s) / len(s), max(s)) for p, s in chosen.items()]
    return sorted(choices, key=lambda c: (-c.frames, -c.mean_similarity, c.prompt))


def format_explain_summary(explanations: Iterable[Explanation], prompts_per_class: int = 3,
                           width: int = 100, attributes: dict[tuple[str, str], str] | None = None) -> list[str]:
    """attributes: (label, prompt) -> "scene: location" (prompt_attributes of a bank), shown when known."""
    attributes = attributes or {}
    lines = []
    for e in explanations:
        if e.views is not None:  # vificlip: ViFi-CLIP scores views (mean-pooled frames), not frames
            lines.append(f"  why '{e.label}' ({e.score:.4f}): per view, softmax probability (summed)")
            lines += [f"    view {v.view} frames {v.first_frame}-{v.last_frame} @ {v.start:7.2f}-{v.end:.2f}s  "
                      f"cos {v.similarity:.3f}  p {v.probability:.4f}  {v.prompt}" for v in e.views]
            continue
        choices = prompt_choices(e)
        total = len(e.frames)
        lines.append(f"  why '{e.label}' ({e.score:.4f}): {total} frames chose {len(choices)} prompt(s)")
        for c in choices[:prompts_per_class]:
            text = c.prompt if len(c.prompt) <= width else c.prompt[:width - 3] + "..."
            attribute = attributes.get((e.label, c.prompt))
            tag = f"[{attribute}] " if attribute else ""
            lines.append(f"    {c.frames:3d}/{total} frames  sim {c.mean_similarity:.3f}  {tag}{text}")
        if len(choices) > prompts_per_class:
            rest = sum(c.frames for c in choices[prompts_per_class:])
            lines.append(f"    ... {len(choices) - prompts_per_class} more prompt(s) chosen by {rest} frame(s) "
                         f"(all in --json / --report)")
    return lines


def prompt_attributes(bank) -> dict[tuple[str, str], str]:
    """(label, full prompt text) -> "scene: location" from a prompt bank's entries (when it has aspects)."""
    if bank is None:
        return {}
    from apclip.prompt_bank import format_prompt

    out = {}
    for label in bank.labels:
        for entry in bank.entries(label):
            if entry.aspect:
                name = f"{entry.aspect}: {entry.attribute}" if entry.attribute else entry.aspect
                out[(label, format_prompt(label, entry.text))] = name
    return out
