"""The class matrix: every class's prompt embeddings, padded into [K, P_max, E] + counts [K].

Torch-free: the text encoder is any callable mapping token ids [M, 77] to normalised embeddings
[M, E] (the torch reference at export time, text.onnx at run time for new labels).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from apclip.bundle import CLASS_COUNTS, CLASS_EMBEDDINGS, TEXT_BATCH
from apclip.errors import ApclipError
from apclip.prompt_bank import format_prompt
from apclip.scoring_protocol import DEFAULT_TEMPLATE, format_template
from apclip.tokenizer import CONTEXT_LENGTH, get_tokenizer
from apclip.fileio import atomic_write

TextEncoder = Callable[[np.ndarray], np.ndarray]  # tokens [M, L] int64 -> [M, E] float32, normalised


class PromptSource(Protocol):
    def descriptions(self, label: str) -> list[str] | None: ...


@dataclass
class ClassMatrix:
    embeddings: np.ndarray  # [K, P_max, E] float32, L2-normalised rows, zero padding
    counts: np.ndarray  # [K] int32, real prompts per class
    labels: list[str]
    fallback_labels: list[str]  # labels that had no prompt-bank entry and used the template
    prompt_texts: list[list[str]] | None = None  # the encoded texts (not stored in the bundle)

    @property
    def num_classes(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def max_prompts(self) -> int:
        return int(self.embeddings.shape[1])


def class_prompts(labels: Sequence[str], bank: PromptSource | None,
                  template: str = DEFAULT_TEMPLATE) -> tuple[list[list[str]], list[str]]:
    """The prompt texts of each label ("a video of {label}. {description}") and the labels that fell
    back to the single `template` (default "a video of {label}.") because the bank has no entry for them."""
    prompts, fallback = [], []
    for label in labels:
        descriptions = bank.descriptions(label) if bank is not None else None
        if descriptions:
            prompts.append([format_prompt(label, d) for d in descriptions])
        else:
            prompts.append([format_template(template, label)])
            fallback.append(label)
    return prompts, fallback


def encode_class_matrix(labels: Sequence[str], prompts: Sequence[Sequence[str]], encode: TextEncoder,
                        *, batch_size: int = TEXT_BATCH, fallback_labels: Sequence[str] = (),
                        progress: bool = False, desc: str = "encoding prompts",
                        vocab_path: str | None = None) -> ClassMatrix:
    """Tokenize and encode every prompt in batches; pad to [K, P_max, E].

    vocab_path: the BPE merges to tokenize with (a bundle's copy); None: the tokenizer's lookup."""
    tokenizer = get_tokenizer(vocab_path)
    flat = [(k, p) for k, texts in enumerate(prompts) for p in range(len(texts))]
    if not flat:
        raise ApclipError("no prompts to encode (empty label list)")
    texts = [prompts[k][p] for k, p in flat]
    try:
        tokens = tokenizer.tokenize(texts)
    except ValueError:
        for (k, _), text in zip(flat, texts):
            if (n := tokenizer.count_tokens(text)) > CONTEXT_LENGTH:
                raise ApclipError(
                    f"label {labels[k][:60]!r}: its prompt {text[:50]!r}... takes {n} CLIP tokens, more than "
                    f"{CONTEXT_LENGTH}: shorten the label in the labels file, or its descriptions in the prompt "
                    f"bank (apclip-prompts cuts descriptions to fit)") from None
        raise
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(texts), desc=desc, unit="prompt", file=sys.stderr, dynamic_ncols=True)
    chunks = []
    for start in range(0, len(texts), batch_size):
        chunks.append(np.asarray(encode(tokens[start:start + batch_size]), dtype=np.float32))
        if bar is not None:
            bar.update(len(chunks[-1]))
    if bar is not None:
        bar.close()
    flat_emb = np.concatenate(chunks)  # [sum P_k, E]
    counts = np.array([len(t) for t in prompts], dtype=np.int32)
    matrix = np.zeros((len(prompts), int(counts.max()), flat_emb.shape[1]), dtype=np.float32)
    for row, (k, p) in enumerate(flat):
        matrix[k, p] = flat_emb[row]
    return ClassMatrix(matrix, counts, list(labels), list(fallback_labels), [list(t) for t in prompts])


def save_class_matrix(path: str | os.PathLike, matrix: ClassMatrix, metadata: dict[str, str] | None = None) -> None:
    """Write classes.safetensors atomically (with optional string metadata in its header)."""
    from safetensors.numpy import save_file

    with atomic_write(path, mode=None) as tmp:
        save_file({CLASS_EMBEDDINGS: np.ascontiguousarray(matrix.embeddings),
                   CLASS_COUNTS: np.ascontiguousarray(matrix.counts)}, str(tmp), metadata=metadata)


def load_class_matrix(path: str | os.PathLike, labels: Sequence[str]) -> ClassMatrix:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
        embeddings, counts = tensors[CLASS_EMBEDDINGS], tensors[CLASS_COUNTS]
    except (SafetensorError, KeyError, OSError) as exc:
        raise ApclipError(f"class matrix {path} is unreadable ({exc}); re-run apclip-export") from None
    if embeddings.ndim != 3 or counts.shape != (embeddings.shape[0],) or embeddings.shape[0] != len(labels):
        raise ApclipError(f"class matrix {path} has shape {embeddings.shape} / counts {counts.shape}, "
                          f"which does not fit {len(labels)} labels; re-run apclip-export")
    if embeddings.dtype.kind != "f" or counts.dtype.kind not in "iu":
        raise ApclipError(f"class matrix {path} has dtypes {embeddings.dtype} / {counts.dtype}, not float / int; "
                          f"re-run apclip-export")
    if not np.isfinite(embeddings).all():  # a NaN row would score NaN, and NaN sorts anywhere
        raise ApclipError(f"class matrix {path} has NaN or infinite values; it is refused (re-run apclip-export)")
    if counts.size and (counts.min() < 1 or counts.max() > embeddings.shape[1]):
        raise ApclipError(f"class matrix {path} has prompt counts outside 1..{embeddings.shape[1]}; "
                          f"re-run apclip-export")
    return ClassMatrix(embeddings.astype(np.float32, copy=False), counts.astype(np.int32), list(labels), [])


def save_prompt_texts(path: str | os.PathLike, labels: Sequence[str], texts: Sequence[Sequence[str]] | None) -> None:
    import json

    document = {label: list(t) for label, t in zip(labels, texts or [[] for _ in labels])}
    Path(path).write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def load_prompt_texts(path: str | os.PathLike, labels: Sequence[str]) -> list[list[str]] | None:
    import json

    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        return [list(document[label]) for label in labels]
    except (OSError, ValueError, KeyError, TypeError):
        return None
