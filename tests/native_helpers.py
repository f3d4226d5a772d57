"""The native runtime from the tests: build it once (cmake configure + build into ./build, reused and
incremental; ccache when installed), and make bundles and videos for the parity tests.

`build_native()` returns the build folder, or raises NativeUnavailable saying which dependency is missing
(the tests then skip with that reason); a failing configure or build with every dependency present is a
test failure, not a skip.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build"
CLI = "apclip-infer-native"
LIBRARY = "libapclip_runtime.so"
HEADER = ROOT / "native" / "include" / "apclip.h"
# (what, header a Debian -dev package puts there, the package)
_HEADERS = (("OpenCV C++", "/usr/include/opencv4/opencv2/videoio.hpp", "libopencv-dev"),
            ("nlohmann-json", "/usr/include/nlohmann/json.hpp", "nlohmann-json3-dev"),
            ("OpenSSL", "/usr/include/openssl/evp.h", "libssl-dev"))
BUILD_TIMEOUT_S = 900


class NativeUnavailable(Exception):
    """A dependency of the native build is missing here (the reason is the message)."""


def missing_dependency() -> str | None:
    """None when everything the native build needs is installed, else what is missing and how to get it."""
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh installs cmake and g++ as root)"
    for what, header, package in _HEADERS:
        if not Path(header).is_file():
            return f"{what} development files are missing ({header}; apt-get install {package}, as scripts/setup.sh does)"
    if openvino_cmake_dir() is None:
        return "the openvino wheel is not installed (pip install \"apclip[openvino]\")"
    return None


def openvino_cmake_dir() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("openvino")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "cmake"
    return folder if (folder / "OpenVINOConfig.cmake").is_file() else None


def build_native(build: Path = BUILD) -> Path:
    """Configure (first time) and build; returns the build folder with the library, the CLI and the tests."""
    reason = missing_dependency()
    if reason:
        raise NativeUnavailable(reason)
    env = dict(os.environ, APCLIP_PYTHON=sys.executable)
    commands = []
    if not (build / "CMakeCache.txt").is_file():
        commands.append(["cmake", "-S", str(ROOT), "-B", str(build), f"-DOpenVINO_DIR={openvino_cmake_dir()}"])
    commands.append(["cmake", "--build", str(build), "--parallel", str(os.cpu_count() or 2)])
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=BUILD_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return build


def run_cli(build: Path, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """apclip-infer-native ARGS; its compiled-model cache in the build folder, never the user's ~/.cache."""
    env = {**os.environ, "APCLIP_CACHE_DIR": str(build / "test-cache")}
    return subprocess.run([str(build / CLI), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


def rebind_bundle(source: Path, out: Path, *, preprocessing=None, scoring=None, prompts_per_class: int | None = None) -> Path:
    """A copy of bundle `source` with another preprocessing and/or scoring, consistent the way export writes
    one: the class matrix re-bound to them (header metadata), every hash recomputed. The encoders stay the
    same, so a parity test gets every profile and protocol from one exported model in milliseconds.
    prompts_per_class: keep only the first rows of every class (the vificlip protocol scores one prompt)."""
    from apclip.bundle import CLASSES_FILE, MANIFEST, PROMPTS_FILE, bound_metadata, read_manifest, sha256_file
    from apclip.class_matrix import load_class_matrix, save_class_matrix

    manifest = read_manifest(source)
    shutil.copytree(source, out)
    raw = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    pre = preprocessing or manifest.preprocessing
    scoring = scoring or manifest.scoring
    raw["preprocessing"] = pre.to_dict()
    raw["scoring"] = scoring.to_dict()
    matrix = load_class_matrix(source / CLASSES_FILE, manifest.labels)
    if prompts_per_class:
        matrix = dataclasses.replace(matrix, embeddings=np.ascontiguousarray(matrix.embeddings[:, :prompts_per_class]),
                                     counts=np.minimum(matrix.counts, prompts_per_class).astype(np.int32))
        texts = out / PROMPTS_FILE
        if texts.is_file():
            rows = json.loads(texts.read_text(encoding="utf-8"))
            texts.write_text(json.dumps({k: v[:prompts_per_class] for k, v in rows.items()}), encoding="utf-8")
    (out / CLASSES_FILE).unlink()
    save_class_matrix(out / CLASSES_FILE, matrix, bound_metadata(raw["labels_sha256"], pre, scoring))
    for name in raw["files"]:
        raw["files"][name]["sha256"] = sha256_file(out / name)
        raw["files"][name]["bytes"] = (out / name).stat().st_size
    (out / MANIFEST).write_text(json.dumps(raw, indent=2), encoding="utf-8")
    read_manifest(out)  # consistent and verified, as an exported one
    return out


def write_lossless_video(path: Path, frames: int, size: tuple[int, int], fps: float = 25.0) -> Path:
    """A generated video (apclip.testing.videos patterns) in a lossless codec, so that the pip wheel's FFmpeg and
    Debian's decode the same pixels and a parity test compares preprocessing, not decoders."""
    from apclip.testing.videos import write_test_video

    return write_test_video(path, frames=frames, size=size, fps=fps, codec="FFV1")
