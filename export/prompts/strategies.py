"""Prompt strategies (the paper's Table 6): what is asked of the LLM and how answers become descriptions.

- action-centric (AP-CLIP): per class and LLM-prompt, one request answered with one description per
  attribute of the Hierarchical Attribute Graph, as a structured JSON object {aspect: {attribute: text}}.
- direct: the LLM describes the action in N sentences, without the graph.
- cupl: CuPL-style (Pratt et al., 2023) questions customised with the class name, N answers each.
- set: a fixed ensemble of hand-written templates (ActionCLIP's), no LLM.
- single: just "a video of {label}.", no LLM.
An LLM-prompt is one of several distinct question templates; --llm-prompts picks the first N.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from apclip.prompt_bank import AttributeGraph, PromptBankError

STRATEGIES = ("action-centric", "direct", "cupl", "set", "single")
_DESCRIPTION_RULE = ("Each description is one or two short sentences (at most 25 words) about what is visible "
                     "in a typical video of the action; be concrete and visual, and do not start with the "
                     "action's name.")

ACTION_CENTRIC_SYSTEM = (
    "You are an expert on human actions and how they look in videos. You describe an action through a "
    "hierarchical attribute graph: aspects, each with attributes.\n{graph}\nWrite one description for every "
    "attribute. " + _DESCRIPTION_RULE
)
ACTION_CENTRIC_TEMPLATES = (
    'What are the distinguishing characteristics of the action "{label}" in a video? Describe each attribute.',
    'Describe what a video of someone performing "{label}" looks like, attribute by attribute.',
    'How would you recognise the action "{label}" in a short video clip? Answer for each attribute.',
    'Imagine a short video clip of "{label}". What would you see? Describe each attribute.',
    'What visual cues tell "{label}" apart from similar actions in a video? Answer for each attribute.',
)
DIRECT_SYSTEM = "You are an expert on human actions and how they look in videos. " + _DESCRIPTION_RULE
DIRECT_TEMPLATES = (
    'Describe the action "{label}" in {n} different descriptions.',
    'Give {n} different descriptions of what the action "{label}" looks like.',
    'Write {n} different descriptions of a person performing "{label}".',
    'Describe "{label}" as a human action in {n} different ways.',
    'List {n} different descriptions of the action "{label}".',
)
CUPL_TEMPLATES = (
    'What does a video of "{label}" look like? Give {n} different answers.',
    'How can you identify "{label}" in a video? Give {n} different answers.',
    'Describe a video frame of a person doing "{label}". Give {n} different answers.',
    'What are the visual signs that someone is doing "{label}"? Give {n} different answers.',
    'Describe a photo of "{label}" taken from a video. Give {n} different answers.',
)
# ActionCLIP's (Wang et al., 2021) text templates, appended to the standard "a video of {label}." prefix.
SET_TEMPLATES = (
    "A photo of action {label}.", "A picture of action {label}.", "Human action of {label}.",
    "{label}, an action.", "{label}, this is an action.", "{label}, a video of action.",
    "Playing action of {label}.", "Playing a kind of action, {label}.", "Doing a kind of action, {label}.",
    "Look, the human is {label}.", "Can you recognize the action of {label}?", "Video classification of {label}.",
    "A video of {label}.", "The man is {label}.", "The woman is {label}.",
)


@dataclass(frozen=True)
class LLMRequest:
    label: str
    llm_prompt: int  # which question template
    messages: list[dict[str, str]]
    schema: dict[str, Any]
    schema_name: str


@dataclass(frozen=True)
class RawDescription:
    aspect: str | None
    attribute: str | None
    text: str  # as the LLM (or template) wrote it, before post-processing


class Strategy(ABC):
    name: str
    uses_llm: bool = True
    schema: dict[str, Any] | None = None  # the JSON schema of one answer (LLM strategies)

    def __init__(self, llm_prompts: int, graph: AttributeGraph | None = None, per_prompt: int = 12):
        self.llm_prompts = llm_prompts
        self.graph = graph
        self.per_prompt = per_prompt  # descriptions per answer for direct and cupl

    def settings(self) -> dict[str, Any]:
        """What shapes the text, recorded in the bank (and the journal key) for reproducibility."""
        return {"llm_prompts": self.llm_prompts}

    def journal_key(self) -> dict[str, Any]:
        """Everything that shapes one request, whatever --llm-prompts is: a journal is reused only if equal."""
        return {}

    def request(self, label: str, llm_prompt: int) -> LLMRequest:
        raise NotImplementedError(f"the {self.name} strategy sends no requests")

    def validate(self, answer: Any) -> list[str]:
        """Problems beyond the JSON schema (counts); an empty list means valid."""
        return []

    @abstractmethod
    def descriptions(self, label: str, llm_prompt: int, answer: Any = None) -> list[RawDescription]:
        """The descriptions from one answer (or, without an LLM, from one template), in bank order."""

    def expected_output_tokens(self) -> int:
        """A generous guess of one answer's size in LLM tokens, for --dry-run."""
        return 0


