"""apclip-train: fine-tune CLIP on labelled videos with AP-CLIP's MAKA over action-conditioned prompts."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from pathlib import Path

from apclip.cli_common import EXIT_INTERRUPTED, UsageError, progress_wanted, run_command

from apclip.train.config import PRESETS, TrainConfig, preset_values

# Options that map one-to-one onto TrainConfig fields (flag -> field), with their help.
_FIELDS = {
    "train": ("train_list", str, "training list file: relative/path LABEL_ID per line"),
    "val": ("val_list", str, "validation list file (its top-1 picks best.pt)"),
    "root": ("root", str, "folder the list paths are relative to (default .)"),
    "labels": ("labels", str, "labels file (one per line, or ViFi-CLIP CSV id,name)"),
    "prompts": ("prompts", str, "prompt bank JSON (apclip-prompts); default: the template 'a video of {label}.'"),
    "base_classes": ("base_classes", str, "base-to-novel: train on these classes only (label names or ids per line)"),
    "shots": ("shots", int, "few-shot: K training videos per class, drawn by --seed"),
    "init": ("init", str, "checkpoint to fine-tune (OpenAI CLIP .pt, ViFi-CLIP .pth, apclip best.pt)"),
    "base": ("base", str, "OpenAI CLIP file for a ViFi-CLIP --init (its token embedding)"),
    "model_preset": ("model_preset", str, "random-init model instead of --init (tiny: tests and demo)"),
    "profile": ("profile", str, "preprocessing profile apclip | vificlip | clip for validation and best.pt "
                                "(default: the init checkpoint's; apclip for --model-preset)"),
    "normalize": ("normalize", str, "pixel normalisation (default: the profile's; apclip: the init checkpoint's, else clip)"),
    "frames": ("frames", int, "frames per training clip T"),
    "test_clips": ("test_clips", int, "temporal clips at validation (recorded in best.pt)"),
    "test_crops": ("test_crops", int, "spatial crops at validation (recorded in best.pt)"),
    "lr": ("lr", float, "peak learning rate"),
    "epochs": ("epochs", int, "epochs"),
    "warmup_epochs": ("warmup_epochs", float, "linear warm-up epochs"),
    "batch_size": ("batch_size", int, "clips per step per process"),
    "accumulation": ("accumulation", int, "steps per optimizer update (effective batch = batch x this x GPUs)"),
    "weight_decay": ("weight_decay", float, "AdamW weight decay"),
    "label_smoothing": ("label_smoothing", float, "label smoothing"),
    "mixup": ("mixup", float, "mixup Beta alpha (0: no mixup/cutmix)"),
    "cutmix": ("cutmix", float, "cutmix Beta alpha"),
    "color_jitter": ("color_jitter", float, "probability of colour jitter per clip"),
    "gray_scale": ("gray_scale", float, "probability of grayscale per clip"),
    "prompts_per_class": ("prompts_per_class", int, "prompts drawn per class per step (0: all)"),
    "amp": ("amp", str, "auto | off | bf16 | fp16 (auto: bf16 or fp16 on CUDA, off on CPU)"),
    "seed": ("seed", int, "seed of the data order, augmentation, prompt subsets and init"),
    "workers": ("workers", int, "DataLoader worker processes that decode videos"),
    "log_every": ("log_every", int, "optimizer updates between JSON log lines"),
    "max_skipped": ("max_skipped", float, "stop when more than this share of the training videos fail to decode "
                                          "(default 0.25)"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="apclip-train",
        description="Fine-tune CLIP on videos (ViFi-CLIP protocol, MAKA over prompts); writes best.pt for apclip-export. "
                    "Multi-GPU: torchrun --nproc_per_node N $(which apclip-train) ...")
    # Not --run: torchrun would read it as an abbreviation of its own --run-path.
    p.add_argument("--output", dest="run", required=True, help="run folder: config.json, log.jsonl, last.pt, best.pt")
    p.add_argument("--resume", action="store_true", help="continue the run in --output exactly where it stopped")
    p.add_argument("--preset", choices=sorted(PRESETS), help="the paper's settings (lr, epochs, batch) or tiny")
    for flag, (name, kind, help_text) in _FIELDS.items():
        p.add_argument(f"--{flag.replace('_', '-')}", dest=name, type=kind, default=None, help=help_text)
    p.add_argument("--grad-checkpointing", dest="grad_checkpointing", action=argparse.BooleanOptionalAction,
                   default=None, help="recompute transformer blocks in backward (less memory)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar with ETA on stderr (default: when stderr is a terminal)")
    p.add_argument("--device", help="torch device (default: this process's GPU under torchrun, else cuda, else cpu)")
    p.add_argument("--bpe-vocab", help="CLIP's bpe_simple_vocab_16e6.txt.gz (default: $APCLIP_BPE_VOCAB, "
                                       "else the installed open_clip_torch's)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """Defaults < preset < command line."""
    values = preset_values(args.preset) if args.preset else {}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for name in fields:
        given = getattr(args, name, None)
        if given is not None:
            values[name] = given
    values["preset"] = args.preset
    return TrainConfig(**values)


def _explicit_options(args: argparse.Namespace) -> list[str]:
    return [f"--{flag.replace('_', '-')}" for flag, (name, _, _) in _FIELDS.items() if getattr(args, name) is not None]


def _same(given, saved) -> bool:
    if given == saved:
        return True
    if isinstance(given, str) and isinstance(saved, str):  # paths spelled differently: ./a.txt and a.txt
        import os

        return os.path.realpath(given) == os.path.realpath(saved)
    if isinstance(given, (int, float)) and isinstance(saved, (int, float)):
        return float(given) == float(saved)
    return False


def resume_conflicts(args: argparse.Namespace, saved: dict) -> list[str]:
    """The options of this command line that differ from the run's saved config, as `--flag X (saved Y)`.

    Re-running the first command with --resume added is accepted (mmaction2's and Lightning's habit):
    only values that would change the run are refused."""
    wanted = resolve_config(args).to_dict()
    names = {name: f"--{flag.replace('_', '-')}" for flag, (name, _, _) in _FIELDS.items()
             if getattr(args, name) is not None}
    if args.preset:
        names.update({name: f"--preset {args.preset} ({name.replace('_', '-')})"
                      for name in preset_values(args.preset) if name not in names})
        names["preset"] = "--preset"
    if args.grad_checkpointing is not None:
        names["grad_checkpointing"] = "--grad-checkpointing"
    return [f"{flag} {wanted[name]} (the run has {saved.get(name)})" for name, flag in names.items()
            if not _same(wanted[name], saved.get(name))]


def main(argv: list[str] | None = None) -> int:
    return run_command("apclip-train", build_parser(), run, argv)


def run(args: argparse.Namespace) -> int:
    if args.bpe_vocab:
        from apclip.tokenizer import use_vocab

        use_vocab(args.bpe_vocab)
    from apclip.extras import require

    require("torch", "train", "training")
    from apclip.output_guard import Input
    from apclip.train.loop import train

    extra_inputs = [Input("--bpe-vocab", args.bpe_vocab)]
    if args.resume:
        from apclip.train.state import read_config

        conflicts = resume_conflicts(args, read_config(Path(args.run))["config"])
        if conflicts:
            raise UsageError(f"--resume continues {args.run} with its saved config.json; these options differ "
                             f"from it: {'; '.join(conflicts)}. Drop them, or start a new --output")
        result = train(TrainConfig(), args.run, resume=True, progress=progress_wanted(args.progress),
                       device=args.device, extra_inputs=extra_inputs)
    else:
        result = train(resolve_config(args), args.run, progress=progress_wanted(args.progress),
                       device=args.device, extra_inputs=extra_inputs)
    if result.interrupted:
        return EXIT_INTERRUPTED
    if not result.main_process:
        return 0
    best = f"{result.best_top1:.2f}%" if result.best_top1 is not None else "n/a (no --val)"
    print(f"trained {result.epochs} epochs ({result.updates} updates): best val top-1 {best}, "
          f"{result.clips_per_second:.1f} clips/s, skipped videos {result.skipped_videos}; "
          f"best checkpoint {result.run / 'best.pt'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
