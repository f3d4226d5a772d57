"""The prompt bank: per class label, the LLM-written descriptions that become AP-CLIP's prompts.

A bank is a JSON file written by `apclip-prompts generate` and read by export and training:

    {"format": "apclip-prompt-bank", "format_version": 1, "sha256": "<content hash>",
     "strategy": "action-centric", "model": "gpt-4o-mini", "settings": {...},
     "graph": {... the attribute graph used, or null ...},
     "classes": [{"label": "archery",
                  "prompts": [{"aspect": "scene", "attribute": "location", "llm_prompt": 0,
                               "text": "An outdoor range with targets."}, ...]}, ...],
     "review": null or {"csv": "review.csv", "rejected": 3}}

Each description becomes the prompt `format_prompt(label, text)` = "a video of {label}. {text}".
The content hash covers every field but `sha256` itself, so it changes exactly when the prompts or
the settings that produced them change. This module is torch-free and openai-free.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from apclip.config import PROMPT_PREFIX
from apclip.errors import ApclipError
from apclip.fileio import atomic_write

BANK_FORMAT = "apclip-prompt-bank"
BANK_FORMAT_VERSION = 1
GRAPH_FORMAT = "apclip-attribute-graph"
GRAPH_FORMAT_VERSION = 1
# Graph names become JSON-schema property names in LLM requests: keep them plain identifiers.
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class PromptBankError(ApclipError):
    """A prompt bank or attribute graph file that is missing, malformed or inconsistent."""


def format_prompt(label: str, description: str | None = None) -> str:
    """The text the CLIP text encoder sees: "a video of {label}. {description}".

    An empty description (the `single` strategy stores one) gives the bare "a video of {label}.".
    """
    head = PROMPT_PREFIX.format(label=label) + "."
    if description is None or not description.strip():
        return head
    return f"{head} {description.strip()}"


@dataclass(frozen=True)
class Attribute:
    name: str  # identifier used as the JSON key in LLM answers, e.g. "body_part_movement"
    definition: str  # one sentence sent to the LLM so it knows what to describe


@dataclass(frozen=True)
class Aspect:
    name: str  # "scene", "actor", "body"
    definition: str
    attributes: tuple[Attribute, ...]


@dataclass(frozen=True)
class AttributeGraph:
    """The Hierarchical Attribute Graph: aspects, each with attributes that distinguish actions."""

    aspects: tuple[Aspect, ...]
    # False for a candidate written by `apclip-prompts derive`: a person must check it before use.
    reviewed: bool = True

    @property
    def attribute_count(self) -> int:
        return sum(len(a.attributes) for a in self.aspects)

    def slots(self) -> list[tuple[str, str]]:
        """(aspect, attribute) pairs in graph order: the deterministic order of a class's prompts."""
        return [(aspect.name, attr.name) for aspect in self.aspects for attr in aspect.attributes]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": GRAPH_FORMAT, "format_version": GRAPH_FORMAT_VERSION, "reviewed": self.reviewed,
            "aspects": [
                {"name": a.name, "definition": a.definition,
                 "attributes": [{"name": t.name, "definition": t.definition} for t in a.attributes]}
                for a in self.aspects
            ],
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "graph") -> "AttributeGraph":
        """Validate and parse; every problem is reported with where it is."""
        if not isinstance(data, dict) or not isinstance(data.get("aspects"), list) or not data["aspects"]:
            raise PromptBankError(f"{source}: expected an object with a non-empty list \"aspects\"")
        version = data.get("format_version", GRAPH_FORMAT_VERSION)
        if version != GRAPH_FORMAT_VERSION:
            raise PromptBankError(f"{source}: graph format_version {version} is not supported "
                                  f"(this apclip reads {GRAPH_FORMAT_VERSION})")
        aspects: list[Aspect] = []
        seen: set[str] = set()
        for i, raw in enumerate(data["aspects"]):
            where = f"{source}: aspects[{i}]"
            name, definition = _name_and_definition(raw, where)
            attrs_raw = raw.get("attributes")
            if not isinstance(attrs_raw, list) or not attrs_raw:
                raise PromptBankError(f"{where} ({name}): needs a non-empty list \"attributes\"")
            attributes = []
            for j, attr in enumerate(attrs_raw):
                attr_name, attr_def = _name_and_definition(attr, f"{where}.attributes[{j}]")
                if attr_name in seen:
                    raise PromptBankError(f"{where}.attributes[{j}]: attribute {attr_name!r} appears twice; "
                                          f"attribute names must be unique across the graph")
                seen.add(attr_name)
                attributes.append(Attribute(attr_name, attr_def))
            if name in {a.name for a in aspects}:
                raise PromptBankError(f"{where}: aspect {name!r} appears twice")
            aspects.append(Aspect(name, definition, tuple(attributes)))
        reviewed = data.get("reviewed", True)
        if not isinstance(reviewed, bool):
            raise PromptBankError(f"{source}: \"reviewed\" must be true or false")
        return cls(tuple(aspects), reviewed)


def _name_and_definition(raw: Any, where: str) -> tuple[str, str]:
    if not isinstance(raw, dict):
        raise PromptBankError(f"{where}: expected an object with \"name\" and \"definition\"")
    name, definition = raw.get("name"), raw.get("definition")
    if not isinstance(name, str) or not _NAME.match(name):
        raise PromptBankError(f"{where}: name {name!r} must be lower-case snake_case (e.g. \"movement_speed\")")
    if not isinstance(definition, str) or not definition.strip():
        raise PromptBankError(f"{where} ({name}): needs a non-empty \"definition\" string")
    return name, definition.strip()


