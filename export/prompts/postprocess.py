"""The paper's post-processing of LLM descriptions: clean spacing and punctuation, then at most 30 tokens.

Token counts use the project's CLIP tokenizer (`count_tokens`, which includes SOT and EOT, so a
30-token description holds at most 28 BPE tokens of text). A description that is too long keeps
its leading whole sentences; when even the first sentence is too long it is cut at a word boundary.
Every description ends with exactly one period.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Callable

from apclip.errors import ApclipError
from apclip.prompt_bank import format_prompt
from apclip.tokenizer import CONTEXT_LENGTH, count_tokens

MAX_DESCRIPTION_TOKENS = 30

_QUOTES = str.maketrans({
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u00ab": '"', "\u00bb": '"', "\u2033": '"',
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u2026": "...",  # ellipsis character: collapsed with the other doubled punctuation below
    "\u200b": "", "\u200c": "", "\u200d": "", "\ufeff": "",  # zero-width characters tokenise to garbage
})
_SPACES = re.compile(r"\s+")
_LIST_MARKER = re.compile(r"^(?:[-*\u2022]+|\(?\d{1,2}[.)])\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?])")
_PUNCT_RUN = re.compile(r"[.,;:!?](?:\s*[.,;:!?])+")
_MISSING_SPACE = re.compile(r"([,;!?])(?=[^\W\d_])")
_TRAILING = re.compile(r"[\s.,;:!?]+$")
# A sentence ends at . ! ? followed by a space and a capital letter, digit or quote; "e.g. a ball"
# does not end one.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


class DescriptionError(ApclipError):
    """A description or prompt that cannot be made to fit the token limits."""


@dataclass(frozen=True)
class Description:
    text: str  # standardised, ends with one period, count_tokens(text) <= the limit
    tokens: int  # count_tokens(text), SOT and EOT included
    truncated: bool  # sentences or words were dropped to fit


def _collapse_punctuation(match: re.Match[str]) -> str:
    # A run like ",." or "!!" or "?." keeps one mark: the first sentence end if there is one.
    run = match.group(0).replace(" ", "")
    ends = [c for c in run if c in ".!?"]
    return ends[0] if ends else run[0]


def _strip_wrapping_quotes(text: str) -> str:
    while len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'" and text.count(text[0]) == 2:
        text = text[1:-1].strip()
    return text


def _end_with_period(text: str) -> str:
    text = _TRAILING.sub("", text)
    return f"{text}." if text else ""


def standardise(text: str) -> str:
    """Straight quotes, single spaces, no doubled punctuation, exactly one final period."""
    text = unicodedata.normalize("NFC", text).translate(_QUOTES)
    text = _SPACES.sub(" ", text).strip()
    text = _LIST_MARKER.sub("", text)
    text = _strip_wrapping_quotes(text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _PUNCT_RUN.sub(_collapse_punctuation, text)
    text = _MISSING_SPACE.sub(r"\1 ", text)
    return _end_with_period(text)


def split_sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text) if s]


def limit_tokens(text: str, max_tokens: int = MAX_DESCRIPTION_TOKENS,
                 count: Callable[[str], int] = count_tokens) -> Description:
    """Fit a standardised description into `max_tokens` (SOT/EOT included) by the paper's rule."""
    tokens = count(text)
    if tokens <= max_tokens:
        return Description(text, tokens, False)
    sentences = split_sentences(text)
    kept = ""
    for sentence in sentences:
        candidate = _end_with_period(f"{kept} {sentence}".strip())
        if count(candidate) > max_tokens:
            break
        kept = candidate
    if not kept:
        kept = _cut_at_word(sentences[0], max_tokens, count)
    return Description(kept, count(kept), True)


def _cut_at_word(sentence: str, max_tokens: int, count: Callable[[str], int]) -> str:
    words = sentence.split(" ")
    kept = ""
    for n in range(1, len(words) + 1):
        candidate = _end_with_period(" ".join(words[:n]))
        if count(candidate) > max_tokens:
            break
        kept = candidate
    if kept:
        return kept
    # A single "word" longer than the limit (a URL, a run of symbols): cut characters as a last resort.
    word = words[0]
    while word and count(_end_with_period(word)) > max_tokens:
        word = word[:-1]
    return _end_with_period(word)


def postprocess(text: str, max_tokens: int = MAX_DESCRIPTION_TOKENS,
                count: Callable[[str], int] = count_tokens) -> Description:
    """Standardise then limit; the empty string stays empty (callers treat it as invalid)."""
    clean = standardise(text)
    if not clean:
        return Description("", 0, False)
    return limit_tokens(clean, max_tokens, count)


def check_prompt_fits(label: str, description: str, context_length: int = CONTEXT_LENGTH,
                      count: Callable[[str], int] = count_tokens) -> int:
    """Tokens of the final prompt; raises DescriptionError when it would not fit CLIP's context."""
    prompt = format_prompt(label, description)
    tokens = count(prompt)
    if tokens > context_length:
        raise DescriptionError(f"prompt for label {label!r} takes {tokens} tokens, more than CLIP's "
                               f"{context_length}: shorten the label or lower --max-description-tokens")
    return tokens


def check_label_fits(label: str, max_tokens: int = MAX_DESCRIPTION_TOKENS,
                     context_length: int = CONTEXT_LENGTH, count: Callable[[str], int] = count_tokens) -> None:
    """Fail before any request when "a video of {label}." plus a full description cannot fit."""
    # The two prompts share one SOT/EOT pair, so the description adds max_tokens - 2.
    worst = count(format_prompt(label)) + max_tokens - 2
    if worst > context_length:
        raise DescriptionError(f"label {label!r} is too long: \"{format_prompt(label)}\" plus a "
                               f"{max_tokens}-token description takes up to {worst} tokens, more than CLIP's "
                               f"{context_length}; shorten the label in the labels file")
