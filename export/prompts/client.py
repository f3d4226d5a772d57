"""A thin, careful wrapper over the openai chat-completions client for JSON answers.

- Structured output: `response_format` json_schema with strict=True; a server that rejects it
  (many OpenAI-compatible servers do) gets the schema as instructions in the prompt instead, once
  per client, and the answer is validated against the schema either way.
- Retries on 408/409/429/5xx, timeouts and connection errors, with exponential backoff and jitter;
  a Retry-After header from the server wins over the computed delay. The openai client's own
  retries are off so that every attempt is counted here.
- Invalid answers (not JSON, schema violations) are sent back with a repair message, up to a limit.
- Usage (requests, retries, tokens) is accounted across threads; `run_bounded` keeps at most N
  requests in flight.
The openai package is imported lazily: `import apclip.export.prompts.client` works without it.
"""
from __future__ import annotations

import email.utils
import json
import os
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, TypeVar

from apclip.errors import ApclipError
from apclip.extras import require

API_KEY_ENV = "OPENAI_API_KEY"
# USD per million (input, output) tokens, as published by OpenAI in 2025; override with --price-in/--price-out.
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-3.5-turbo": (0.50, 1.50),
}
_RETRY_STATUS = {408, 409, 429}
_SCHEMA_REJECTION_HINTS = ("response_format", "json_schema", "structured output", "schema")

T = TypeVar("T")
R = TypeVar("R")


class LLMError(ApclipError):
    """A request that failed for good: retries exhausted, or an answer that stayed invalid."""


class RequestDeadline(Exception):
    """A request that took longer than timeout_s in all (retried like a timeout)."""


class LLMFatalError(LLMError):
    """An error every further request would repeat (bad key, unknown model, refused request)."""


@dataclass(frozen=True)
class LLMSettings:
    model: str = "gpt-4o-mini"
    base_url: str | None = None  # None: the openai default (or $OPENAI_BASE_URL)
    timeout_s: float = 60.0  # per HTTP request, the whole of it (connect, send, every byte of the answer)
    max_retries: int = 6  # transport retries per request (429, 5xx, timeouts)
    backoff_s: float = 1.0  # first retry delay; doubles each retry, jittered
    backoff_max_s: float = 60.0  # cap of the computed delay
    retry_after_max_s: float = 300.0  # cap on a server's Retry-After, so one header cannot stall a run
    repair_attempts: int = 2  # follow-up requests after an invalid answer
    temperature: float | None = None  # None: the server's default (some models accept no other)
    seed: int | None = None


@dataclass
class Usage:
    requests: int = 0  # HTTP requests sent, retries and repairs included
    retries: int = 0  # transport retries
    repairs: int = 0  # follow-ups after an invalid answer
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


def price_per_mtok(model: str, price_in: float | None = None,
                   price_out: float | None = None) -> tuple[float, float] | None:
    """(input, output) USD per million tokens: explicit prices, else the table, else None."""
    if price_in is not None and price_out is not None:
        return price_in, price_out
    known = PRICES_PER_MTOK.get(model)
    if known is None:
        return None
    return (known[0] if price_in is None else price_in, known[1] if price_out is None else price_out)


def estimate_cost(prompt_tokens: int, completion_tokens: int, prices: tuple[float, float] | None) -> float | None:
    if prices is None:
        return None
    return (prompt_tokens * prices[0] + completion_tokens * prices[1]) / 1e6


