"""The bundle: what export writes and inference reads. File names, tensor names and the manifest.

Defined once here (torch-free) so the exporter, the runners and the tests agree:

    bundle/
      manifest.json         format, model config, preprocessing, io, labels, hashes, tool versions
      vision.onnx           pixels  float32 [N, 3, R, R] -> embeddings float32 [N, E] (L2-normalised)
      text.onnx             tokens  int64   [M, L]       -> embeddings float32 [M, E] (L2-normalised)
      classes.safetensors   embeddings float32 [K, P, E] (normalised rows, zero padding), counts int32 [K]
      prompts.json          {label: [prompt text of each row]}
      vision.int8.onnx      (optional, --precision fp32,int8) vision.onnx with int8 MatMul/Gemm weights
      text.int8.onnx        (optional, --precision fp32,int8) text.onnx likewise
      bpe_simple_vocab_16e6.txt.gz  CLIP's BPE merges (tokenizer for run-time labels; bundles since 0.1)
      scorer.onnx           (optional) frames [B, Nv, E], classes [K, P, E], counts [K] -> scores [B, K]
      engines/              (optional) TensorRT engines built on the target GPU
    (L: 2..77 tokens in bundles made since the dynamic token axis, 77 before.)
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apclip.config import CROP_COUNTS, ModelConfig
from apclip.errors import ApclipError
from apclip.preprocessing import Preprocessing
from apclip.scoring_protocol import Scoring

FORMAT = "apclip-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VISION_FILE = "vision.onnx"
TEXT_FILE = "text.onnx"
CLASSES_FILE = "classes.safetensors"
PROMPTS_FILE = "prompts.json"  # the text of every class-matrix row, for explanations
SCORER_FILE = "scorer.onnx"
# apclip-export --precision int8: dynamically quantized copies of the encoders (same inputs/outputs)
INT8_FILES = {VISION_FILE: "vision.int8.onnx", TEXT_FILE: "text.int8.onnx"}
PRECISIONS = ("fp32", "int8")
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"  # CLIP's BPE merges, so run-time labels need no open_clip

VISION_INPUT = "pixels"
TEXT_INPUT = "tokens"
EMBEDDINGS_OUTPUT = "embeddings"
SCORER_INPUTS = ("frames", "classes", "counts")
SCORER_OUTPUT = "scores"
CLASS_EMBEDDINGS = "embeddings"
CLASS_COUNTS = "counts"


class BundleError(ApclipError):
    pass


@dataclass
class Manifest:
    path: Path  # the bundle directory
    model: ModelConfig
    preprocessing: Preprocessing
    labels: list[str]
    files: dict[str, dict[str, Any]]  # name -> {"sha256": ..., "bytes": ...}
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return name in self.files

    @property
    def scoring(self) -> Scoring:
        """The scoring protocol (MAKA with the paper's template for bundles from before protocols)."""
        return Scoring.from_dict(self.raw.get("scoring"))

    @property
    def vision_normalized(self) -> bool:
        """Whether vision.onnx emits L2-normalised embeddings (every bundle but vificlip-protocol ones,
        whose views are mean-pooled before normalisation)."""
        return bool(((self.raw.get("io") or {}).get("vision") or {}).get("normalized", True))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(bundle: str | os.PathLike, verify: bool = True) -> Manifest:
    """Parse `bundle/manifest.json`; with verify, every listed file must match its sha256."""
    root = Path(bundle)
    path = root / MANIFEST
    if not root.is_dir():
        if root.name == MANIFEST and root.is_file():
            raise BundleError(f"--bundle {root} is the bundle's manifest file: give the folder that holds it, "
                              f"--bundle {root.parent}")
        if root.exists():
            raise BundleError(f"--bundle {root} is a file, not a bundle folder (a bundle is the folder apclip-export "
                              f"writes: manifest.json, vision.onnx, ...)")
        raise BundleError(f"bundle {root} does not exist (create one with apclip-export --ckpt ...)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"bundle {root} has no {MANIFEST}; it is not a complete apclip bundle "
                          f"(re-run apclip-export)") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"bundle manifest {path} is unreadable ({exc}); re-run apclip-export") from None
    if raw.get("format") != FORMAT:
        raise BundleError(f"{path} is not an apclip bundle manifest")
    if int(raw.get("format_version", -1)) > FORMAT_VERSION:
        raise BundleError(f"bundle {root} has format version {raw.get('format_version')}, newer than this "
                          f"apclip understands ({FORMAT_VERSION}); upgrade apclip")
    try:
        manifest = Manifest(
            path=root, model=ModelConfig.from_dict(raw["model"]),
            preprocessing=Preprocessing.from_dict(raw["preprocessing"]),
            labels=list(raw["labels"]), files=dict(raw["files"]), raw=raw,
        )
        Scoring.from_dict(raw.get("scoring"))  # a bad scoring entry is a bad field too
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"bundle manifest {path} is missing or has a bad field ({exc}); re-run apclip-export") from None
    _check_consistency(manifest, path)
    if verify:
        verify_files(manifest)
    return manifest