class ActionCentric(Strategy):
    name = "action-centric"

    def __init__(self, llm_prompts: int, graph: AttributeGraph | None = None, per_prompt: int = 12):
        if graph is None:
            raise PromptBankError("the action-centric strategy needs an attribute graph")
        _check_count(llm_prompts, ACTION_CENTRIC_TEMPLATES)
        super().__init__(llm_prompts, graph, per_prompt)
        lines = []
        for aspect in graph.aspects:
            lines.append(f"- {aspect.name}: {aspect.definition}")
            lines += [f"  - {attr.name}: {attr.definition}" for attr in aspect.attributes]
        self.system = ACTION_CENTRIC_SYSTEM.format(graph="\n".join(lines))
        self.schema = {
            "type": "object", "additionalProperties": False, "required": [a.name for a in graph.aspects],
            "properties": {
                aspect.name: {
                    "type": "object", "additionalProperties": False, "description": aspect.definition,
                    "required": [t.name for t in aspect.attributes],
                    "properties": {t.name: {"type": "string", "description": t.definition}
                                   for t in aspect.attributes},
                } for aspect in graph.aspects
            },
        }

    def settings(self) -> dict[str, Any]:
        return {"llm_prompts": self.llm_prompts, "system": self.system,
                "templates": list(ACTION_CENTRIC_TEMPLATES[: self.llm_prompts])}

    def journal_key(self) -> dict[str, Any]:
        return {"system": self.system, "templates": list(ACTION_CENTRIC_TEMPLATES), "schema": self.schema}

    def request(self, label: str, llm_prompt: int) -> LLMRequest:
        user = ACTION_CENTRIC_TEMPLATES[llm_prompt].format(label=label)
        return LLMRequest(label, llm_prompt, [{"role": "system", "content": self.system},
                                              {"role": "user", "content": user}],
                          self.schema, "action_attributes")

    def descriptions(self, label: str, llm_prompt: int, answer: Any = None) -> list[RawDescription]:
        assert self.graph is not None
        return [RawDescription(aspect, attr, answer[aspect][attr]) for aspect, attr in self.graph.slots()]

    def expected_output_tokens(self) -> int:
        assert self.graph is not None
        return 40 * self.graph.attribute_count + 10


class _ListAnswer(Strategy):
    """Strategies whose answer is {"descriptions": [n strings]}."""

    system: str
    templates: tuple[str, ...]
    schema = {"type": "object", "additionalProperties": False, "required": ["descriptions"],
              "properties": {"descriptions": {"type": "array", "items": {"type": "string"}}}}

    def __init__(self, llm_prompts: int, graph: AttributeGraph | None = None, per_prompt: int = 12):
        _check_count(llm_prompts, self.templates)
        if per_prompt < 1:
            raise PromptBankError(f"--descriptions-per-prompt must be at least 1, got {per_prompt}")
        super().__init__(llm_prompts, None, per_prompt)

    def settings(self) -> dict[str, Any]:
        return {"llm_prompts": self.llm_prompts, "descriptions_per_prompt": self.per_prompt,
                "system": self.system, "templates": list(self.templates[: self.llm_prompts])}

    def journal_key(self) -> dict[str, Any]:
        return {"system": self.system, "templates": list(self.templates), "per_prompt": self.per_prompt}

    def request(self, label: str, llm_prompt: int) -> LLMRequest:
        user = self.templates[llm_prompt].format(label=label, n=self.per_prompt)
        return LLMRequest(label, llm_prompt, [{"role": "system", "content": self.system},
                                              {"role": "user", "content": user}],
                          self.schema, "action_descriptions")

    def validate(self, answer: Any) -> list[str]:
        got = len(answer["descriptions"])
        return [] if got >= self.per_prompt else [f"\"descriptions\" has {got} items, {self.per_prompt} are needed"]

    def descriptions(self, label: str, llm_prompt: int, answer: Any = None) -> list[RawDescription]:
        return [RawDescription(None, None, t) for t in answer["descriptions"][: self.per_prompt]]

    def expected_output_tokens(self) -> int:
        return 40 * self.per_prompt + 10


class Direct(_ListAnswer):
    name = "direct"
    system = DIRECT_SYSTEM
    templates = DIRECT_TEMPLATES


class CuPL(_ListAnswer):
    name = "cupl"
    system = DIRECT_SYSTEM
    templates = CUPL_TEMPLATES


class TemplateSet(Strategy):
    name = "set"
    uses_llm = False

    def __init__(self, llm_prompts: int = 1, graph: AttributeGraph | None = None, per_prompt: int = 12):
        super().__init__(len(SET_TEMPLATES), None, per_prompt)

    def settings(self) -> dict[str, Any]:
        return {"templates": list(SET_TEMPLATES)}

    def descriptions(self, label: str, llm_prompt: int, answer: Any = None) -> list[RawDescription]:
        return [RawDescription(None, None, SET_TEMPLATES[llm_prompt].format(label=label))]


class Single(Strategy):
    name = "single"
    uses_llm = False

    def __init__(self, llm_prompts: int = 1, graph: AttributeGraph | None = None, per_prompt: int = 12):
        super().__init__(1, None, per_prompt)

    def settings(self) -> dict[str, Any]:
        return {}

    def descriptions(self, label: str, llm_prompt: int, answer: Any = None) -> list[RawDescription]:
        return [RawDescription(None, None, "")]  # the bank's way of saying "a video of {label}." alone


def make_strategy(name: str, llm_prompts: int = 3, graph: AttributeGraph | None = None,
                  per_prompt: int = 12) -> Strategy:
    classes = {c.name: c for c in (ActionCentric, Direct, CuPL, TemplateSet, Single)}
    if name not in classes:
        raise PromptBankError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return classes[name](llm_prompts, graph, per_prompt)


def _check_count(llm_prompts: int, templates: tuple[str, ...]) -> None:
    if not 1 <= llm_prompts <= len(templates):
        raise PromptBankError(f"--llm-prompts must be between 1 and {len(templates)} (the distinct question "
                              f"templates available), got {llm_prompts}")
