"""The torch-free tokenizer gives the ids of OpenAI's (open_clip's copy of it) on a hostile corpus."""
from __future__ import annotations

import gzip
import importlib
import importlib.util
import os
import random
import sys
import types
from importlib import metadata

import numpy as np
import pytest

from apclip import tokenizer as tok
from apclip.errors import ApclipError

HOSTILE = [
    "a video of playing guitar",
    "Café crème brûlée, naïve façade — São Paulo, Zürich, Ångström, Dvořák, Łódź",
    "打篮球 バスケットボールをする 농구를 하다 中文,日本語。한국어!",
    "🏀🏃\u200d♂️👍🏽 🇺🇸 ❤️🔥 😀😀😀",
    "Tom &amp; Jerry &lt;b&gt;bold&lt;/b&gt; &amp;amp;lt; &#39;q&#39; &nbsp;x &#x1F600; &copy; &bogus;",
    "1234567890 3.14159 1,000,000 2nd 21st 1e-9 ½ ² ٣ ३ ⅷ",
    "I'm, you're, he's, we've, they'll, I'd, can't, won't, DON'T, It'S, rock'n'roll, 'quoted'",
    "!!!??? ... ---- ((()))[[ ]] ;;:: @#$%^&*_+=~`|\\/<> \"quotes\" «guillemets» „low“",
    "  tabs\t\tand\nnewlines\r\n\u00a0nbsp\u2003em\u3000ideographic \x0b\x0c  ",
    "",
    "   \t\n  ",
    "ThIs Is MiXeD CaSe ÉCOLE ΣΊΣΥΦΟΣ İstanbul ǅemal ß ẞ",
    "The Mona Lisa doesnâ€™t have eyebrows.",  # mojibake that ftfy repairs
    "zero\u200bwidth\u200djoiner\ufeffbom soft\u00adhyphen",
    "bell\x07 null\x00 del\x7f esc\x1b[31m ansi",
    "e\u0301 a\u0308 n\u0303 combining marks vs é ä ñ",
    "مرحبا بالعالم שלום עולם",
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "https://example.com/path?q=1&x=2#frag user@example.org C:\\Windows\\system32",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３ ﬁ ligature Ⅻ ㎏",
    "a person is doing push-ups on the floor in a gym, arms bending & straightening rapidly.",
]


def random_texts(count: int, seed: int) -> list[str]:
    """Random strings drawn from scripts, symbols, whitespace and controls."""
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
              (0x900, 0x97F), (0x2000, 0x206F), (0x3040, 0x30FF), (0x4E00, 0x4E80), (0xAC00, 0xAC80),
              (0xFF00, 0xFFEF), (0x1F300, 0x1F6FF), (0x1F900, 0x1F9FF), (0x0, 0x1F)]
    gen = random.Random(seed)
    texts = []
    for _ in range(count):
        chars = []
        for _ in range(gen.randint(1, 40)):
            lo, hi = gen.choice(ranges)
            chars.append(chr(gen.randint(lo, hi)))
        texts.append("".join(chars))
    return texts


@pytest.fixture(scope="module")
def ours() -> tok.Tokenizer:
    return tok.Tokenizer()


@pytest.fixture(scope="module")
def reference():
    """open_clip's SimpleTokenizer, imported without open_clip/__init__.py (which needs torchvision)."""
    saved_modules = {k: v for k, v in sys.modules.items() if k == "open_clip" or k.startswith("open_clip.")}
    saved_env = os.environ.get("TOKENIZERS_PARALLELISM")
    try:
        spec = importlib.util.find_spec("open_clip")  # locates the package without executing it
        if spec is None or not spec.submodule_search_locations:
            pytest.skip("open_clip_torch is not installed (pip install --no-deps open_clip_torch)")
        package = types.ModuleType("open_clip")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["open_clip"] = package
        module = importlib.import_module("open_clip.tokenizer")
        yield module.SimpleTokenizer()
    except ImportError as exc:
        pytest.skip(f"cannot import open_clip.tokenizer on its own: {exc}")
    finally:
        for name in [k for k in sys.modules if k == "open_clip" or k.startswith("open_clip.")]:
            del sys.modules[name]
        sys.modules.update(saved_modules)
        if saved_env is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved_env


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_ids_match_openai_on_hostile_corpus(ours, reference, text):
    assert ours.encode(text) == reference.encode(text)
    expected = reference([text]).numpy()  # open_clip always truncates; these all fit
    np.testing.assert_array_equal(ours.tokenize(text), expected)


def test_ids_match_openai_on_random_text(ours, reference):
    texts = random_texts(300, seed=0)
    for text in texts:
        assert ours.encode(text) == reference.encode(text), repr(text)
    np.testing.assert_array_equal(ours.tokenize(texts, truncate=True), reference(texts).numpy())


def test_decode_matches_openai(ours, reference):
    for text in HOSTILE:
        ids = ours.encode(text)
        assert ours.decode(ids) == reference.decode(ids)
    assert ours.decode(ours.encode("Push-Ups, twice!")) == "push - ups , twice ! "


