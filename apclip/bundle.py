"""The bundle: what export writes and inference reads. File names, tensor names and the manifest.

Defined once here (torch-free) so the exporter, the runners and the tests agree:

    bundle/
      manifest.json         format, model config, preprocessing, io, labels, hashes, tool versions
      vision.onnx           pixels  float32 [N, 3, R, R] -> embeddings float32 [N, E] (L2-normalised);
                            clip-level graphs (manifest `vision_graph`): [B, T, 3, R, R] -> [B, T, E] or [B, E]
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
import re
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
TEXT_BATCH = 256  # prompts per text-encoder call (run-time labels, export, engines' opt batch)
EMBEDDINGS_OUTPUT = "embeddings"
SCORER_INPUTS = ("frames", "classes", "counts")
SCORER_OUTPUT = "scores"
CLASS_EMBEDDINGS = "embeddings"
CLASS_COUNTS = "counts"


class BundleError(ApclipError):
    pass


VISION_LEVELS = ("frame", "clip")  # frame: each frame alone; clip: a whole clip of T frames per graph input
# one embedding per frame, one per clip, or (X-CLIP) one per clip followed by its L visual tokens [B, 1 + L, E]
VISION_OUTPUTS = ("frames", "video", "tokens")


@dataclass(frozen=True)
class VisionGraph:
    """What vision.onnx takes and returns (the manifest's `vision_graph`; absent: a per-frame graph).

    frame  pixels [N, 3, R, R] -> [N, E]
    clip   pixels [B, T, 3, R, R] -> [B, T, E] (output frames) or [B, E] (output video); T is the graph's
           constant, the bundle's preprocessing frames."""

    level: str = "frame"  # frame | clip
    output: str = "frames"  # frames | video
    frames: int | None = None  # T of a clip-level graph
    temporal_attention: str | None = None  # e.g. expand_temporal_view (Open-VCLIP); None for per-frame towers

    def __post_init__(self) -> None:
        if self.level not in VISION_LEVELS:
            raise ValueError(f"vision_graph.level {self.level!r} is not one of {', '.join(VISION_LEVELS)}")
        if self.output not in VISION_OUTPUTS:
            raise ValueError(f"vision_graph.output {self.output!r} is not one of {', '.join(VISION_OUTPUTS)}")
        if self.level == "clip" and not (isinstance(self.frames, int) and not isinstance(self.frames, bool)
                                         and self.frames >= 1):
            raise ValueError(f"vision_graph.frames {self.frames!r} must be a whole number >= 1 for a clip-level graph")
        if self.level == "frame" and (self.output != "frames" or self.frames is not None):
            raise ValueError("a frame-level vision_graph has output 'frames' and no frames count")
        if self.temporal_attention is not None and not isinstance(self.temporal_attention, str):
            raise ValueError(f"vision_graph.temporal_attention {self.temporal_attention!r} must be a string or null")

    @property
    def clip_level(self) -> bool:
        return self.level == "clip"

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "output": self.output, "frames": self.frames,
                "temporal_attention": self.temporal_attention}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "VisionGraph":
        if data is None:
            return cls()
        if not isinstance(data, dict) or set(data) - set(MANIFEST_FIELD_TYPES["vision_graph"]):
            raise ValueError(f"vision_graph {data!r} must be an object with keys "
                             f"{', '.join(MANIFEST_FIELD_TYPES['vision_graph'])}")
        return cls(str(data.get("level", "frame")), str(data.get("output", "frames")), data.get("frames"),
                   data.get("temporal_attention"))


# Types of the manifest fields added for clip-level graphs and weight patching (for manifest validators):
# field -> {key: (allowed JSON types)}; both fields may be absent (old bundles) or, for patching, null.
MANIFEST_FIELD_TYPES: dict[str, dict[str, tuple[type, ...]]] = {
    "vision_graph": {"level": (str,), "output": (str,), "frames": (int, type(None)),
                     "temporal_attention": (str, type(None))},
    "patching": {"ratio": (float, int), "base": (str,), "base_sha256": (str,), "patched_keys": (int,),
                 "kept_keys": (int,)},
}