@dataclass(frozen=True)
class PromptEntry:
    aspect: str | None  # None for strategies without a graph (direct, cupl, set, single)
    attribute: str | None
    llm_prompt: int  # index of the LLM question template (or of the fixed template for `set`)
    text: str  # the post-processed description; "" means the bare "a video of {label}."

    def to_dict(self) -> dict[str, Any]:
        return {"aspect": self.aspect, "attribute": self.attribute, "llm_prompt": self.llm_prompt,
                "text": self.text}


@dataclass(frozen=True)
class ClassPrompts:
    label: str
    entries: tuple[PromptEntry, ...]


@dataclass(frozen=True)
class PromptBank:
    strategy: str
    model: str | None  # the LLM that wrote the descriptions; None for template strategies
    settings: dict[str, Any]  # everything else that shaped the text (templates, limits, temperature)
    graph: AttributeGraph | None
    classes: tuple[ClassPrompts, ...]
    review: dict[str, Any] | None = None  # set by apply-review
    _index: dict[str, ClassPrompts] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, ClassPrompts] = {}
        for cls in self.classes:
            if cls.label in index:
                raise PromptBankError(f"prompt bank lists label {cls.label!r} twice")
            index[cls.label] = cls
        object.__setattr__(self, "_index", index)

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.classes]

    def descriptions(self, label: str) -> list[str] | None:
        """The label's descriptions in the bank's order; None when the bank has no entry for it."""
        cls = self._index.get(label)
        return None if cls is None else [e.text for e in cls.entries]

    def prompts(self, label: str) -> list[str] | None:
        """The full prompts ("a video of {label}. ...") for a label; None when the bank lacks it."""
        texts = self.descriptions(label)
        return None if texts is None else [format_prompt(label, t) for t in texts]

    def entries(self, label: str) -> tuple[PromptEntry, ...]:
        return self._index[label].entries

    def to_dict(self) -> dict[str, Any]:
        """The file's content without the hash."""
        return {
            "format": BANK_FORMAT, "format_version": BANK_FORMAT_VERSION,
            "strategy": self.strategy, "model": self.model, "settings": self.settings,
            "graph": None if self.graph is None else self.graph.to_dict(),
            "classes": [{"label": c.label, "prompts": [e.to_dict() for e in c.entries]} for c in self.classes],
            "review": self.review,
        }

    @cached_property
    def sha256(self) -> str:
        return content_sha256(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, source: str = "prompt bank") -> "PromptBank":
        if not isinstance(data, dict) or data.get("format") != BANK_FORMAT:
            raise PromptBankError(f"{source}: not an apclip prompt bank (no \"format\": \"{BANK_FORMAT}\"); "
                                  f"write one with `apclip-prompts generate`")
        if data.get("format_version") != BANK_FORMAT_VERSION:
            raise PromptBankError(f"{source}: format_version {data.get('format_version')!r} is not supported "
                                  f"(this apclip reads {BANK_FORMAT_VERSION})")
        try:
            graph = None if data.get("graph") is None else AttributeGraph.from_dict(data["graph"], source)
            classes = []
            for i, raw in enumerate(data["classes"]):
                label = raw["label"]
                if not isinstance(label, str) or not label.strip():
                    raise PromptBankError(f"{source}: classes[{i}] has an empty label")
                entries = tuple(
                    PromptEntry(p["aspect"], p["attribute"], int(p["llm_prompt"]), str(p["text"]))
                    for p in raw["prompts"]
                )
                classes.append(ClassPrompts(label, entries))
            bank = cls(str(data["strategy"]), data.get("model"), dict(data.get("settings") or {}), graph,
                       tuple(classes), data.get("review"))
        except PromptBankError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise PromptBankError(f"{source}: malformed prompt bank ({type(exc).__name__}: {exc}); "
                                  f"regenerate it with `apclip-prompts generate`") from None
        stored = data.get("sha256")
        if stored is not None and stored != bank.sha256:
            raise PromptBankError(f"{source}: content does not match its sha256 (edited by hand?); change "
                                  f"banks with `apclip-prompts apply-review`, or delete the \"sha256\" field "
                                  f"to accept the edits")
        return bank


def content_sha256(content: dict[str, Any]) -> str:
    """Hash of canonical JSON (sorted keys, no spaces, UTF-8): independent of file formatting."""
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def load_prompt_bank(path: str | os.PathLike) -> PromptBank:
    from apclip.fileio import read_user_text

    path = Path(path)
    if not os.path.lexists(path):
        raise PromptBankError(f"prompt bank {path} does not exist; write one with `apclip-prompts generate`")
    text = read_user_text(path, f"prompt bank {path}", PromptBankError)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PromptBankError(f"prompt bank {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise PromptBankError(f"prompt bank {path} nests too deeply to be a prompt bank") from None
    return PromptBank.from_dict(data, source=f"prompt bank {path}")


def save_prompt_bank(bank: PromptBank, path: str | os.PathLike) -> Path:
    content = bank.to_dict()
    # The hash goes first so that a person opening the file sees it.
    document = {"sha256": bank.sha256, **content}
    return write_json_atomic(path, document)


def write_json_atomic(path: str | os.PathLike, document: Any) -> Path:
    return write_text_atomic(path, json.dumps(document, ensure_ascii=False, indent=1) + "\n")


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write to a temporary file in the same directory, fsync, then rename over `path`.

    A crash leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)
    return path
