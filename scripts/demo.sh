#!/usr/bin/env bash
# The main job end to end, offline, on 2 CPU cores in a few minutes: generate a labelled video dataset
# (coloured shapes drifting over textured backgrounds), fine-tune the tiny model on it with apclip-train
# (about a minute), export a verified bundle, and recognise the held-out videos with apclip-infer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT="${1:-demo}"
export PATH="$PWD/.venv/bin:$PATH"
rm -rf "$OUT/run" "$OUT/predictions.jsonl"
set -x
python -m apclip.train.synthetic --out "$OUT/data"
apclip-train --output "$OUT/run" --preset tiny --train "$OUT/data/train.txt" --val "$OUT/data/val.txt" \
    --root "$OUT/data" --labels "$OUT/data/labels.txt" --prompts "$OUT/data/bank.json" --workers 1
apclip-export --ckpt "$OUT/run/best.pt" --prompts "$OUT/data/bank.json" --out "$OUT/bundle" --force --no-progress
set +x
# Every held-out test video through one apclip-infer run (the deployed path: ONNX Runtime, no torch).
mapfile -t VIDEOS < <(sed -E "s|^(.*) [0-9]+$|$OUT/data/\1|" "$OUT/data/test.txt")
# What a user sees: one row per video, then the summary line (the table, not hidden).
apclip-infer "${VIDEOS[@]}" --bundle "$OUT/bundle" --topk 1 --json "$OUT/predictions.jsonl"
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
labels = (out / "data" / "labels.txt").read_text().splitlines()
predicted = {Path(p["source"]).name: p["top"][0]["label"]
             for p in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
right = total = 0
for line in (out / "data" / "test.txt").read_text().splitlines():
    video, label = line.rsplit(" ", 1)
    guess, truth = predicted[Path(video).name], labels[int(label)]
    right += guess == truth
    total += 1
    print(f"{video:28s} {truth:22s} -> {guess:22s} {'ok' if guess == truth else 'WRONG'}")
print(f"apclip-infer on {total} held-out videos: {right}/{total} right ({100.0 * right / total:.1f}% top-1; chance "
      f"{100.0 / len(labels):.0f}%)")
PY
set -x
apclip-eval --bundle "$OUT/bundle" --list "$OUT/data/test.txt" --root "$OUT/data" --labels "$OUT/data/labels.txt" \
    --json "$OUT/eval.json" --confusion "$OUT/confusion.png" --no-progress