def check_patching_record(data: Any) -> None:
    """ValueError unless `data` is null or a weight-patching record (apclip.patching.Patching.to_dict)."""
    if data is None:
        return
    types = MANIFEST_FIELD_TYPES["patching"]
    if not isinstance(data, dict) or set(data) != set(types):
        raise ValueError(f"patching must be null or an object with keys {', '.join(types)}")
    for key, allowed in types.items():
        if not isinstance(data[key], allowed) or isinstance(data[key], bool):
            raise ValueError(f"patching.{key} {data[key]!r} has the wrong type")
    if not 0.0 <= float(data["ratio"]) <= 1.0:
        raise ValueError(f"patching.ratio {data['ratio']} is not in [0, 1]")


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
        """A file the runtime may load: only one the manifest lists (and so hashes), inside the bundle."""
        if name not in self.files:
            raise BundleError(f"bundle {self.path} does not list {name} in its manifest (with its sha256), so it "
                              f"is not loaded; re-run apclip-export")
        return bundle_member(self.path, name)

    def has(self, name: str) -> bool:
        return name in self.files

    @property
    def scoring(self) -> Scoring:
        """The scoring protocol (MAKA with the paper's template for bundles from before protocols)."""
        return Scoring.from_dict(self.raw.get("scoring"))

    @property
    def vision_graph(self) -> VisionGraph:
        """Per-frame or clip-level vision.onnx (bundles before clip-level graphs: per-frame)."""
        return VisionGraph.from_dict(self.raw.get("vision_graph"))

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


# Limits on what a manifest may declare (docs/security.md). A bundle is a trust boundary: it may come from
# anyone, so every name, number and size in manifest.json is checked before any file it names is opened.
MAX_MANIFEST_BYTES = 64 << 20
MAX_BUNDLE_FILES = 1000
MAX_LABELS = 100_000
MAX_LABEL_CHARS = 1000
# The largest file a bundle may list ($APCLIP_MAX_BUNDLE_FILE_MB): ViT-L/14 fp32 ONNX is ~1.2 GB.
MAX_BUNDLE_FILE_BYTES = int(os.environ.get("APCLIP_MAX_BUNDLE_FILE_MB", "16384")) << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def bundle_member(root: Path, name: object) -> Path:
    """`root / name` for a name the manifest lists, or BundleError: a plain relative path inside the bundle
    (no `..`, no absolute path, no backslash or NUL) that, symlinks resolved, stays inside the bundle.
    Checked before the file is opened, so an outside file is never read (or hashed: no hash oracle)."""
    if not isinstance(name, str) or not name or len(name) > 255 or "\\" in name or "\0" in name:
        raise BundleError(f"bundle manifest {root / MANIFEST} lists a bad file name {str(name)[:80]!r}")
    parts = name.split("/")
    if name.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise BundleError(f"bundle manifest {root / MANIFEST} lists {name[:80]!r}, which is not a plain name "
                          f"inside the bundle; refused")
    path = root / name
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
        raise BundleError(f"bundle file {path} is a symlink that leaves the bundle; refused (copy the file in)")
    return path


def _check_fields(raw: object, path: Path) -> None:
    """Types and ranges of the manifest fields every reader relies on, one line per problem."""
    if not isinstance(raw, dict):
        raise BundleError(f"{path} is not an apclip bundle manifest (a JSON object)")
    if raw.get("format") != FORMAT:
        raise BundleError(f"{path} is not an apclip bundle manifest")
    version = raw.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise BundleError(f"bundle manifest {path}: format_version {str(version)[:40]!r} is not a version number; "
                          f"re-run apclip-export")
    if version > FORMAT_VERSION:
        raise BundleError(f"bundle {path.parent} has format version {version}, newer than this "
                          f"apclip understands ({FORMAT_VERSION}); upgrade apclip")
    labels, files = raw.get("labels"), raw.get("files")
    if (not isinstance(labels, list) or not 0 < len(labels) <= MAX_LABELS
            or not all(isinstance(label, str) and 0 < len(label) <= MAX_LABEL_CHARS for label in labels)):
        raise BundleError(f"bundle manifest {path}: labels must be 1 to {MAX_LABELS} non-empty strings of at most "
                          f"{MAX_LABEL_CHARS} characters; re-run apclip-export")
    if not isinstance(files, dict) or len(files) > MAX_BUNDLE_FILES:
        raise BundleError(f"bundle manifest {path}: files must be an object of at most {MAX_BUNDLE_FILES} entries")
    for name, info in files.items():
        declared = info.get("bytes") if isinstance(info, dict) else None
        if (not isinstance(info, dict) or not isinstance(info.get("sha256"), str) or not _SHA256.match(info["sha256"])
                or not (declared is None or (isinstance(declared, int) and not isinstance(declared, bool)
                                             and 0 <= declared <= MAX_BUNDLE_FILE_BYTES))):
            raise BundleError(f"bundle manifest {path}: files[{name[:80]!r}] needs a sha256 (64 hex digits) and a "
                              f"size in bytes up to {MAX_BUNDLE_FILE_BYTES} (APCLIP_MAX_BUNDLE_FILE_MB)")
    for key in ("model", "preprocessing"):
        if not isinstance(raw.get(key), dict):
            raise BundleError(f"bundle manifest {path} is missing or has a bad field ({key} must be an object); "
                              f"re-run apclip-export")