def bound_metadata(labels_sha256: str, preprocessing: Preprocessing, scoring: Scoring | None = None) -> dict[str, str]:
    """What classes.safetensors carries of the manifest in its header. That file is hashed in the
    manifest, so editing the manifest's labels, preprocessing or scoring (even with a recomputed
    labels_sha256) no longer matches it."""
    out = {"labels_sha256": labels_sha256, "preprocessing": json.dumps(preprocessing.to_dict(), sort_keys=True)}
    if scoring is not None:
        out["scoring"] = json.dumps(scoring.to_dict(), sort_keys=True)
    return out


def _same_bound_value(key: str, stored: str, expected: str) -> bool:
    """Header and manifest agree. Compared as parsed values, so that headers written before a field existed
    (preprocessing without a profile) still match the manifest that means the same."""
    if stored == expected:
        return True
    try:
        if key == "preprocessing":
            return Preprocessing.from_dict(json.loads(stored)) == Preprocessing.from_dict(json.loads(expected))
        if key == "scoring":
            return Scoring.from_dict(json.loads(stored)) == Scoring.from_dict(json.loads(expected))
    except (ValueError, KeyError, TypeError):
        return False
    return False


def _bound_to_class_matrix(manifest: Manifest) -> str | None:
    """A problem when the class matrix header disagrees with the manifest (None: consistent)."""
    file = manifest.path / CLASSES_FILE
    if not file.is_file():
        return None  # reported as a missing file by verify_files
    try:
        from safetensors import safe_open

        with safe_open(str(file), framework="numpy") as f:
            stored = f.metadata() or {}
    except Exception:  # unreadable: verify_files or the loader reports it with its own message
        return None
    expected = bound_metadata(manifest.raw.get("labels_sha256", ""), manifest.preprocessing, manifest.scoring)
    if "scoring" not in stored and "preprocessing" in stored:  # bound before protocols existed: compiled for MAKA
        stored = dict(stored, scoring=json.dumps(Scoring().to_dict(), sort_keys=True))
    for key, value in expected.items():
        if key in stored and not _same_bound_value(key, stored[key], value):
            return f"its {key} does not match the one {CLASSES_FILE} was compiled for (edited by hand?)"
    return None


def _check_consistency(manifest: Manifest, path: Path) -> None:
    """The manifest is the one unhashed file: its labels carry their own hash, and its numbers must fit."""
    from apclip.labels import labels_sha256

    pre = manifest.preprocessing
    expected = manifest.raw.get("labels_sha256")
    problem = None
    if expected is None or labels_sha256(manifest.labels) != expected:
        problem = "its labels do not match labels_sha256 (edited by hand?)"
    elif min(pre.frames, pre.clips) < 1 or pre.crops not in CROP_COUNTS:
        problem = f"preprocessing frames={pre.frames} clips={pre.clips} crops={pre.crops} is invalid"
    elif pre.resolution != manifest.model.image_resolution:
        problem = (f"preprocessing resolution {pre.resolution} differs from the model's "
                   f"{manifest.model.image_resolution}")
    else:
        problem = _bound_to_class_matrix(manifest)
    if problem:
        raise BundleError(f"bundle manifest {path}: {problem}; re-run apclip-export")


def verify_files(manifest: Manifest) -> None:
    for name, info in manifest.files.items():
        file = manifest.path / name
        if not file.is_file():
            raise BundleError(f"bundle file {file} is missing; re-run apclip-export")
        if sha256_file(file) != info.get("sha256"):
            raise BundleError(f"bundle file {file} does not match its sha256 in the manifest "
                              f"(modified or corrupt); re-run apclip-export")
