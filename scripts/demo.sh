#!/usr/bin/env bash
# The main job end to end, offline: make a tiny checkpoint (random weights, apclip format), a labels
# file, a prompt bank and a generated video; export a verified bundle; recognise the video.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT="${1:-demo}"
export PATH="$PWD/.venv/bin:$PATH"
set -x
python -m apclip.testing.assets --out "$OUT"
apclip-export --ckpt "$OUT/best.pt" --labels "$OUT/labels.txt" --prompts "$OUT/bank.json" \
    --out "$OUT/bundle" --force --no-progress
apclip-infer "$OUT/video.mp4" --bundle "$OUT/bundle" --labels "$OUT/labels.txt" --topk 3 --json "$OUT/predictions.jsonl"