def read_manifest(bundle: str | os.PathLike, verify: bool = True) -> Manifest:
    """Parse `bundle/manifest.json`; with verify, every listed file must match its size and sha256.

    The one loader every reader of a bundle goes through: the manifest is a regular file of bounded
    size, its fields are type- and range-checked, and its file names stay inside the bundle."""
    from apclip.fileio import read_user_bytes

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
    if not os.path.lexists(path):
        raise BundleError(f"bundle {root} has no {MANIFEST}; it is not a complete apclip bundle "
                          f"(re-run apclip-export)")
    if path.is_symlink():
        raise BundleError(f"bundle manifest {path} is a symlink; refused (copy the file in)")
    data = read_user_bytes(path, f"bundle manifest {path}", BundleError, MAX_MANIFEST_BYTES)
    try:
        raw = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        reason = "it nests too deeply" if isinstance(exc, RecursionError) else " ".join(str(exc).split())[:200]
        raise BundleError(f"bundle manifest {path} is unreadable ({reason}); re-run apclip-export") from None
    _check_fields(raw, path)
    for name in raw["files"]:
        bundle_member(root, name)
    try:
        manifest = Manifest(
            path=root, model=ModelConfig.from_dict(raw["model"]),
            preprocessing=Preprocessing.from_dict(raw["preprocessing"]),
            labels=list(raw["labels"]), files=dict(raw["files"]), raw=raw,
        )
        Scoring.from_dict(raw.get("scoring"))  # a bad scoring entry is a bad field too
        graph = VisionGraph.from_dict(raw.get("vision_graph"))
        check_patching_record(raw.get("patching"))
        if graph.clip_level and graph.frames != int(raw["preprocessing"]["frames"]):
            raise ValueError(f"vision_graph.frames {graph.frames} differs from preprocessing frames "
                             f"{raw['preprocessing']['frames']}")
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise BundleError(f"bundle manifest {path} is missing or has a bad field ({reason}); "
                          f"re-run apclip-export") from None
    _check_numbers(manifest, path)
    if verify:
        verify_files(manifest)
    _check_consistency(manifest, path)
    return manifest


def _check_numbers(manifest: Manifest, path: Path) -> None:
    """Model and preprocessing sizes a reader allocates from: positive, bounded, and agreeing with each other."""
    model, pre = manifest.model, manifest.preprocessing
    sizes = {"embed_dim": model.embed_dim, "image_resolution": model.image_resolution,
             "frames": pre.frames, "clips": pre.clips, "resolution": pre.resolution}
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 65536:
            raise BundleError(f"bundle manifest {path}: {name}={str(value)[:40]} is not a size in 1..65536; "
                              f"re-run apclip-export")
    if pre.frames * pre.clips > 4096:
        raise BundleError(f"bundle manifest {path}: {pre.frames} frames x {pre.clips} clips is over 4096 frames")
    matrix = manifest.raw.get("class_matrix")
    if isinstance(matrix, dict):
        for key, want in (("num_classes", len(manifest.labels)), ("embed_dim", model.embed_dim)):
            if key in matrix and matrix[key] != want:
                raise BundleError(f"bundle manifest {path}: class_matrix {key} {str(matrix[key])[:40]} does not "
                                  f"match {want}; re-run apclip-export")


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
    if CLASSES_FILE not in manifest.files:
        return f"it does not list {CLASSES_FILE}"
    file = manifest.file(CLASSES_FILE)
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
    """Every listed file: a regular file inside the bundle, of its declared size (checked before hashing,
    so a huge or sparse file costs a stat, not a read), with its sha256."""
    for name, info in manifest.files.items():
        file = bundle_member(manifest.path, name)
        if not file.is_file():
            raise BundleError(f"bundle file {file} is missing or not a regular file; re-run apclip-export")
        size = file.stat().st_size
        declared = info.get("bytes")
        if size > MAX_BUNDLE_FILE_BYTES or (declared is not None and size != declared):
            raise BundleError(f"bundle file {file} is {size} bytes, not the {declared} its manifest declares "
                              f"(limit {MAX_BUNDLE_FILE_BYTES}, APCLIP_MAX_BUNDLE_FILE_MB); re-run apclip-export")
        if sha256_file(file) != info.get("sha256"):
            raise BundleError(f"bundle file {file} does not match its sha256 in the manifest "
                              f"(modified or corrupt); re-run apclip-export")
