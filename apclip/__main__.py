"""`python -m apclip [COMMAND ARGS...]`: run an installed apclip command, or list them.

    python -m apclip                      # list the commands
    python -m apclip infer video.mp4 ...  # the same as apclip-infer video.mp4 ...
    python -m apclip apclip-export ...    # full command names work too
"""
from __future__ import annotations

import sys
from importlib import metadata

from apclip import __version__

SUMMARIES = {
    "apclip-bench": "parity of every backend against the PyTorch reference, latency per stage, kernel benchmark",
    "apclip-export": "export a checkpoint to a verified ONNX bundle with the precompiled class matrix",
    "apclip-infer": "recognise actions in a video file, image folder, camera or stream",
    "apclip-prompts": "generate action-conditioned prompts for labels with an LLM",
    "apclip-bundle": "inspect (info) and check (verify) a bundle",
    "apclip-build-engine": "build a TensorRT engine for a bundle on this GPU (cached in BUNDLE/engines/)",
    "apclip-train": "fine-tune CLIP on labelled videos (ViFi-CLIP protocol, MAKA over prompts) into best.pt",
    "apclip-eval": "top-1/top-5/mean-class (and base/novel/HM) accuracy of a bundle or checkpoint on labelled videos",
    "apclip-batch": "batch inference over a video archive with Ray Data (resumable Parquet/JSONL)",
    "apclip-serve": "serve a bundle through NVIDIA Triton Inference Server (HTTP, gRPC, metrics)",
    "apclip-triton-repo": "write a Triton Inference Server model repository for NVIDIA's containers",
}


def console_scripts() -> dict[str, metadata.EntryPoint]:
    try:
        eps = metadata.distribution("apclip").entry_points
    except metadata.PackageNotFoundError:
        return {}
    return {ep.name: ep for ep in eps if ep.group == "console_scripts"}


def _list(scripts: dict[str, metadata.EntryPoint]) -> int:
    print(f"apclip {__version__}: AP-CLIP video action recognition engine")
    if not scripts:
        print("apclip is not installed as a distribution; run pip install -e . to get its commands")
        return 1
    print("commands (run as `apclip-NAME ARGS` or `python -m apclip NAME ARGS`):")
    for name in sorted(scripts):
        print(f"  {name:19s} {SUMMARIES.get(name, scripts[name].value)}")
    print("run any command with --help for its options")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    scripts = console_scripts()
    if not argv or argv[0] in ("-h", "--help", "list"):
        return _list(scripts)
    if argv[0] == "--version":
        print(f"apclip {__version__}")
        return 0
    name = argv[0] if argv[0].startswith("apclip-") else f"apclip-{argv[0]}"
    if name not in scripts:
        known = ", ".join(sorted(n.removeprefix("apclip-") for n in scripts)) or "none installed"
        print(f"python -m apclip: unknown command {argv[0]!r}; choose one of: {known}", file=sys.stderr)
        return 2
    command = scripts[name].load()
    sys.argv = [name] + argv[1:]  # argparse reports errors under the command's own name
    return int(command(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