def rough_token_estimate(text: str) -> int:
    """~4 characters per token for English with GPT tokenizers; only for --dry-run estimates."""
    return max(1, (len(text) + 3) // 4)


def validate_json(value: Any, schema: dict[str, Any], where: str = "answer") -> list[str]:
    """Problems of `value` against the schema subset we send (object/array/string, required, no extras)."""
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            return [f"{where} must be a JSON object"]
        problems = []
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                problems.append(f"{where} is missing \"{key}\"")
        if schema.get("additionalProperties") is False:
            problems += [f"{where} has unexpected key \"{k}\"" for k in value if k not in props]
        for key, sub in props.items():
            if key in value:
                problems += validate_json(value[key], sub, f"{where}.{key}")
        return problems
    if kind == "array":
        if not isinstance(value, list):
            return [f"{where} must be a JSON array"]
        problems = []
        for i, item in enumerate(value):
            problems += validate_json(item, schema.get("items", {}), f"{where}[{i}]")
        return problems
    if kind == "string":
        if not isinstance(value, str):
            return [f"{where} must be a string"]
        return [] if value.strip() else [f"{where} is empty"]
    return []


def schema_instructions(schema: dict[str, Any]) -> str:
    """The fallback for servers without structured output: the schema as words in the prompt."""
    return ("Reply with a single JSON object and nothing else (no markdown fences, no comments). "
            "It must match this JSON schema exactly, with every required key present and no other keys:\n"
            + json.dumps(schema, ensure_ascii=False))


def request_body(settings: LLMSettings, messages: list[dict[str, str]], schema: dict[str, Any], name: str,
                 structured: bool = True) -> dict[str, Any]:
    """The keyword arguments of one chat.completions.create call (also what --dry-run prints)."""
    body: dict[str, Any] = {"model": settings.model}
    if structured:
        body["messages"] = messages
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": name, "strict": True, "schema": schema}}
    else:
        # The instructions go right after the caller's system message, before the question.
        system = {"role": "system", "content": schema_instructions(schema)}
        at = 1 if messages and messages[0]["role"] == "system" else 0
        body["messages"] = [*messages[:at], system, *messages[at:]]
    if settings.temperature is not None:
        body["temperature"] = settings.temperature
    if settings.seed is not None:
        body["seed"] = settings.seed
    return body


def parse_json_answer(content: str | None) -> Any:
    """Parse an answer, tolerating the ```json fences that instruction-following models add."""
    if content is None:
        raise ValueError("the answer has no content")
    text = content.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    return json.loads(text)


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds from Retry-After (seconds or an HTTP date) or retry-after-ms; None when absent or bad."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, parsed.timestamp() - time.time())


class ChatClient:
    """JSON-answering chat client; thread-safe, one per run."""

    def __init__(self, settings: LLMSettings, api_key: str, *, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None):
        openai = require("openai", "llm", "prompt generation")
        self.settings = settings
        self.usage = Usage()
        self.structured_output = True  # becomes False once the server rejects json_schema
        self._openai = openai
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self._client = openai.OpenAI(api_key=api_key, base_url=settings.base_url, timeout=settings.timeout_s,
                                     max_retries=0)

    @classmethod
    def from_env(cls, settings: LLMSettings, **kwargs: Any) -> "ChatClient":
        key = os.environ.get(API_KEY_ENV)
        if not key:
            raise LLMError(f"${API_KEY_ENV} is not set: export your API key (for a local server that needs "
                           f"none, any value such as OPENAI_API_KEY=local works)")
        return cls(settings, key, **kwargs)

    def complete_json(self, messages: list[dict[str, str]], schema: dict[str, Any], name: str,
                      validate: Callable[[Any], list[str]] | None = None) -> Any:
        """One JSON answer valid against `schema` (and `validate`), repairing invalid ones."""
        conversation = list(messages)
        problems: list[str] = []
        for attempt in range(self.settings.repair_attempts + 1):
            if attempt:
                self.usage.add(repairs=1)
            content = self._send(conversation, schema, name)
            try:
                answer = parse_json_answer(content)
            except ValueError as exc:
                problems = [f"the reply is not valid JSON ({exc})"]
            else:
                problems = validate_json(answer, schema)
                if not problems and validate is not None:
                    problems = validate(answer)
                if not problems:
                    return answer
            conversation = [*conversation, {"role": "assistant", "content": content or ""},
                            {"role": "user", "content": "That reply is invalid: " + "; ".join(problems[:8])
                             + ". Reply again with the complete, corrected JSON object only."}]
        raise LLMError(f"answer still invalid after {self.settings.repair_attempts} repair request(s): "
                       + "; ".join(problems[:3]))

    def _send(self, messages: list[dict[str, str]], schema: dict[str, Any], name: str) -> str | None:
        openai = self._openai
        attempt = 0
        while True:
            structured = self.structured_output
            self.usage.add(requests=1)
            try:
                body = request_body(self.settings, messages, schema, name, structured)
                response = self._bounded(lambda: self._client.chat.completions.create(**body))
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                if structured and _rejects_structured_output(exc):
                    self.structured_output = False  # ask in words from now on, for every thread
                    continue
                raise LLMFatalError(f"the server refused the request ({exc.status_code}): {_message(exc)}") \
                    from None
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as exc:
                raise LLMFatalError(f"the server refused the request ({exc.status_code}): {_message(exc)}; "
                                    f"check ${API_KEY_ENV}, --model and --base-url") from None
            except (openai.APITimeoutError, openai.APIConnectionError, openai.APIStatusError, RequestDeadline) as exc:
                status = getattr(exc, "status_code", None)
                if status is not None and status not in _RETRY_STATUS and status < 500:
                    raise LLMFatalError(f"the server refused the request ({status}): {_message(exc)}") from None
                if attempt >= self.settings.max_retries:
                    what = f"HTTP {status}" if status else type(exc).__name__
                    raise LLMError(f"{what} after {attempt + 1} attempt(s): {_message(exc)}") from None
                response_headers = getattr(getattr(exc, "response", None), "headers", None)
                self._sleep(self._retry_delay(attempt, retry_after_seconds(response_headers)))
                attempt += 1
                self.usage.add(retries=1)
                continue
            except openai.APIError as exc:  # e.g. a 200 whose body is not a chat completion (a proxy page)
                raise LLMError(f"unusable response from the server: {_message(exc)}") from None
            usage = getattr(response, "usage", None)
            if usage is not None:
                self.usage.add(prompt_tokens=usage.prompt_tokens or 0,
                               completion_tokens=usage.completion_tokens or 0)
            if not response.choices:
                return None
            message = response.choices[0].message
            if message.content is None and getattr(message, "refusal", None):
                return f"(the model refused: {message.refusal})"  # not JSON: goes through the repair path
            return message.content

    def _bounded(self, call: Callable[[], T]) -> T:
        """call() with the whole request bounded by timeout_s. The openai client's timeout bounds each
        read, so a server dripping a byte every 3 s never trips a 5 s timeout (measured: 126 s). The call
        runs in a daemon thread; one past the deadline is abandoned (its socket closes with the server or
        at exit) and counted as a timeout."""
        box: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                box["value"] = call()
            except BaseException as exc:  # handed to the caller's thread
                box["error"] = exc
            finally:
                done.set()

        threading.Thread(target=run, name="apclip-llm-request", daemon=True).start()
        if not done.wait(self.settings.timeout_s):
            raise RequestDeadline(f"no complete answer within {self.settings.timeout_s:g} s")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _retry_delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with equal jitter; a server's Retry-After is a floor."""
        s = self.settings
        delay = min(s.backoff_max_s, s.backoff_s * (2 ** attempt))
        with self._rng_lock:
            delay = delay / 2 + self._rng.uniform(0, delay / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, s.retry_after_max_s))
        return delay


def _rejects_structured_output(exc: Exception) -> bool:
    text = _message(exc).lower()
    return any(hint in text for hint in _SCHEMA_REJECTION_HINTS)


def _message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def run_bounded(fn: Callable[[T], R], items: Iterable[T], concurrency: int) -> Iterator[tuple[T, R | Exception]]:
    """Yield (item, result or exception) as calls finish, with at most `concurrency` in flight.

    Items are submitted lazily, so stopping the iteration (Ctrl-C, a fatal error) cancels everything
    not yet started; requests in flight finish in their threads and their results are dropped.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    pending = iter(items)
    executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="llm")
    in_flight: dict[Future, T] = {}
    try:
        for item in pending:
            in_flight[executor.submit(fn, item)] = item
            if len(in_flight) >= concurrency:
                break
        while in_flight:
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                item = in_flight.pop(future)
                exc = future.exception()
                yield item, (exc if exc is not None else future.result())
                nxt = next(pending, _SENTINEL)
                if nxt is not _SENTINEL:
                    in_flight[executor.submit(fn, nxt)] = nxt
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


_SENTINEL: Any = object()
