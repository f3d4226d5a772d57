"""The Hierarchical Attribute Graph: the shipped default, user files, and LLM-derived candidates.

The default (apclip/data/attribute_graph.json) follows the paper's examples: Scene, Actor and Body,
four attributes each. `derive_graph` runs the paper's first step, asking the LLM which attributes
within each aspect best distinguish actions; its result is written with "reviewed": false and
generation refuses it until a person has checked it and set "reviewed": true.
"""
from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from apclip.prompt_bank import Aspect, Attribute, AttributeGraph, PromptBankError

from apclip.export.prompts.client import ChatClient

DEFAULT_GRAPH_RESOURCE = "data/attribute_graph.json"
_MAX_EXAMPLE_LABELS = 40  # enough to show the LLM the kind of actions without a huge request


class UnreviewedGraphError(PromptBankError):
    pass


def default_graph() -> AttributeGraph:
    text = resources.files("apclip").joinpath(DEFAULT_GRAPH_RESOURCE).read_text(encoding="utf-8")
    return AttributeGraph.from_dict(json.loads(text), source=f"apclip/{DEFAULT_GRAPH_RESOURCE}")


def load_graph(path: str | Path | None = None, require_reviewed: bool = True) -> AttributeGraph:
    """The graph at `path` (the shipped default when None); unreviewed candidates are refused."""
    if path is None:
        return default_graph()
    from apclip.fileio import read_user_text

    path = Path(path)
    text = read_user_text(path, f"attribute graph {path}", PromptBankError)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise PromptBankError(f"attribute graph {path} is not a readable JSON file ({exc})") from None
    graph = AttributeGraph.from_dict(data, source=f"attribute graph {path}")
    if require_reviewed and not graph.reviewed:
        raise UnreviewedGraphError(
            f"attribute graph {path} is an unreviewed candidate from `apclip-prompts derive`: check and edit "
            f"its attributes, then set \"reviewed\": true in the file")
    return graph


def snake_case(name: str) -> str:
    """"Body-part movement" -> "body_part_movement": graph names must be plain identifiers."""
    words = re.findall(r"[a-z0-9]+", name.lower())
    text = "_".join(words)
    return text if text and text[0].isalpha() else f"attr_{text}"


def derive_schema(base: AttributeGraph) -> dict[str, Any]:
    item = {"type": "object", "additionalProperties": False, "required": ["name", "definition"],
            "properties": {"name": {"type": "string", "description": "short snake_case attribute name"},
                           "definition": {"type": "string", "description": "one-sentence definition"}}}
    return {"type": "object", "additionalProperties": False, "required": [a.name for a in base.aspects],
            "properties": {a.name: {"type": "array", "items": item, "description": a.definition}
                           for a in base.aspects}}


def derive_messages(base: AttributeGraph, per_aspect: int, labels: Sequence[str] = ()) -> list[dict[str, str]]:
    aspects = "\n".join(f"- {a.name}: {a.definition}" for a in base.aspects)
    examples = ""
    if labels:
        shown = ", ".join(f'"{label}"' for label in labels[:_MAX_EXAMPLE_LABELS])
        examples = f"\nThe actions to tell apart include: {shown}."
    return [
        {"role": "system", "content": "You design attribute taxonomies for describing human actions in videos, "
                                      "so that a vision-language model can recognise them."},
        {"role": "user", "content": f"We describe every action through these aspects:\n{aspects}\n"
                                    f"For each aspect, name the {per_aspect} attributes that best distinguish "
                                    f"different actions from one another in a video. Give each attribute a "
                                    f"short snake_case name and a one-sentence definition of what to "
                                    f"describe.{examples}"},
    ]


def graph_from_answer(answer: dict[str, Any], base: AttributeGraph, per_aspect: int) -> AttributeGraph:
    aspects = []
    for aspect in base.aspects:
        items = answer[aspect.name][:per_aspect]
        attributes = tuple(Attribute(snake_case(i["name"]), " ".join(i["definition"].split())) for i in items)
        aspects.append(Aspect(aspect.name, aspect.definition, attributes))
    return AttributeGraph(tuple(aspects), reviewed=False)


def validate_derived(answer: dict[str, Any], base: AttributeGraph, per_aspect: int) -> list[str]:
    problems = []
    seen: set[str] = set()
    for aspect in base.aspects:
        items = answer.get(aspect.name, [])
        if len(items) < per_aspect:
            problems.append(f"\"{aspect.name}\" has {len(items)} attributes, {per_aspect} are needed")
        for item in items[:per_aspect]:
            name = snake_case(item.get("name", ""))
            if name in seen:
                problems.append(f"attribute \"{name}\" appears twice; names must be unique")
            seen.add(name)
    return problems


def derive_graph(client: ChatClient, per_aspect: int = 4, labels: Sequence[str] = (),
                 base: AttributeGraph | None = None) -> AttributeGraph:
    """A candidate graph (reviewed=False) with `per_aspect` LLM-chosen attributes per aspect of `base`."""
    if per_aspect < 1:
        raise PromptBankError(f"--attributes-per-aspect must be at least 1, got {per_aspect}")
    base = base or default_graph()
    answer = client.complete_json(derive_messages(base, per_aspect, labels), derive_schema(base),
                                  "attribute_graph", lambda a: validate_derived(a, base, per_aspect))
    return graph_from_answer(answer, base, per_aspect)