def test_special_tokens_follow_openai_not_open_clip(ours):
    """OpenAI's tokenizer maps the literal "<|endoftext|>" to EOT; open_clip renamed its specials."""
    assert ours.encode("a <|endoftext|> b") == ours.encode("a") + [tok.EOT_ID] + ours.encode("b")
    assert ours.encode("<|startoftext|>") == [tok.SOT_ID]
    assert tok.SOT_ID not in ours.encode("<start_of_text>")
    assert ours.encode("a") == [320]  # "a</w>" in CLIP's vocabulary


def test_tokenize_layout(ours):
    ids = ours.tokenize(["a video of jumping", ""])
    assert ids.dtype == np.int64 and ids.shape == (2, 77)
    words = ours.encode("a video of jumping")
    assert ids[0, : len(words) + 2].tolist() == [tok.SOT_ID, *words, tok.EOT_ID]
    assert not ids[0, len(words) + 2:].any()
    assert ids[1, :2].tolist() == [tok.SOT_ID, tok.EOT_ID] and not ids[1, 2:].any()
    assert ours.tokenize([]).shape == (0, 77)
    assert ours.tokenize("short", context_length=5).shape == (1, 5)
    np.testing.assert_array_equal(ours.tokenize("single"), ours.tokenize(["single"]))


def test_context_boundary(ours):
    fits = " ".join(["a"] * 75)  # 75 one-token words + SOT + EOT = 77
    assert ours.count_tokens(fits) == 77
    assert ours.tokenize(fits)[0, -1] == tok.EOT_ID
    with pytest.raises(ValueError, match="78 tokens exceeds the context of 77"):
        ours.tokenize(fits + " a")


def test_long_text_raises_or_truncates_with_eot_last(ours, reference):
    long_text = "a person slowly lifts a heavy barbell above the head, " * 12
    n = ours.count_tokens(long_text)
    assert n == len(reference.encode(long_text)) + 2 and n > 77
    with pytest.raises(ValueError, match=f"text of {n} tokens exceeds the context of 77.*truncate=True"):
        ours.tokenize(["fine", long_text])
    truncated = ours.tokenize(["fine", long_text], truncate=True)
    assert truncated[1, 0] == tok.SOT_ID and truncated[1, -1] == tok.EOT_ID
    assert truncated[1, 1:76].tolist() == ours.encode(long_text)[:75]
    np.testing.assert_array_equal(truncated, reference(["fine", long_text]).numpy())
    np.testing.assert_array_equal(tok.tokenize(long_text, truncate=True), truncated[1:])


def test_count_tokens(ours):
    for text in HOSTILE:
        assert ours.count_tokens(text) == len(ours.encode(text)) + 2
        assert tok.count_tokens(text) == ours.count_tokens(text)
    assert ours.count_tokens("") == 2


# ---- finding the vocabulary ---------------------------------------------------------------------

@pytest.fixture
def no_installed_vocab(monkeypatch):
    """As if open_clip_torch were not installed and $APCLIP_BPE_VOCAB unset."""
    def missing(name):
        raise metadata.PackageNotFoundError(name)
    monkeypatch.setattr(tok.metadata, "distribution", missing)
    monkeypatch.delenv(tok.VOCAB_ENV, raising=False)


def test_vocab_found_in_installed_distribution(monkeypatch):
    monkeypatch.delenv(tok.VOCAB_ENV, raising=False)
    path = tok.find_vocab()
    assert path.name == tok.VOCAB_FILENAME and path.stat().st_size == 1_356_917


def test_vocab_from_environment_wins(monkeypatch, tmp_path):
    copy = tmp_path / "merges.txt.gz"
    copy.write_bytes(tok.find_vocab().read_bytes())

    def must_not_be_asked(name):
        raise AssertionError(f"metadata consulted for {name} although {tok.VOCAB_ENV} is set")
    monkeypatch.setattr(tok.metadata, "distribution", must_not_be_asked)
    monkeypatch.setenv(tok.VOCAB_ENV, str(copy))
    assert tok.find_vocab() == copy
    assert tok.Tokenizer().encode("a video of") == [320, 1455, 539]


def test_missing_vocab_says_how_to_get_it(no_installed_vocab):
    with pytest.raises(tok.VocabularyNotFound) as info:
        tok.find_vocab()
    message = str(info.value)
    assert "pip install --no-deps open_clip_torch" in message
    assert tok.VOCAB_ENV in message and "--bpe-vocab" in message and tok.VOCAB_FILENAME in message
    assert isinstance(info.value, ApclipError) and isinstance(info.value, FileNotFoundError)
    assert "\n" not in message


def test_bad_vocab_paths_are_named(monkeypatch, tmp_path, no_installed_vocab):
    monkeypatch.setenv(tok.VOCAB_ENV, str(tmp_path / "nowhere.gz"))
    with pytest.raises(tok.VocabularyNotFound, match=f"{tok.VOCAB_ENV}=.*nowhere.gz does not exist"):
        tok.find_vocab()
    with pytest.raises(tok.VocabularyNotFound, match="elsewhere.gz does not exist"):
        tok.find_vocab(tmp_path / "elsewhere.gz")
    fake = tmp_path / "fake.txt.gz"
    with gzip.open(fake, "wt") as f:
        f.write("#version: 0.2\na b\nc d\n")
    with pytest.raises(ValueError, match="fake.txt.gz is not CLIP's BPE vocabulary"):
        tok.Tokenizer(fake)
