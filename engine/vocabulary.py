"""Open vocabulary at run time: the class matrix for any label list, reusing the bundle's rows.

Labels in the bundle reuse their precompiled rows. New labels are encoded with text.onnx (no torch)
from their prompt-bank entries, else the template "a video of {label}.". Encoded new labels are
cached on disk, keyed by the text encoder's sha256, the labels and their prompt texts, so the next
run starts instantly. Cache files are written atomically; a corrupt entry is rebuilt, not trusted.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from apclip.bundle import CLASSES_FILE, TEXT_FILE, Manifest
from apclip.class_matrix import (ClassMatrix, PromptSource, class_prompts, encode_class_matrix,
                                 load_class_matrix, save_class_matrix)

from .runners import EncoderRunner


def cache_dir() -> Path:
    root = os.environ.get("APCLIP_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "apclip")
    return Path(root) / "classes"


def bundle_class_matrix(manifest: Manifest) -> ClassMatrix:
    return load_class_matrix(manifest.file(CLASSES_FILE), manifest.labels)


def resolve_classes(manifest: Manifest, labels: Sequence[str] | None, bank: PromptSource | None,
                    text_runner: EncoderRunner, *, use_cache: bool = True,
                    log=lambda message: None) -> tuple[ClassMatrix, dict[str, int]]:
    """The class matrix for `labels` (default: the bundle's) and stats {reused, encoded, cached}."""
    base = bundle_class_matrix(manifest)
    if labels is None or list(labels) == manifest.labels:
        return base, {"reused": base.num_classes, "encoded": 0, "cached": 0}
    index = {label: k for k, label in enumerate(manifest.labels)}
    new_labels = [label for label in labels if label not in index]
    new = None
    stats = {"reused": len(labels) - len(new_labels), "encoded": 0, "cached": 0}
    if new_labels:
        prompts, fallback = class_prompts(new_labels, bank)
        key = _cache_key(manifest, new_labels, prompts)
        path = cache_dir() / f"{key}.safetensors"
        if use_cache:
            new = _read_cache(path, new_labels)
        if new is not None:
            stats["cached"] = len(new_labels)
            log(f"{len(new_labels)} new label(s) loaded from the cache {path}")
        else:
            log(f"encoding {len(new_labels)} new label(s) with {TEXT_FILE} ({sum(map(len, prompts))} prompts)")
            new = encode_class_matrix(new_labels, prompts, text_runner, fallback_labels=fallback)
            stats["encoded"] = len(new_labels)
            if use_cache:
                path.parent.mkdir(parents=True, exist_ok=True)
                save_class_matrix(path, new)
    return _assemble(labels, base, index, new), stats


def _cache_key(manifest: Manifest, labels: Sequence[str], prompts: Sequence[Sequence[str]]) -> str:
    text_sha = manifest.files[TEXT_FILE]["sha256"]
    payload = json.dumps({"text_encoder": text_sha, "labels": list(labels), "prompts": [list(p) for p in prompts]},
                         ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _read_cache(path: Path, labels: Sequence[str]) -> ClassMatrix | None:
    if not path.is_file():
        return None
    try:
        matrix = load_class_matrix(path, labels)
        # A truncated or hand-edited file can still parse; rows must be unit vectors or zero padding.
        norms = np.linalg.norm(matrix.embeddings, axis=-1)
        real = np.arange(matrix.max_prompts)[None] < matrix.counts[:, None]
        if (np.abs(norms[real] - 1) > 1e-3).any() or (norms[~real] != 0).any() or (matrix.counts < 1).any():
            raise ValueError("rows are not normalised")
        return matrix
    except Exception:  # any defect means: rebuild
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
