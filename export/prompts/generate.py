"""Generation of a prompt bank: plan the (label, LLM-prompt) requests, resume from the journal, ask the
missing ones with bounded concurrency, then post-process every description into the bank.

The bank is only built when every request has an answer; failed requests are reported and a
rerun of the same command asks only for what is missing.
"""
from __future__ import annotations

import json
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from apclip.errors import ApclipError
from apclip.prompt_bank import ClassPrompts, PromptBank, PromptEntry, content_sha256

from apclip.export.prompts.client import (ChatClient, LLMFatalError, LLMSettings, Usage, request_body, rough_token_estimate,
                         run_bounded, validate_json)
from apclip.export.prompts.journal import AnswerKey, Journal, read_journal
from apclip.export.prompts.postprocess import MAX_DESCRIPTION_TOKENS, check_label_fits, check_prompt_fits, postprocess
from apclip.export.prompts.strategies import LLMRequest, Strategy


class GenerationIncomplete(ApclipError):
    """Some requests failed for good; their answers are missing from the journal."""


@dataclass
class GenerationReport:
    bank: PromptBank
    from_journal: int  # answers reused from an earlier, interrupted run
    fetched: int  # answers requested in this run
    truncated: int  # descriptions shortened to the token limit
    usage: Usage | None = None
    structured_output: bool | None = None  # None when no request was sent


def settings_sha256(strategy: Strategy, llm: LLMSettings) -> str:
    """Identifies the requests a journal holds answers to (independent of labels and --llm-prompts)."""
    return content_sha256({
        "strategy": strategy.name, "model": llm.model, "temperature": llm.temperature, "seed": llm.seed,
        "graph": None if strategy.graph is None else strategy.graph.to_dict(), "request": strategy.journal_key(),
    })


def plan_requests(strategy: Strategy, labels: list[str], done: dict[AnswerKey, Any] | None = None) -> list[LLMRequest]:
    """Requests for every (label, LLM-prompt) pair without an answer, label-major."""
    done = done or {}
    return [strategy.request(label, i) for label in labels for i in range(strategy.llm_prompts)
            if (label, i) not in done]


def bank_settings(strategy: Strategy, llm: LLMSettings | None, max_tokens: int) -> dict[str, Any]:
    settings = {**strategy.settings(), "max_description_tokens": max_tokens}
    if strategy.uses_llm and llm is not None:
        settings.update(temperature=llm.temperature, seed=llm.seed)
    return settings


def build_bank(strategy: Strategy, labels: list[str], answers: dict[AnswerKey, Any], llm: LLMSettings | None,
               max_tokens: int = MAX_DESCRIPTION_TOKENS) -> tuple[PromptBank, int]:
    """(bank, number of truncated descriptions) from complete answers, in label then LLM-prompt order."""
    classes = []
    truncated = 0
    for label in labels:
        entries = []
        for i in range(strategy.llm_prompts):
            answer = answers.get((label, i)) if strategy.uses_llm else None
            for raw in strategy.descriptions(label, i, answer):
                if not raw.text:  # the `single` strategy's bare prompt
                    entries.append(PromptEntry(raw.aspect, raw.attribute, i, ""))
                    continue
                desc = postprocess(raw.text, max_tokens)
                if not desc.text:
                    raise GenerationIncomplete(f"label {label!r} LLM-prompt {i}: a description is empty after "
                                               f"clean-up ({raw.text!r}); delete its journal line and rerun")
                check_prompt_fits(label, desc.text)
                truncated += desc.truncated
                entries.append(PromptEntry(raw.aspect, raw.attribute, i, desc.text))
        classes.append(ClassPrompts(label, tuple(entries)))
    model = llm.model if strategy.uses_llm and llm is not None else None
    return PromptBank(strategy.name, model, bank_settings(strategy, llm, max_tokens), strategy.graph,
                      tuple(classes)), truncated


