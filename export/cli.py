"""apclip-export: checkpoint -> verified ONNX bundle with the precompiled class matrix."""
from __future__ import annotations

import argparse
import sys
import time

from pathlib import Path

from apclip.cli_common import EXIT_OK, add_version, progress_wanted, run_command
from apclip.config import CROP_COUNTS, NORMALIZATIONS
from apclip.preprocessing import PROFILES
from apclip.scoring_protocol import PROTOCOLS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="apclip-export",
        description="Export an AP-CLIP / ViFi-CLIP / CLIP checkpoint to a verified ONNX bundle "
                    "(vision.onnx, text.onnx, classes.safetensors, manifest.json).")
    p.add_argument("--ckpt", required=True, help="checkpoint: best.pt (apclip), ViFi-CLIP, Open-VCLIP/FROSTER "
                                                 "(swa_*.pth), OpenAI CLIP, or an X-CLIP transformers folder "
                                                 "(config.json + model.safetensors)")
    p.add_argument("--labels", help="labels file (one per line, or CSV id,name); default: the checkpoint's")
    p.add_argument("--prompts", help="prompt bank JSON from apclip-prompts; labels without an entry use "
                                     "'a video of {label}.'")
    p.add_argument("--base", help="OpenAI CLIP file the checkpoint was fine-tuned from (supplies ViFi-CLIP's "
                                  "token_embedding.weight, and the original weights for --patch-ratio)")
    p.add_argument("--patch-ratio", type=float, metavar="R",
                   help="weight patching (WiSE-FT) with the original CLIP given by --base: old * R + new * (1 - R), "
                        "R in [0, 1] (Open-VCLIP tests with 0.5, TC-CLIP 0.7; 1 = the original CLIP); default: none")
    p.add_argument("--out", default="bundle", help="bundle directory to write (default: bundle)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, >= 17 (default 17)")
    p.add_argument("--frames", type=int, help="frames per clip T (default: checkpoint's, else 8)")
    p.add_argument("--clips", type=int, help="temporal clips per video (default: checkpoint's, else 2)")
    p.add_argument("--crops", type=int, choices=CROP_COUNTS, help="spatial crops (default: checkpoint's, else 2)")
    p.add_argument("--normalize", choices=sorted(NORMALIZATIONS),
                   help="pixel normalisation (default: the profile's; apclip profile: checkpoint's, else clip)")
    p.add_argument("--profile", choices=PROFILES,
                   help="preprocessing profile: vificlip (ViFi-CLIP's test pipeline), clip (OpenAI's transform), "
                        "apclip (bundles before profiles); default: the checkpoint's")
    p.add_argument("--scoring", choices=PROTOCOLS,
                   help="scoring protocol: maka (AP-CLIP), vificlip (per-view softmax, summed) or ensemble (mean "
                        "prompt per class, cosine with the mean embedding); default: vificlip for a ViFi-CLIP "
                        "checkpoint without --prompts, ensemble for Open-VCLIP/FROSTER, else maka")
    p.add_argument("--template", help="text of labels without prompt-bank entries, {} marks the label, e.g. "
                                      "\"a photo of a {}.\" (default: the checkpoint's, else \"a video of {label}.\")")
    p.add_argument("--batch-max", type=int, default=1024, help="largest vision batch the ONNX graph accepts")
    p.add_argument("--scorer", action=argparse.BooleanOptionalAction, default=False,
                   help="also export scorer.onnx (the scoring protocol, MAKA or vificlip, in ONNX)")
    p.add_argument("--precision", default="fp32", type=_precision_list,
                   help="encoder precisions to write, comma-separated: fp32 (always) and int8 "
                        "(vision.int8.onnx, text.int8.onnx; calibrated QDQ int8, gated with float fallback, verified)")
    p.add_argument("--calibrate", nargs="+", metavar="SOURCE", default=(),
                   help="int8: calibration videos, folders or @list files, as apclip-infer takes them (a few dozen "
                        "clips; every 4th is held out for the gate); default: the generated verification video")
    p.add_argument("--int8-method", choices=("auto", "static", "dynamic", "split"), default="auto",
                   help="int8: static (explicit QDQ, activation ranges calibrated), dynamic (ranges per batch), split "
                        "(outlier channels in float, SmoothQuant on the rest, dynamic int8), or auto (default: the "
                        "first of static, dynamic, split that passes the gate all-int8, else float fallback)")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="check ONNX Runtime against PyTorch before keeping the bundle (default: on)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: when stderr is a terminal)")
    p.add_argument("--bpe-vocab", help="CLIP's bpe_simple_vocab_16e6.txt.gz (default: $APCLIP_BPE_VOCAB, "
                                       "else the installed open_clip_torch's)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return add_version(p)


def check_paths(args: argparse.Namespace) -> None:
    """Numbers, inputs and --out, checked in milliseconds, before torch is imported (seconds) or anything is read."""
    from apclip.cli_common import UsageError
    from apclip.export.defaults import MIN_OPSET

    if args.opset < MIN_OPSET:
        raise UsageError(f"--opset {args.opset} is too old: use >= {MIN_OPSET} so LayerNorm stays one node")
    for flag, value in (("--frames", args.frames), ("--clips", args.clips), ("--batch-max", args.batch_max)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} {value}: must be >= 1")
    from apclip.export.errors import ExportError
    from apclip.export.output_target import check_bundle_target

    from apclip.export.xclip import is_xclip_folder

    ckpt = None if is_xclip_folder(args.ckpt) else args.ckpt  # X-CLIP: a transformers model folder
    for flag, name, value in (("--ckpt", "checkpoint", ckpt), ("--labels", "labels file", args.labels),
                              ("--prompts", "prompt bank", args.prompts), ("--base", "base CLIP file", args.base),
                              ("--bpe-vocab", "BPE vocabulary", args.bpe_vocab)):
        if flag == "--labels" and value is not None:
            from apclip.labels import resolve_labels

            value = str(resolve_labels(value))  # `--labels k400`: a shipped set
        if value is not None and not Path(value).is_file():
            what = "is a folder, not a file" if Path(value).is_dir() else "does not exist"
            raise ExportError(f"{name} {value} {what} ({flag})")
    from apclip.output_guard import Input

    for source in args.calibrate:  # globs and @lists are expanded (and checked) by the int8 step
        if not any(c in source for c in "*?[@") and not Path(source).exists():
            raise ExportError(f"calibration source {source} does not exist (--calibrate)")
    calibration = [Input("--calibrate", s, "tree") for s in args.calibrate if not any(c in s for c in "*?[@")]
    check_bundle_target(args.out, args.force, inputs=[Input(flag, value) for flag, value in (
        ("--ckpt", args.ckpt), ("--labels", args.labels), ("--prompts", args.prompts), ("--base", args.base),
        ("--bpe-vocab", args.bpe_vocab))] + calibration)


def _precision_list(value: str) -> tuple[str, ...]:
    from apclip.bundle import PRECISIONS

    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items or any(v not in PRECISIONS for v in items):
        raise argparse.ArgumentTypeError(f"{value!r}: choose from {', '.join(PRECISIONS)}, e.g. fp32,int8")
    return items


def main(argv: list[str] | None = None) -> int:
    return run_command("apclip-export", build_parser(), run, argv, interrupted="; no bundle was written")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    check_paths(args)
    from apclip.extras import require

    require("torch", "torch", "apclip-export")
    require("onnx", "torch", "apclip-export")
    if args.verify:
        require("onnxruntime", "cpu", "export verification (or pass --no-verify)")
    from apclip.export.api import export_bundle
    from apclip.export.xclip import is_xclip_folder

    if args.bpe_vocab:
        from apclip.tokenizer import use_vocab

        use_vocab(args.bpe_vocab)
    if is_xclip_folder(args.ckpt):
        require("transformers", "test", "X-CLIP export")
        from apclip.export.xclip_bundle import export_xclip_bundle

        from apclip.labels import resolve_labels

        labels = str(resolve_labels(args.labels)) if args.labels else None  # `--labels k400`: a shipped set
        out = export_xclip_bundle(args.ckpt, out=args.out, labels=labels, frames=args.frames,
                                  clips=args.clips, opset=args.opset, force=args.force, verify=args.verify,
                                  log=_log)
        print(f"wrote X-CLIP bundle {out} (scoring protocol xclip) in {time.perf_counter() - start:.1f}s")
        return EXIT_OK
    result = export_bundle(
        args.ckpt, out=args.out, labels=args.labels, prompts=args.prompts, base=args.base,
        opset=args.opset, frames=args.frames, clips=args.clips, crops=args.crops,
        normalize=args.normalize, batch_max=args.batch_max, verify=args.verify, force=args.force,
        scorer=args.scorer, progress=progress_wanted(args.progress), log=_log, profile=args.profile,
        scoring=args.scoring, template=args.template, precisions=args.precision, patch_ratio=args.patch_ratio,
        calibrate=tuple(args.calibrate), int8_method=args.int8_method,
    )
    print(summary(result, time.perf_counter() - start))
    return EXIT_OK


def _log(message: str) -> None:
    # Progress and warnings on stderr: stdout carries the summary only, so it can be redirected cleanly.
    print(message, file=sys.stderr, flush=True)


def summary(result, total: float) -> str:
    lines = [f"bundle written to {result.path}/"]
    for name, size in result.files.items():
        lines.append(f"  {name:22s} {size / 1e6:10.2f} MB")
    lines.append(f"  classes K={result.num_classes}, prompts per class P_max={result.max_prompts}, "
                 f"template fallbacks={len(result.fallback_labels)}")
    if result.verification is not None:
        lines.append("parity (ONNX Runtime CPU vs PyTorch fp32):")
        lines.append(result.verification.table())
    else:
        lines.append("parity: not verified (--no-verify)")
    lines += _int8_summary(result.manifest.get("precisions", {}).get("int8"))
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items())
    lines.append(f"time: {total:.1f}s ({steps})")
    return "\n".join(lines)


def _int8_summary(record: dict | None) -> list[str]:
    from apclip.export.int8.export import int8_report

    if record is None:
        return []
    lines = []
    report = int8_report(record)
    if report is not None:
        lines += ["int8 parity (ONNX Runtime int8 vs PyTorch fp32):", report.table()]
    for name, method in (record.get("methods") or {}).items():
        gate = (record.get("gate") or {}).get(f"{name} ({method})") or {}
        figures = gate.get("figures") or {}
        if name not in (record.get("files") or {}).values() or not figures:
            continue
        speed = gate["fp32_seconds_per_item"] / max(figures["seconds_per_item"], 1e-9)
        kept = ", ".join(figures["float_layers"]) or "none"
        lines.append(f"int8 gate: {name} ({method}): held-out min cosine {figures['min_cosine']:.5f}, top-1 "
                     f"agreement {figures['top1_agreement']:.1%}; float layers: {kept}; {speed:.2f}x fp32 here")
    for name, reason in record.get("refused", {}).items():
        lines.append(f"int8: {name} NOT written: {reason}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
