"""apclip-eval: accuracy of a bundle (any backend) or a checkpoint on labelled videos."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from apclip.cli_common import report_error
from apclip.errors import ApclipError


def build_parser() -> argparse.ArgumentParser:
    from apclip.engine.runners.table import backend_choices
    from apclip.engine.scoring.scorers import SCORERS

    p = argparse.ArgumentParser(prog="apclip-eval",
                                description="Top-1/top-5/mean per-class accuracy (and base/novel/HM) on labelled videos.")
    p.add_argument("--bundle", help="bundle directory (apclip-export): scored by the engine")
    p.add_argument("--ckpt", help="checkpoint (apclip best.pt or any format export reads): scored by the torch "
                                  "model; with --bundle, the checkpoint --backend torch runs")
    p.add_argument("--list", required=True, dest="list_file", help="list file: relative/path LABEL_ID per line")
    p.add_argument("--root", default=".", help="folder the list paths are relative to (default .)")
    p.add_argument("--labels", required=True, help="labels file the list's ids index")
    p.add_argument("--prompts", help="prompt bank (--ckpt: the class prompts; --bundle: for labels not in it)")
    p.add_argument("--backend", default="auto", choices=backend_choices(), help="--bundle runner (default auto)")
    p.add_argument("--scorer", default="auto", choices=SCORERS, help="--bundle MAKA scorer (default auto)")
    p.add_argument("--base", help="OpenAI CLIP file for a ViFi-CLIP --ckpt")
    p.add_argument("--base-classes", help="base classes (label names or ids per line): report base, novel and HM")
    p.add_argument("--novel-classes", help="novel classes (label names or ids per line)")
    p.add_argument("--json", dest="json_out", help="write the metrics and per-video predictions as JSON")
    p.add_argument("--confusion", help="write the confusion matrix as a PNG (matplotlib)")
    p.add_argument("--workers", type=int, default=2, help="--ckpt: DataLoader workers that decode (default 2)")
    p.add_argument("--threads", type=int, help="--bundle: ONNX Runtime threads")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar on stderr")
    p.add_argument("--bpe-vocab", help="CLIP's bpe_simple_vocab_16e6.txt.gz")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def evaluate(args: argparse.Namespace, log) -> "EvalReport":  # noqa: F821
    from tqdm import tqdm

    from apclip.labels import read_labels
    from apclip.train.data import DataError, read_class_split, read_video_list
    from apclip.train.eval import build_report

    labels = read_labels(args.labels)
    items = read_video_list(args.list_file, args.root, len(labels))
    base = read_class_split(args.base_classes, labels) if args.base_classes else None
    novel = read_class_split(args.novel_classes, labels) if args.novel_classes else None
    if (base is None) != (novel is None):
        raise DataError("pass both --base-classes and --novel-classes (or neither)")
    bar = tqdm(total=len(items), desc="evaluating", unit="video", file=sys.stderr, disable=not args.progress,
               dynamic_ncols=True)
    try:
        if args.bundle:
            from apclip.engine.recognizer import Recognizer
            from apclip.train.eval import score_with_recognizer

            rec = Recognizer.from_bundle(args.bundle, args.backend, labels, prompts=args.prompts, scorer=args.scorer,
                                         threads=args.threads, ckpt=args.ckpt, base=args.base, log=log)
            source = {"bundle": str(args.bundle), "backend": rec.backend, "scorer": rec.scorer.name,
                      "protocol": rec.scoring.protocol, "preprocessing": rec.spec.to_dict()}
            scored = list(score_with_recognizer(rec, items, progress=lambda: bar.update(1)))
        else:
            scored, source = _score_checkpoint(args, labels, items, bar, log)
    finally:
        bar.close()
    return build_report(scored, labels, base_classes=base, novel_classes=novel, source=source)


def _score_checkpoint(args, labels, items, bar, log):
    from apclip.extras import require

    torch = require("torch", "torch", "apclip-eval --ckpt")
    from apclip.checkpoint import load_checkpoint
    from apclip.export.defaults import choose
    from apclip.train.data import DataError
    from apclip.train.eval import compile_classes, score_with_model

    checkpoint = load_checkpoint(args.ckpt, base=args.base)
    model = checkpoint.model.eval()
    bank = None
    if args.prompts:
        from apclip.prompt_bank import load_prompt_bank

        bank = load_prompt_bank(args.prompts)
    # The preprocessing, scoring protocol and template apclip-export would choose for this checkpoint.
    choices = choose(checkpoint, has_bank=bank is not None)
    spec, scoring = choices.preprocessing, choices.scoring
    if scoring.protocol != "maka":
        raise DataError(f"apclip-eval --ckpt scores with MAKA; {args.ckpt} implies the {scoring.protocol} protocol: "
                        f"export it and use apclip-eval --bundle, or pass --prompts")
    if checkpoint.prompt_bank_sha256 and (bank is None or bank.sha256 != checkpoint.prompt_bank_sha256):
        log(f"warning: {args.ckpt} was trained with prompt bank {checkpoint.prompt_bank_sha256[:12]}...; "
            f"{'no --prompts given' if bank is None else '--prompts differs'}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    with torch.inference_mode():
        classes = compile_classes(model, labels, bank, scoring.template)
    scored = list(score_with_model(model, items, spec, classes, workers=args.workers, device=device,
                                   progress=lambda: bar.update(1)))
    return scored, {"checkpoint": str(args.ckpt), "backend": f"torch-{device}", "scorer": "numpy",
                    "protocol": scoring.protocol, "preprocessing": spec.to_dict()}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.bundle and not args.ckpt:
        parser.error("pass --bundle DIR or --ckpt CHECKPOINT")
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
    try:
        if args.bpe_vocab:
            from apclip.tokenizer import use_vocab

            use_vocab(args.bpe_vocab)
        report = evaluate(args, log)
        if args.json_out:
            from apclip.fileio import atomic_write

            with atomic_write(args.json_out) as f:
                f.write(json.dumps(report.to_dict(), indent=1, ensure_ascii=False) + "\n")
        if args.confusion:
            from apclip.train.eval import write_confusion_png

            write_confusion_png(args.confusion, report.confusion, report.labels)
    except (ApclipError, OSError, ValueError) as exc:
        if args.debug:
            raise
        return report_error("apclip-eval", exc)
    except KeyboardInterrupt as exc:
        return report_error("apclip-eval", exc)
    print(report.summary())
    for path in report.skipped[:10]:
        print(f"skipped (could not be decoded): {path}", file=sys.stderr)
    if args.json_out:
        print(f"wrote {Path(args.json_out)}")
    if args.confusion:
        print(f"wrote {Path(args.confusion)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