def generate_bank(strategy: Strategy, labels: list[str], client: ChatClient | None, journal_path: str | Path,
                  max_tokens: int = MAX_DESCRIPTION_TOKENS, concurrency: int = 4,
                  progress: Callable[[int], None] | None = None,
                  on_start: Callable[[int, int], None] | None = None) -> GenerationReport:
    """Ask for every missing answer, journal each as it arrives, and build the bank.

    `on_start(from_journal, to_fetch)` is called once the plan is known; `progress(1)` per answer.
    """
    for label in labels:
        check_label_fits(label, max_tokens)
    if not strategy.uses_llm:
        bank, truncated = build_bank(strategy, labels, {}, None, max_tokens)
        return GenerationReport(bank, 0, 0, truncated)
    assert client is not None, "LLM strategies need a client"
    llm = client.settings
    summary = f"{strategy.name}, model {llm.model}"
    failures: list[str] = []
    with Journal(journal_path, settings_sha256(strategy, llm), summary) as journal:
        # Validate reused answers again: a hand-edited or stale journal line is simply asked again.
        done = {key: a for key, a in journal.answers.items() if _valid(strategy, a)}
        todo = plan_requests(strategy, labels, done)
        from_journal = len(labels) * strategy.llm_prompts - len(todo)
        if on_start is not None:
            on_start(from_journal, len(todo))
        journal.answers = done  # an invalid old line is superseded by the new answer appended below
        results = closing(run_bounded(lambda r: _ask(client, strategy, r), todo, concurrency))
        with results as finished:
            for request, result in finished:
                _record(journal, failures, request, result)
                if progress is not None:
                    progress(1)
        answers = dict(journal.answers)
    if failures:
        saved = (f"the other {len(todo) - len(failures)} answers are saved in {journal_path}: rerun the same "
                 f"command to ask only for the missing ones" if len(failures) < len(todo)
                 else "no answer was saved: check the server, model and key, then rerun")
        raise GenerationIncomplete(f"{len(failures)} of {len(todo)} requests failed (first: {failures[0]}); {saved}")
    bank, truncated = build_bank(strategy, labels, answers, llm, max_tokens)
    return GenerationReport(bank, from_journal, len(todo), truncated, client.usage, client.structured_output)


def _record(journal: Journal, failures: list[str], request: LLMRequest, result: Any) -> None:
    """Journal an answer, or note a failed request; errors every request would repeat stop the run."""
    if isinstance(result, LLMFatalError) or (isinstance(result, BaseException) and
                                              not isinstance(result, ApclipError)):
        raise result
    if isinstance(result, ApclipError):
        failures.append(f"{request.label!r} LLM-prompt {request.llm_prompt}: {result}")
    else:
        journal.append(request.label, request.llm_prompt, result)


def _valid(strategy: Strategy, answer: Any) -> bool:
    assert strategy.schema is not None
    return not validate_json(answer, strategy.schema) and not strategy.validate(answer)


def _ask(client: ChatClient, strategy: Strategy, request: LLMRequest) -> Any:
    return client.complete_json(request.messages, request.schema, request.schema_name, strategy.validate)


def dry_run(strategy: Strategy, labels: list[str], llm: LLMSettings, journal_path: str | Path,
            max_tokens: int = MAX_DESCRIPTION_TOKENS) -> Iterator[tuple[dict[str, Any], int, int]]:
    """(request, estimated input tokens, estimated output tokens) for every missing pair; sends nothing."""
    for label in labels:
        check_label_fits(label, max_tokens)
    done = read_journal(journal_path, settings_sha256(strategy, llm))
    for request in plan_requests(strategy, labels, done):
        body = request_body(llm, request.messages, request.schema, request.schema_name)
        tokens_in = rough_token_estimate(json.dumps(body["messages"], ensure_ascii=False)) + \
            rough_token_estimate(json.dumps(request.schema, ensure_ascii=False))
        yield {"label": request.label, "llm_prompt": request.llm_prompt, "body": body}, tokens_in, \
            strategy.expected_output_tokens()
