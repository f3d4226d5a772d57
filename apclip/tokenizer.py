"""CLIP's byte-level BPE tokenizer, torch-free, giving the ids of OpenAI's `clip.tokenize`.

The merges come from `bpe_simple_vocab_16e6.txt.gz`, which is not copied into this repository:
it is found, in order, at an explicit path, at $APCLIP_BPE_VOCAB, or inside an installed
open_clip_torch distribution (located through its metadata, without importing open_clip).
"""
from __future__ import annotations

import gzip
import html
import os
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Iterable

import ftfy
import numpy as np
import regex

from apclip.errors import ApclipError

VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_ENV = "APCLIP_BPE_VOCAB"
CONTEXT_LENGTH = 77
SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
SOT_ID = 49406
EOT_ID = 49407
_MERGES = 49152 - 256 - 2  # merges CLIP uses from the file (the rest are unused)
# CLIP's pre-split: special tokens, English contractions, letter runs, single digits, other symbols.
_SPLIT = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


class VocabularyNotFound(ApclipError, FileNotFoundError):
    """The BPE merges file is not where it was looked for; the message says how to get it."""


def find_vocab(path: str | os.PathLike | None = None) -> Path:
    """Locate the BPE merges file; the error says how to get it."""
    if path is not None:
        candidate = Path(path)
        if not candidate.is_file():
            raise VocabularyNotFound(f"BPE vocabulary {candidate} does not exist (pass the path of {VOCAB_FILENAME})")
        return candidate
    env = os.environ.get(VOCAB_ENV)
    if env:
        candidate = Path(env)
        if not candidate.is_file():
            raise VocabularyNotFound(f"${VOCAB_ENV}={env} does not exist (point it at {VOCAB_FILENAME} or unset it)")
        return candidate
    try:
        dist = metadata.distribution("open_clip_torch")
        for file in dist.files or ():
            if file.name == VOCAB_FILENAME:
                candidate = Path(dist.locate_file(file))
                if candidate.is_file():
                    return candidate
    except metadata.PackageNotFoundError:
        pass
    raise VocabularyNotFound(
        f"CLIP BPE vocabulary {VOCAB_FILENAME} not found: run `pip install --no-deps open_clip_torch` "
        f"(it ships the file), or set {VOCAB_ENV}=/path/to/{VOCAB_FILENAME}, or pass --bpe-vocab"
    )


@lru_cache()
def bytes_to_unicode() -> dict[int, str]:
    """Reversible map of the 256 bytes to printable characters (BPE never sees whitespace/control bytes)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def clean_text(text: str) -> str:
    """ftfy fix, double html unescape, whitespace collapse, lower case (CLIP's exact order)."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


MAX_VOCAB_BYTES = 16 << 20


class Tokenizer:
    def __init__(self, vocab_path: str | os.PathLike | None = None):
        path = find_vocab(vocab_path)
        try:
            with gzip.open(path, "rb") as f:
                # CLIP's merges inflate to 1.4 MB: reading a bounded prefix makes a gzip bomb harmless.
                text = f.read(MAX_VOCAB_BYTES + 1)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path} is not a readable gzip file ({exc})") from None
        if len(text) > MAX_VOCAB_BYTES:
            raise ValueError(f"{path} inflates to more than {MAX_VOCAB_BYTES >> 20} MB: not CLIP's BPE vocabulary")
        lines = text.decode("utf-8", errors="replace").split("\n")[1:_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        if len(merges) != _MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{path} is not CLIP's BPE vocabulary (expected {_MERGES} merge pairs)")
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + [SOT_TOKEN, EOT_TOKEN]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.bpe_ranks = {merge: rank for rank, merge in enumerate(merges)}
        self.cache: dict[str, str] = {SOT_TOKEN: SOT_TOKEN, EOT_TOKEN: EOT_TOKEN}
        assert self.encoder[SOT_TOKEN] == SOT_ID and self.encoder[EOT_TOKEN] == EOT_ID

    def bpe(self, token: str) -> str:
        """Greedy lowest-rank merging of one pre-split word; returns space-separated sub-words."""
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without SOT/EOT."""
        ids: list[int] = []
        for piece in _SPLIT.findall(clean_text(text)):
            piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[sub] for sub in self.bpe(piece).split(" "))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        text = "".join(self.decoder[int(i)] for i in ids)
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ")

    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes in a CLIP context, SOT and EOT included."""
        return len(self.encode(text)) + 2

    def tokenize(self, texts: str | Iterable[str], context_length: int = CONTEXT_LENGTH,
                 truncate: bool = False) -> np.ndarray:
        """[M, context_length] int64 ids, zero-padded; SOT first, EOT after the text."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        out = np.zeros((len(texts), context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [SOT_ID] + self.encode(text) + [EOT_ID]
            if len(ids) > context_length:
                if not truncate:
                    raise ValueError(f"text of {len(ids)} tokens exceeds the context of {context_length}: "
                                     f"{text[:60]!r}... (shorten it or pass truncate=True)")
                ids = ids[:context_length]
                ids[-1] = EOT_ID
            out[row, : len(ids)] = ids
        return out


@lru_cache(maxsize=4)
def get_tokenizer(vocab_path: str | None = None) -> Tokenizer:
    """A shared tokenizer (loading the merges takes ~0.3 s)."""
    return Tokenizer(vocab_path)


def use_vocab(path: str | os.PathLike) -> None:
    """Make every tokenizer of this process read `path` (what the CLIs' --bpe-vocab does)."""
    find_vocab(path)  # the one-line error now, not at the first prompt
    os.environ[VOCAB_ENV] = str(Path(path).resolve())
    get_tokenizer.cache_clear()


def tokenize(texts: str | Iterable[str], context_length: int = CONTEXT_LENGTH, truncate: bool = False,
             vocab_path: str | None = None) -> np.ndarray:
    return get_tokenizer(vocab_path).tokenize(texts, context_length, truncate)


def count_tokens(text: str, vocab_path: str | None = None) -> int:
    return get_tokenizer(vocab_path).count_tokens(text)
