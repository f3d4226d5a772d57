"""TensorRT engine cache: which engine file serves this bundle on this GPU, and when to rebuild.

Torch-free and TensorRT-free, so every decision here is unit-tested on CPU. An engine is only valid
for the exact ONNX file, TensorRT version and GPU (compute capability and name) it was built on, at
one precision and one optimization profile; the key holds all of them:

    bundle/engines/vision-fp16-sm90-3f2a9c01d4e5b6a7.engine   (+ .timing.cache beside it)
    manifest.json  "engines": {"vision-fp16-sm90-3f2a...engine": {"key": {...}, "sha256": ..., ...}}

An engine whose listed key, file hash or deserialisation does not match is never used: the builder
(apclip.export.tensorrt.build) rebuilds it and says why; the runner refuses it and says how to rebuild.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from apclip.bundle import CLASSES_FILE, MANIFEST, TEXT_BATCH, TEXT_FILE, VISION_FILE, Manifest, sha256_file
from apclip.errors import ApclipError

ENGINES_DIR = "engines"
# graph -> (ONNX file it is built from, manifest io entry giving its batch range and input shape)
GRAPHS = {"vision": VISION_FILE, "text": TEXT_FILE}
TEXT_ENGINE_MAX = 4096  # a text profile is capped here: TensorRT sizes activations for the max batch


class EngineCacheError(ApclipError):
    pass


def engine_precisions() -> tuple[str, ...]:
    """The precisions engines are built in: the trt rows of the backend table."""
    from apclip.engine.runners.table import precisions

    return precisions("trt")


@dataclass(frozen=True)
class GpuIdentity:
    name: str  # e.g. "NVIDIA H200", "Orin (nvgpu)"
    capability: tuple[int, int]  # compute capability, e.g. (9, 0)

    @property
    def sm(self) -> str:
        return f"sm{self.capability[0]}{self.capability[1]}"


@dataclass(frozen=True)
class Profile:
    """One optimization profile over the batch dimension (the other dimensions are static)."""

    input_name: str
    min_batch: int
    opt_batch: int  # the batch TensorRT tunes its kernels for: the one the engine runs most
    max_batch: int
    tail: tuple[int, ...]  # the static dimensions after the batch, e.g. (3, 224, 224)

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) full input shapes, as IOptimizationProfile.set_shape takes them."""
        return tuple((batch, *self.tail) for batch in (self.min_batch, self.opt_batch, self.max_batch))


