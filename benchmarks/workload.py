"""A random-weight checkpoint and its exported bundle, for benchmarks on machines without a trained model.

    python -m apclip.benchmarks.workload --preset ViT-B-16 --out DIR [--scorer] [--verify]

writes DIR/<preset>.pt (apclip format, random weights, seed 0), DIR/labels.txt and DIR/bundle-<preset>/,
once: a later call with the same DIR reuses them. Prints the export's step times (export onnx, class
matrix, verify) and writes them to DIR/bundle-<preset>.export.json. Speed does not depend on the weights.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

LABELS = ["abseiling", "playing guitar", "riding a bike", "juggling balls", "surfing water", "archery",
          "bowling", "dribbling basketball"]


def ensure_bundle(workdir: str | Path, preset: str = "ViT-B-16", *, scorer: bool = True, verify: bool = False,
                  log: Callable[[str], None] = print) -> tuple[Path, Path, dict[str, float] | None]:
    """(bundle, checkpoint, export step seconds or None when reused)."""
    from apclip.checkpoint import save_checkpoint
    from apclip.export.api import export_bundle
    from apclip.model import build_preset

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    bundle, ckpt = workdir / f"bundle-{preset}", workdir / f"{preset}.pt"
    if (bundle / "manifest.json").is_file() and ckpt.is_file():
        log(f"reusing {bundle}")
        return bundle, ckpt, None
    labels = workdir / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    save_checkpoint(ckpt, build_preset(preset, seed=0), labels=LABELS,
                    preprocessing={"normalize": "clip", "frames": 8, "clips": 2, "crops": 2},
                    train_config={"note": "random weights for benchmarks; not trained"})
    log(f"exporting {preset} (random weights) to {bundle}")
    result = export_bundle(ckpt, out=bundle, labels=labels, verify=verify, scorer=scorer, force=True,
                           progress=False, log=lambda message: None)
    seconds = dict(result.seconds)
    from apclip.fileio import atomic_write

    with atomic_write(workdir / f"bundle-{preset}.export.json") as f:
        json.dump({"preset": preset, "seconds": seconds, "files": result.files}, f, indent=1)
    log("export: " + ", ".join(f"{step} {s:.1f} s" for step, s in seconds.items()))
    return bundle, ckpt, seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="ViT-B-16", help="model preset (tiny, ViT-B-32, ViT-B-16, ViT-L-14)")
    p.add_argument("--out", required=True, help="folder for the checkpoint and the bundle")
    p.add_argument("--scorer", action=argparse.BooleanOptionalAction, default=True, help="also export scorer.onnx")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=False,
                   help="run the exporter's parity check (apclip-bench parity is the fuller one)")
    args = p.parse_args(argv)
    bundle, ckpt, _ = ensure_bundle(args.out, args.preset, scorer=args.scorer, verify=args.verify,
                                    log=lambda m: print(m, file=sys.stderr))
    print(f"bundle {bundle}\ncheckpoint {ckpt}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
