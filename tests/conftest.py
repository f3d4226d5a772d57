"""Session fixtures shared by the export and inference tests: a tiny checkpoint, its exported bundle,
a labels file, a prompt bank and a generated video (all made here; nothing is downloaded)."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory) -> dict[str, Path]:
    """best.pt (tiny preset, apclip format), labels.txt (5 labels), bank.json (4 of them), video.mp4 (90 frames)."""
    pytest.importorskip("torch")
    from apclip.testing.assets import write_demo_assets

    return write_demo_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="session")
def tiny_bundle(demo_assets, tmp_path_factory) -> Path:
    """A verified bundle (with scorer.onnx) exported once per session from demo_assets. Read-only."""
    pytest.importorskip("onnxruntime")
    from apclip.export.api import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(demo_assets["checkpoint"], out=out, labels=demo_assets["labels"], prompts=demo_assets["bank"],
                  scorer=True, progress=False, log=lambda message: None)
    return out


@pytest.fixture(scope="session")
def native_build() -> Path:
    """The native runtime (CMakeLists.txt) configured and built once per session into ./build; skips with the
    missing dependency's name where it cannot be built here (tests/native_helpers.py)."""
    from native_helpers import NativeUnavailable, build_native

    try:
        return build_native()
    except NativeUnavailable as exc:
        pytest.skip(f"native runtime not built: {exc}")
