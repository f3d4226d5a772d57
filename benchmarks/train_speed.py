"""Training throughput of the tiny preset on CPU: clips/s with decoding inline vs in loader workers.

    python -m apclip.benchmarks.train_speed [--epochs 2] [--json train_speed.json]

Generates the synthetic dataset (80 training clips), then trains the tiny preset (4 frames of 32 px,
batch 8, prompt subsets, colour jitter, no validation) once per setting, side by side in one run, and
reports each epoch's clips/s (decode + augment + forward + backward + AdamW; the first epoch, which
pays for process start-up, is excluded). Writes JSON with the machine, versions and load average.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from apclip.benchmarks.infer_latency import machine

SETTINGS = {
    "inline decode, 1 intra-op thread": {"workers": 0, "threads": 1},
    "1 loader worker, 1 intra-op thread": {"workers": 1, "threads": 1},
    "inline decode, 2 intra-op threads": {"workers": 0, "threads": 2},
}


def run(epochs: int) -> dict:
    import torch

    from apclip.train.config import TrainConfig, preset_values
    from apclip.train.loop import train
    from apclip.train.synthetic import write_synthetic_dataset

    results = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic_dataset(Path(tmp) / "data")
        for name, setting in SETTINGS.items():
            torch.set_num_threads(setting["threads"])
            values = preset_values("tiny")
            values.update(train_list=str(data.lists["train"]), root=str(data.root), labels=str(data.labels),
                          prompts=str(data.bank), workers=setting["workers"], epochs=epochs, log_every=1000)
            out = Path(tmp) / name.replace(" ", "_").replace(",", "")
            train(TrainConfig(**values), out, progress=False, log=lambda m: None)
            epochs_log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
            rates = [e["clips_per_s"] for e in epochs_log if e["event"] == "epoch"][1:]
            results[name] = {"clips_per_s": sorted(rates)[len(rates) // 2], "epochs_measured": len(rates),
                             **setting}
    return {"machine": machine(), "torch": torch.__version__, "load_before": load_before,
            "load_after": os.getloadavg(), "results": results}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=4, help="epochs per setting (the first is not measured)")
    p.add_argument("--json", default="train_speed.json", help="where to write the results")
    args = p.parse_args(argv)
    report = run(args.epochs)
    base = next(iter(report["results"].values()))["clips_per_s"]
    for name, r in report["results"].items():
        print(f"{name:36s} {r['clips_per_s']:7.1f} clips/s  ({r['clips_per_s'] / base:.2f}x)")
    print(f"load average before {report['load_before']}, after {report['load_after']}")
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
