"""`python -m apclip`: what this installation provides."""
from __future__ import annotations

import sys
from importlib import metadata

from apclip import __version__

SUMMARIES = {
    "apclip-export": "export a checkpoint to a verified ONNX bundle with the precompiled class matrix",
    "apclip-infer": "recognise actions in a video file, image folder, camera or stream",
    "apclip-prompts": "generate action-conditioned prompts for labels with an LLM",
    "apclip-bundle": "inspect (info) and check (verify) a bundle",
}


def console_scripts() -> dict[str, str]:
    try:
        eps = metadata.distribution("apclip").entry_points
    except metadata.PackageNotFoundError:
        return {}
    return {ep.name: ep.value for ep in eps if ep.group == "console_scripts"}


def main(argv: list[str] | None = None) -> int:
    scripts = console_scripts()
    print(f"apclip {__version__}: AP-CLIP video action recognition engine")
    if not scripts:
        print("apclip is not installed as a distribution; run pip install -e . to get its commands")
        return 1
    print("commands:")
    for name in sorted(scripts):
        print(f"  {name:16s} {SUMMARIES.get(name, scripts[name])}")
    print("run any command with --help for its options")
    return 0


if __name__ == "__main__":
    sys.exit(main())
