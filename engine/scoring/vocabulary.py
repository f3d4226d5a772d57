"""Open vocabulary at run time: the class matrix for any label list, reusing the bundle's rows.

Labels in the bundle reuse their precompiled rows. New labels are encoded by the run's text runner
(text.onnx on ONNX Runtime by default: no torch) from their prompt-bank entries, else the template
(the bundle's, default "a video of {label}."). Encoded new labels are cached on disk, keyed by
everything that changes a row (`label_cache_key`): the encoder that made it as the runner reports it
(`cache_identity`: runtime, precision, weights sha256), the labels, their prompt texts, the
template, the prompt bank's hash and the tokenizer vocabulary, so the next run starts instantly.
A runner that reports no identity gets no cache (its rows could not be told apart). Cache files are written atomically and carry their key and a sha256 of their
tensors; an entry that does not match is rebuilt, not trusted.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np

from apclip.bundle import CLASS_COUNTS, CLASS_EMBEDDINGS, CLASSES_FILE, VOCAB_FILE, Manifest
from apclip.class_matrix import ClassMatrix, PromptSource, class_prompts, encode_class_matrix, load_class_matrix
from apclip.errors import ApclipError
from apclip.fileio import atomic_write

from apclip.engine.runners.encoders import EncoderIdentity, EncoderRunner


def cache_dir() -> Path:
    root = os.environ.get("APCLIP_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "apclip")
    return Path(root) / "classes"


def bundle_class_matrix(manifest: Manifest) -> ClassMatrix:
    matrix = load_class_matrix(manifest.file(CLASSES_FILE), manifest.labels)
    if matrix.embeddings.shape[2] != manifest.embed_dim:
        raise ApclipError(f"class matrix of bundle {manifest.path} has embedding size {matrix.embeddings.shape[2]}, "
                          f"the model {manifest.embed_dim}; re-run apclip-export")
    matrix.fallback_labels = list((manifest.raw.get("class_matrix") or {}).get("fallback_labels") or [])
    return matrix


def bundle_vocab(manifest: Manifest) -> str | None:
    """The bundle's copy of CLIP's BPE merges (hashed like every bundle file), used before any other:
    run-time labels then need neither open_clip_torch nor --bpe-vocab. None for older bundles."""
    return str(manifest.file(VOCAB_FILE)) if manifest.has(VOCAB_FILE) else None


def resolve_classes(manifest: Manifest, labels: Sequence[str] | None, bank: PromptSource | None,
                    text_runner: EncoderRunner, *, use_cache: bool = True, template: str | None = None,
                    log=lambda message: None) -> tuple[ClassMatrix, dict[str, int]]:
    """The class matrix for `labels` (default: the bundle's) and stats {reused, encoded, cached}.

    template: text of new labels without bank entries (default: the bundle's scoring template)."""
    base = bundle_class_matrix(manifest)
    if labels is not None and not list(labels):
        raise ApclipError("the label list is empty: give at least one label (or none, for the bundle's)")
    if labels is not None and len(set(labels)) != len(labels):
        twice = sorted({label for label in labels if list(labels).count(label) > 1})
        raise ApclipError(f"labels {twice} are listed more than once: each class must appear once")
    if labels is None or list(labels) == manifest.labels:
        return base, {"reused": base.num_classes, "encoded": 0, "cached": 0}
    index = {label: k for k, label in enumerate(manifest.labels)}
    new_labels = [label for label in labels if label not in index]
    new = None
    stats = {"reused": len(labels) - len(new_labels), "encoded": 0, "cached": 0}
    if new_labels:
        template = template or manifest.scoring.template
        prompts, fallback = class_prompts(new_labels, bank, template)
        identity: EncoderIdentity | None = getattr(text_runner, "cache_identity", None)
        if identity is None and use_cache:
            log(f"note: the text runner {getattr(text_runner, 'name', '?')} reports no identity: new labels are "
                f"not cached")
        use_cache = use_cache and identity is not None
        key = label_cache_key(identity, new_labels, prompts, template=template,
                              bank_sha256=getattr(bank, "sha256", None), vocab_sha256=vocab_sha256(manifest))
        path = cache_dir() / f"{key}.safetensors"
        if use_cache:
            new = _read_cache(path, key, new_labels, [len(p) for p in prompts], log)
        if new is not None:
            new.fallback_labels = list(fallback)
            stats["cached"] = len(new_labels)
            log(f"{len(new_labels)} new label(s) loaded from the cache {path}")
        else:
            source = identity.words() if identity is not None else getattr(text_runner, "name", "the text runner")
            log(f"encoding {len(new_labels)} new label(s) with {source} ({sum(map(len, prompts))} prompts)")
            new = encode_class_matrix(new_labels, prompts, text_runner, fallback_labels=fallback,
                                      vocab_path=bundle_vocab(manifest))
            stats["encoded"] = len(new_labels)
            if use_cache:
                _write_cache(path, key, new, log)
    return _assemble(labels, base, index, new), stats


def label_cache_key(identity: EncoderIdentity | None, labels: Sequence[str], prompts: Sequence[Sequence[str]], *,
                    template: str, bank_sha256: str | None, vocab_sha256: str) -> str:
    """The one derivation of the label cache key: everything that changes a row of the class matrix."""
    payload = json.dumps({"encoder": asdict(identity) if identity is not None else None, "labels": list(labels),
                          "prompts": [list(p) for p in prompts], "template": template, "prompt_bank": bank_sha256,
                          "vocab": vocab_sha256}, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def vocab_sha256(manifest: Manifest) -> str:
    """The BPE merges run-time labels are tokenized with: the bundle's copy, else the tokenizer's lookup."""
    if manifest.has(VOCAB_FILE):
        return str(manifest.files[VOCAB_FILE]["sha256"])
    from apclip.bundle import sha256_file
    from apclip.tokenizer import VocabularyNotFound, find_vocab

    try:
        return sha256_file(find_vocab(None))
    except VocabularyNotFound:  # nothing can be encoded here, and no cached entry has this key
        return "none"


def _content_sha256(embeddings: np.ndarray, counts: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(embeddings, dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(counts, dtype=np.int32).tobytes())
    return digest.hexdigest()


def _write_cache(path: Path, key: str, matrix: ClassMatrix, log) -> None:
    """Atomic write, with the key and a hash of the tensors in the header so that a damaged or swapped
    file is detected on read. A cache that cannot be written costs speed, never the run."""
    from safetensors.numpy import save_file

    metadata = {"key": key, "sha256": _content_sha256(matrix.embeddings, matrix.counts)}
    try:
        with atomic_write(path, mode=None) as tmp:
            save_file({CLASS_EMBEDDINGS: np.ascontiguousarray(matrix.embeddings, dtype=np.float32),
                       CLASS_COUNTS: np.ascontiguousarray(matrix.counts, dtype=np.int32)}, str(tmp),
                      metadata=metadata)
    except OSError as exc:
        log(f"warning: could not write the label cache {path} ({exc}); new labels will be encoded again next run")


def _read_cache(path: Path, key: str, labels: Sequence[str], prompt_counts: Sequence[int], log) -> ClassMatrix | None:
    """The cached matrix, or None (and the file removed) when it is missing or not exactly what was written."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
        matrix = load_class_matrix(path, labels)
        if metadata.get("key") != key:
            raise ValueError("written for other labels or another text encoder")
        if metadata.get("sha256") != _content_sha256(matrix.embeddings, matrix.counts):
            raise ValueError("tensors do not match their hash")
        if matrix.counts.tolist() != list(prompt_counts):
            raise ValueError("prompt counts differ")
        return matrix
    except Exception as exc:  # any defect means: rebuild
        log(f"label cache {path} is damaged ({exc}); rebuilding it")
        path.unlink(missing_ok=True)
        return None


def _assemble(labels: Sequence[str], base: ClassMatrix, index: dict[str, int], new: ClassMatrix | None) -> ClassMatrix:
    new_index = {label: k for k, label in enumerate(new.labels)} if new is not None else {}
    rows, counts = [], []
    for label in labels:
        source, k = (base, index[label]) if label in index else (new, new_index[label])
        rows.append(source.embeddings[k, : source.counts[k]])
        counts.append(int(source.counts[k]))
    width = max(counts)
    matrix = np.zeros((len(labels), width, base.embeddings.shape[2]), dtype=np.float32)
    for k, row in enumerate(rows):
        matrix[k, : len(row)] = row
    fallback = list(new.fallback_labels) if new is not None else []
    return ClassMatrix(matrix, np.array(counts, dtype=np.int32), list(labels), fallback)