@dataclass(frozen=True)
class EngineKey:
    graph: str  # "vision" | "text" | "vision+maka"
    onnx_sha256: str  # of the ONNX file (vision+maka: of the ONNX and classes.safetensors hashes together)
    tensorrt: str  # tensorrt.__version__ of the builder
    gpu: GpuIdentity
    precision: str  # "fp16" | "int8"
    profile: Profile

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["gpu"]["capability"] = list(self.gpu.capability)
        data["profile"]["tail"] = list(self.profile.tail)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EngineKey":
        try:
            gpu = GpuIdentity(str(data["gpu"]["name"]), tuple(int(c) for c in data["gpu"]["capability"]))
            p = data["profile"]
            profile = Profile(str(p["input_name"]), int(p["min_batch"]), int(p["opt_batch"]), int(p["max_batch"]),
                              tuple(int(d) for d in p["tail"]))
            return cls(str(data["graph"]), str(data["onnx_sha256"]), str(data["tensorrt"]), gpu,
                       str(data["precision"]), profile)
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineCacheError(f"unreadable engine key ({exc})") from None

    def digest(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def file_name(self) -> str:
        return f"{self.graph.replace('+', '-')}-{self.precision}-{self.gpu.sm}-{self.digest()}.engine"

    def differences(self, other: "EngineKey") -> list[str]:
        """What differs from `other`, in words ("TensorRT 10.3.0 != 10.9.0")."""
        out = []
        labels = {"onnx_sha256": "ONNX file", "tensorrt": "TensorRT", "precision": "precision", "graph": "graph"}
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if mine == theirs:
                continue
            if f.name == "gpu":
                out.append(f"GPU {theirs.name} {theirs.sm} != {mine.name} {mine.sm}")
            elif f.name == "profile":
                out.append(f"profile {_profile_words(theirs)} != {_profile_words(mine)}")
            elif f.name == "onnx_sha256":
                out.append(f"ONNX file sha256 {theirs[:12]}... != {mine[:12]}...")
            else:
                out.append(f"{labels[f.name]} {theirs} != {mine}")
        return out


def _profile_words(p: Profile) -> str:
    return f"batch {p.min_batch}/{p.opt_batch}/{p.max_batch}"


def profile_from_manifest(manifest: Manifest, graph: str, opt_batch: int | None = None,
                          max_batch: int | None = None) -> Profile:
    """The batch range the bundle's ONNX graph was exported for, from the manifest's io entry.

    opt: vision engines are tuned for one clip (V*T frames, the batch clip mode sends), text engines for
    the run-time batch of TEXT_BATCH prompts; both capped to the exported range. A text graph's range is huge
    (4096+) and TensorRT plans memory for the max, so text engines stop at TEXT_ENGINE_MAX."""
    base = graph.split("+")[0]
    if base not in GRAPHS:
        raise EngineCacheError(f"unknown graph {graph!r}; choose one of {', '.join(GRAPHS)}")
    io = (manifest.raw.get("io") or {}).get(base)
    if not io or not io.get("inputs"):
        raise EngineCacheError(f"bundle {manifest.path}: manifest has no io entry for {base}; re-run apclip-export")
    spec = io["inputs"][0]
    # A symbolic token axis ("L", 2..77 since text.onnx cuts at the last EOT) is built at the full
    # context length: the TensorRT text runner is fed [M, 77], as before.
    tail = tuple(int(d) if not isinstance(d, str) else manifest.model.context_length for d in spec["shape"][1:])
    exported_max = int(io.get("batch_max") or 1024)
    if max_batch is None:
        max_batch = min(exported_max, TEXT_ENGINE_MAX) if base == "text" else exported_max
    if not 1 <= max_batch <= exported_max:
        raise EngineCacheError(f"max batch {max_batch} is outside the range {manifest.path / GRAPHS[base]} was "
                               f"exported for (1..{exported_max}); re-export with a larger --batch-max")
    if opt_batch is None:
        pre = manifest.preprocessing
        # Clip-level vision graphs (manifest vision_graph) batch whole clips: one video is V of them.
        frames = 1 if manifest.vision_graph.clip_level else pre.frames
        opt_batch = frames * pre.clips * pre.crops if base == "vision" else TEXT_BATCH
    opt_batch = max(1, min(int(opt_batch), max_batch))
    return Profile(str(spec["name"]), 1, opt_batch, max_batch, tail)


def engine_key(manifest: Manifest, graph: str, precision: str, tensorrt_version: str, gpu: GpuIdentity,
               profile: Profile) -> EngineKey:
    if precision not in engine_precisions():
        raise EngineCacheError(f"precision {precision!r}: choose one of {', '.join(engine_precisions())}")
    sources = [GRAPHS[graph.split("+")[0]]] + ([CLASSES_FILE] if graph.endswith("+maka") else [])
    hashes = []
    for source in sources:
        info = manifest.files.get(source)
        if not info or not info.get("sha256"):
            raise EngineCacheError(f"bundle {manifest.path} lists no {source}; re-run apclip-export")
        hashes.append(str(info["sha256"]))
    # A vision+maka engine embeds the class matrix: its key covers both files.
    source_hash = hashes[0] if len(hashes) == 1 else hashlib.sha256(":".join(hashes).encode()).hexdigest()
    return EngineKey(graph, source_hash, tensorrt_version, gpu, precision, profile)


def listed_engines(manifest: Manifest) -> dict[str, dict[str, Any]]:
    """The manifest's engines entries that have this module's shape (older or hand-made ones are ignored)."""
    engines = manifest.raw.get("engines") or {}
    if not isinstance(engines, dict):
        return {}
    return {name: entry for name, entry in engines.items() if isinstance(entry, dict) and "key" in entry}


def listed_keys(manifest: Manifest) -> dict[str, EngineKey]:
    """Readable keys of the listed engines, by file name (unreadable entries are left out)."""
    keys = {}
    for name, entry in listed_engines(manifest).items():
        try:
            keys[name] = EngineKey.from_dict(entry["key"])
        except EngineCacheError:
            continue
    return keys


def listed_precisions(manifest: Manifest, graph: str) -> set[str]:
    """Precisions the bundle lists engines of for `graph` (for any GPU: the runner checks the machine)."""
    return {key.precision for key in listed_keys(manifest).values() if key.graph == graph}


def listed_engine_names(manifest: Manifest, graph: str, precision: str) -> list[str]:
    """File names of the listed `graph` engines of `precision`, newest first."""
    engines = listed_engines(manifest)
    names = [name for name, key in listed_keys(manifest).items() if key.graph == graph and key.precision == precision]
    return sorted(names, key=lambda name: str(engines[name].get("built", "")), reverse=True)


@dataclass(frozen=True)
class CacheDecision:
    use: bool  # True: `path` is a valid engine for the key; False: build one at `path`
    path: Path
    reason: str  # one line: why it is used or why it must be (re)built


def find_engine(manifest: Manifest, key: EngineKey) -> CacheDecision:
    """Whether the bundle holds a usable engine for `key`. Deserialisation is the runner's last check."""
    path = manifest.path / ENGINES_DIR / key.file_name()
    engines = listed_engines(manifest)
    entry = engines.get(key.file_name())
    if entry is None:
        near = _nearest(engines, key)
        if near is None:
            return CacheDecision(False, path, f"no {key.graph} {key.precision} engine for {key.gpu.name} "
                                              f"({key.gpu.sm}) with TensorRT {key.tensorrt} in the bundle")
        name, stored = near
        return CacheDecision(False, path, f"engine {name} does not fit this machine ("
                                          + "; ".join(key.differences(stored)) + ")")
    try:
        stored = EngineKey.from_dict(entry["key"])
    except EngineCacheError as exc:
        return CacheDecision(False, path, f"engine {path.name}: {exc}")
    if stored != key:  # a name collision or an edited manifest: the key is the truth, not the file name
        return CacheDecision(False, path, f"engine {path.name} was listed for another key ("
                                          + "; ".join(key.differences(stored)) + ")")
    if not path.is_file():
        return CacheDecision(False, path, f"engine {path.name} is listed in the manifest but missing")
    if sha256_file(path) != entry.get("sha256"):
        return CacheDecision(False, path, f"engine {path.name} does not match its sha256 (modified or corrupt)")
    return CacheDecision(True, path, f"engine {path.name} matches this GPU, TensorRT and ONNX file")


def _nearest(engines: dict[str, dict[str, Any]], key: EngineKey) -> tuple[str, EngineKey] | None:
    """The listed engine for the same graph and precision (the one a user expects to be used), if any."""
    for name, entry in sorted(engines.items()):
        try:
            stored = EngineKey.from_dict(entry["key"])
        except EngineCacheError:
            continue
        if stored.graph == key.graph and stored.precision == key.precision:
            return name, stored
    return None


def engine_entry(key: EngineKey, engine: Path, timing_cache: Path | None, built: str,
                 build_seconds: float, notes: list[str] | None = None) -> dict[str, Any]:
    entry = {"key": key.to_dict(), "file": f"{ENGINES_DIR}/{engine.name}", "sha256": sha256_file(engine),
             "bytes": engine.stat().st_size, "built": built, "build_seconds": round(build_seconds, 1)}
    if timing_cache is not None:
        entry["timing_cache"] = f"{ENGINES_DIR}/{timing_cache.name}"
    if notes:
        entry["notes"] = list(notes)
    return entry


def record_engine(manifest: Manifest, name: str, entry: dict[str, Any], *, replace_graph: bool = True) -> None:
    """Write `entry` into manifest.json's engines (atomically). With replace_graph, entries of the same
    graph and precision for other keys are dropped from the listing (their files are left alone)."""
    from apclip.fileio import atomic_write

    path = manifest.path / MANIFEST
    raw = json.loads(path.read_text(encoding="utf-8"))
    engines = {k: v for k, v in (raw.get("engines") or {}).items() if isinstance(v, dict) and "key" in v}
    if replace_graph:
        graph, precision = entry["key"]["graph"], entry["key"]["precision"]
        gpu = entry["key"]["gpu"]
        engines = {k: v for k, v in engines.items()
                   if not (v["key"].get("graph") == graph and v["key"].get("precision") == precision
                           and v["key"].get("gpu") == gpu)}
    engines[name] = entry
    raw["engines"] = engines
    with atomic_write(path, "w") as f:
        f.write(json.dumps(raw, indent=2, ensure_ascii=False) + "\n")
    manifest.raw["engines"] = engines


def timing_cache_path(engine: Path, key: EngineKey) -> Path:
    """Beside the engine, one per TensorRT version and GPU (a timing cache is tied to both, not to the ONNX)."""
    return engine.with_name(f"{key.gpu.sm}-trt{key.tensorrt}.timing.cache")


def machine_engines(manifest: Manifest, graph: str, tensorrt_version: str, gpu: GpuIdentity, precision: str
                    ) -> tuple[list[CacheDecision], list[str]]:
    """Listed engines of `graph` at `precision` that fit this machine (usable decisions, newest first), and
    why each other listed engine of that graph and precision does not (one line each). The profile is the
    listed one: any profile the builder chose is fine at run time, the batch is split to fit it."""
    usable, refused = [], []
    for name, entry in sorted(listed_engines(manifest).items(), key=lambda item: str(item[1].get("built", "")),
                              reverse=True):
        try:
            stored = EngineKey.from_dict(entry["key"])
        except EngineCacheError as exc:
            refused.append(f"{name}: {exc}")
            continue
        if stored.graph != graph or stored.precision != precision:
            continue
        try:
            expected = engine_key(manifest, graph, stored.precision, tensorrt_version, gpu, stored.profile)
        except EngineCacheError as exc:
            refused.append(f"{name}: {exc}")
            continue
        decision = find_engine(manifest, expected)
        (usable if decision.use else refused).append(decision if decision.use else f"{name}: {decision.reason}")
    return usable, refused
