"""The paper's post-processing rules on crafted texts, measured with the project's CLIP tokenizer."""
from __future__ import annotations

import pytest

from apclip.export.prompts.postprocess import (
    DescriptionError, check_label_fits, check_prompt_fits, limit_tokens, postprocess, split_sentences, standardise,
)
from apclip.tokenizer import count_tokens


@pytest.mark.parametrize("raw, clean", [
    ("  A man   runs\tfast  ", "A man runs fast."),
    ("\u201cCurly\u201d quotes and \u2018single\u2019 ones", "\"Curly\" quotes and 'single' ones."),
    ("Doubled,, commas and stops..", "Doubled, commas and stops."),
    ("Wow!! Really?!", "Wow! Really."),
    ("Space before , comma and ; semicolon", "Space before, comma and; semicolon."),
    ("No space,after comma", "No space, after comma."),
    ("- A bullet item", "A bullet item."),
    ("2. A numbered item", "A numbered item."),
    ('"The whole thing is quoted."', "The whole thing is quoted."),
    ("Trailing ellipsis\u2026", "Trailing ellipsis."),
    ("It is 3.5 m tall, e.g. a pole", "It is 3.5 m tall, e.g. a pole."),
    ("zero\u200bwidth", "zerowidth."),
    ("  .,!  ", ""),
])
def test_standardise(raw, clean):
    assert standardise(raw) == clean


def test_short_description_is_kept_whole():
    desc = postprocess("The archer stands still and draws the bow.")
    assert desc.text == "The archer stands still and draws the bow."
    assert not desc.truncated
    assert desc.tokens == count_tokens(desc.text) <= 30


def test_long_description_keeps_whole_leading_sentences():
    first = "The archer stands on a grassy field."
    second = "She draws the bow slowly."
    third = "A long row of round targets with red and yellow rings waits far away beyond the grass in the wind."
    assert count_tokens(f"{first} {second}") <= 30 < count_tokens(f"{first} {second} {third}")
    desc = postprocess(f"{first}  {second} {third}")
    assert desc.text == f"{first} {second}"
    assert desc.truncated and desc.tokens <= 30


def test_first_sentence_too_long_is_cut_at_a_word_boundary():
    words = ("the player keeps dribbling the ball around several defenders while the crowd in the "
             "stadium cheers loudly and the coach shouts instructions from the side line").split()
    desc = postprocess(" ".join(words) + ". Then he scores.")
    assert desc.truncated and desc.tokens <= 30
    body = desc.text[:-1].split(" ")
    assert desc.text.endswith(".") and not desc.text.endswith("..")
    assert body == words[: len(body)]  # a prefix of whole words
    assert count_tokens(" ".join(words[: len(body) + 1]) + ".") > 30  # and the longest one that fits


def test_a_single_giant_word_is_cut_to_fit():
    desc = postprocess("x" * 400)
    assert desc.truncated and 1 < desc.tokens <= 30


@pytest.mark.parametrize("limit", [10, 20, 30])
def test_limit_is_honoured_for_other_limits(limit):
    text = standardise("One two three four five. Six seven eight nine ten eleven twelve. " * 4)
    desc = limit_tokens(text, limit)
    assert count_tokens(desc.text) == desc.tokens <= limit


def test_sentences_split_only_before_a_capital():
    assert split_sentences("Fast, e.g. a sprint. Then a stop.") == ["Fast, e.g. a sprint.", "Then a stop."]


def test_prompt_and_label_must_fit_the_context():
    assert check_prompt_fits("archery", "The archer draws the bow.") == count_tokens(
        "a video of archery. The archer draws the bow.")
    huge = " ".join(["label"] * 60)
    with pytest.raises(DescriptionError, match="too long"):
        check_label_fits(huge)
    with pytest.raises(DescriptionError, match="more than CLIP's 77"):
        check_prompt_fits(huge, "The archer draws the bow and aims at the target far away.")
    check_label_fits("archery")
