"""Inputs for the offline demo (scripts/demo.sh): a tiny random-weight checkpoint in apclip's format,
a labels file, a small hand-written prompt bank and a generated video.

    python -m apclip.testing.assets --out demo
"""
from __future__ import annotations

import argparse
from pathlib import Path

LABELS = ["abseiling", "playing guitar", "riding a bike", "juggling balls", "surfing water"]
# Hand-written stand-ins for LLM descriptions (apclip-prompts writes real ones); the last label has
# no entry on purpose, so the demo shows the template fallback.
DESCRIPTIONS = {
    "abseiling": ["The person descends a steep rock face on a rope.", "A harness and helmet are worn."],
    "playing guitar": ["Fingers press strings on the fretboard.", "The person sits holding a guitar.",
                       "One hand strums rhythmically."],
    "riding a bike": ["Legs pedal in a steady circular motion.", "The scene is a road or a park path."],
    "juggling balls": ["Several balls arc through the air in a loop.", "Hands toss and catch quickly."],
}


def write_demo_assets(out: Path, preset: str = "tiny", frames: int = 90) -> dict[str, Path]:
    from apclip.checkpoint import save_checkpoint
    from apclip.testing.videos import write_test_video
    from apclip.model import build_preset
    from apclip.prompt_bank import PromptBank, save_prompt_bank

    out.mkdir(parents=True, exist_ok=True)
    model = build_preset(preset, seed=0)
    ckpt = save_checkpoint(out / "best.pt", model, labels=LABELS,
                           preprocessing={"normalize": "clip", "frames": 8, "clips": 2, "crops": 2},
                           train_config={"note": "random weights for the demo; not trained"})
    labels = out / "labels.txt"
    labels.write_text("# demo labels, one per line\n" + "\n".join(LABELS) + "\n", encoding="utf-8")
    bank = PromptBank.from_dict({
        "format": "apclip-prompt-bank", "format_version": 1, "strategy": "handwritten", "model": None,
        "settings": {"note": "demo descriptions written by hand"}, "graph": None, "review": None,
        "classes": [{"label": label, "prompts": [{"aspect": None, "attribute": None, "llm_prompt": 0, "text": t}
                                                 for t in texts]} for label, texts in DESCRIPTIONS.items()],
    }, "demo bank")
    bank_path = save_prompt_bank(bank, out / "bank.json")
    video = write_test_video(out / "video.mp4", frames=frames, size=(320, 240), fps=30.0, codec="mp4v")
    return {"checkpoint": ckpt, "labels": labels, "bank": bank_path, "video": video}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="demo", help="folder for the demo inputs")
    p.add_argument("--preset", default="tiny", help="model preset for the random checkpoint (default tiny)")
    args = p.parse_args(argv)
    for name, path in write_demo_assets(Path(args.out), args.preset).items():
        print(f"wrote {name:10s} {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
