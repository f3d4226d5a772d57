"""`export_bundle`: checkpoint -> verified, self-describing bundle directory (atomic)."""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from apclip import __version__
from apclip.bundle import (VisionGraph, bound_metadata, CLASSES_FILE, EMBEDDINGS_OUTPUT, FORMAT, FORMAT_VERSION, MANIFEST, PROMPTS_FILE, SCORER_FILE,
                           SCORER_INPUTS, SCORER_OUTPUT, TEXT_FILE, TEXT_INPUT, VISION_FILE, VISION_INPUT, VOCAB_FILE,
                           sha256_file)
from apclip.config import CROP_COUNTS, NORMALIZATIONS
from apclip.fileio import partial_dir, replace_dir
from apclip.preprocessing import PROFILES, Preprocessing
from apclip.scoring_protocol import PROTOCOLS, Scoring, check_template

from apclip.export.errors import ExportError, ExportUsageError
from apclip.export.verify import VerificationReport

Log = Callable[[str], None]


def text_batch_max(batch_max: int) -> int:
    # Run-time labels are encoded TEXT_BATCH (256) prompts at a time; never let a small vision limit starve that.
    return max(batch_max, 4096)


@dataclass
class ExportResult:
    path: Path
    num_classes: int
    max_prompts: int
    fallback_labels: list[str]
    files: dict[str, int]  # name -> bytes
    seconds: dict[str, float]
    verification: VerificationReport | None = None
    manifest: dict[str, Any] = field(default_factory=dict)


def export_bundle(ckpt: str | os.PathLike, *, out: str | os.PathLike = "bundle", labels: str | os.PathLike | None = None,
                  prompts: str | os.PathLike | None = None, base: str | os.PathLike | None = None,
                  opset: int = 17, frames: int | None = None, clips: int | None = None, crops: int | None = None,
                  normalize: str | None = None, batch_max: int = 1024, verify: bool = True, force: bool = False,
                  scorer: bool = False, progress: bool = True, log: Log = print,
                  profile: str | None = None, scoring: str | None = None, template: str | None = None,
                  precisions: tuple[str, ...] = ("fp32",), patch_ratio: float | None = None,
                  calibrate: tuple[str, ...] = (), int8_method: str = "auto",
) -> ExportResult:
    """Export `ckpt` to a bundle at `out`. Defaults come from the checkpoint, else the paper's
    (export/defaults.py; the choices and where each came from are logged).

    profile: preprocessing profile apclip | vificlip | clip; scoring: protocol maka | vificlip;
    template: text of labels without prompt-bank entries ({} marks the label); patch_ratio: interpolate the
    weights with the original CLIP `base` first (WiSE-FT, Open-VCLIP's patching: old * r + new * (1 - r)).
    calibrate: int8 calibration videos, folders or @lists (as apclip-infer takes them); int8_method: auto | static | dynamic."""
    from apclip.checkpoint import load_checkpoint
    from apclip.labels import labels_sha256, read_labels

    from apclip.export.defaults import MIN_OPSET

    from apclip.export.output_target import check_bundle_target

    shown = Path(out)
    # Everything that can be checked without the (slow) checkpoint load is checked first.
    out = check_bundle_target(out, force, inputs=(ckpt, labels, prompts, base))
    if opset < MIN_OPSET:
        raise ExportUsageError(f"--opset {opset} is too old: use >= {MIN_OPSET} so LayerNorm stays one node")
    if batch_max < 1:
        raise ExportUsageError(f"--batch-max {batch_max}: the largest vision batch must be >= 1")
    for flag, value in (("--frames", frames), ("--clips", clips)):
        if value is not None and value < 1:
            raise ExportUsageError(f"{flag} {value}: must be >= 1")
    if crops is not None and crops not in CROP_COUNTS:
        raise ExportUsageError(f"--crops {crops}: must be one of {', '.join(map(str, CROP_COUNTS))}")
    precisions = _check_precisions(precisions)
    from apclip.export.int8.export import METHODS

    if calibrate and "int8" not in precisions:
        raise ExportError("--calibrate calibrates int8 encoders: add --precision fp32,int8")
    if int8_method not in METHODS:
        raise ExportError(f"--int8-method {int8_method}: choose one of {', '.join(METHODS)}")
    if normalize is not None and normalize not in NORMALIZATIONS:
        raise ExportUsageError(f"--normalize {normalize}: choose one of {', '.join(NORMALIZATIONS)}")
    if profile is not None and profile not in PROFILES:
        raise ExportUsageError(f"--profile {profile}: choose one of {', '.join(PROFILES)}")
    if scoring is not None and scoring not in PROTOCOLS:
        raise ExportUsageError(f"--scoring {scoring}: choose one of {', '.join(PROTOCOLS)}")
    if scoring == "vificlip" and prompts:
        raise ExportUsageError("--scoring vificlip scores one prompt per class (ViFi-CLIP's): drop --prompts, or use "
                          "--scoring maka for a prompt bank")
    if patch_ratio is not None and not (0.0 <= patch_ratio <= 1.0):
        raise ExportError(f"--patch-ratio {patch_ratio}: must lie in [0, 1] (1 = the original CLIP)")
    if patch_ratio is not None and base is None:
        raise ExportError("--patch-ratio needs the original CLIP weights: pass --base ViT-B-16.pt")
    if template is not None:
        try:
            check_template(template)
        except ValueError as exc:
            raise ExportUsageError(f"--template: {exc}") from None
    label_list = read_labels(labels) if labels else None
    out.parent.mkdir(parents=True, exist_ok=True)  # an unusable --out fails now, not after the slow steps
    bank = None
    if prompts:
        from apclip.prompt_bank import load_prompt_bank

        bank = load_prompt_bank(prompts)

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    checkpoint = load_checkpoint(ckpt, base=base, patch_ratio=patch_ratio)
    model = checkpoint.model
    seconds["load checkpoint"] = time.perf_counter() - t0
    log(f"loaded {ckpt} ({checkpoint.format}): {_describe(model.config)}")
    if checkpoint.dropped_keys:
        log(f"  dropped {len(checkpoint.dropped_keys)} training-only key(s) (e.g. {checkpoint.dropped_keys[0]})")
    label_list = label_list or checkpoint.labels
    if not label_list:
        raise ExportError(f"checkpoint {ckpt} carries no labels; pass --labels labels.txt")
    trained = checkpoint.prompt_bank_sha256
    if trained and (bank is None or bank.sha256 != trained):
        log(f"warning: {ckpt} was fine-tuned with prompt bank sha256 {trained[:12]}..., "
            f"{'but no --prompts was given' if bank is None else 'but --prompts has ' + bank.sha256[:12] + '...'}: "
            f"classes will use other prompts than in training")
    from apclip.export.defaults import choose

    try:
        choices = choose(checkpoint, profile=profile, frames=frames, clips=clips, crops=crops, normalize=normalize,
                         scoring=scoring, template=template, has_bank=bank is not None)
    except (TypeError, ValueError):
        raise ExportError(f"checkpoint {ckpt} carries unusable preprocessing {checkpoint.preprocessing}; "
                          f"pass --frames/--clips/--crops/--profile") from None
    preprocessing = choices.preprocessing
    from apclip.export.vision_graph import vision_graph_of

    graph = vision_graph_of(checkpoint, preprocessing.frames)
    log("preprocessing and scoring (value, and where it came from):")
    for line in choices.lines():
        log(line)

    # Built next to `out` so the final rename stays on one filesystem; the name is never a bundle path.
    work = partial_dir(out)  # also cleans what a killed run left beside `out`
    try:
        job = _Job(model, checkpoint, label_list, labels_sha256(label_list), bank, preprocessing,
                   ExportOptions(opset=opset, batch_max=batch_max, verify=verify, scorer=scorer, progress=progress,
                                 precisions=precisions, calibrate=tuple(calibrate or ()),
                                 int8_method=int8_method),
                   log, seconds, choices.scoring, graph=graph)
        result = _build(job, work)
        _replace_dir(work, out)
        result.path = shown
        return result
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


@dataclass(frozen=True)
class ExportOptions:
    """How the files are made (everything about the model, labels and frames is in _Job)."""

    opset: int = 17  # ONNX opset of the encoders (>= 17: LayerNorm stays one node)
    batch_max: int = 1024  # largest vision batch the exported graph accepts; runners never send more
    verify: bool = True  # parity of ONNX Runtime against the PyTorch reference before keeping anything
    scorer: bool = False  # also write scorer.onnx
    progress: bool = True  # progress bar for the class-matrix compile
    precisions: tuple[str, ...] = ("fp32",)  # "int8" adds vision.int8.onnx / text.int8.onnx (export/int8/export.py)
    calibrate: tuple[str, ...] = ()  # int8 calibration sources; empty: the generated verification video
    int8_method: str = "auto"  # auto | static (calibrated QDQ) | dynamic (export/int8/export.py METHODS)


def _check_precisions(precisions) -> tuple[str, ...]:
    """fp32 is always written: it is the reference the int8 files are checked against."""
    from apclip.bundle import PRECISIONS

    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise ExportError(f"--precision {','.join(precisions)}: choose from {', '.join(PRECISIONS)} "
                          f"(comma-separated, e.g. fp32,int8)")
    return tuple(p for p in PRECISIONS if p in precisions or p == "fp32")


@dataclass
class _Job:
    """One export: what it reads, what it decided, and where it reports."""

    model: Any  # apclip.model.CLIP, float32, eval
    checkpoint: Any  # apclip.checkpoint.Checkpoint it came from
    labels: list[str]
    labels_hash: str
    bank: Any  # apclip.prompt_bank.PromptBank or None
    preprocessing: Preprocessing
    options: ExportOptions
    log: Log
    seconds: dict[str, float]  # step -> wall seconds, for the summary
    scoring: Scoring = field(default_factory=Scoring)  # protocol, logit_scale, template
    int8: dict | None = None  # the manifest's precisions.int8 record, once the int8 step ran
    class_encoder: str = ""  # how the class matrix was encoded (export/class_encoder.py)
    graph: VisionGraph = field(default_factory=VisionGraph)  # per-frame, or clip-level (Open-VCLIP)

    @property
    def vision_normalized(self) -> bool:
        # ViFi-CLIP mean-pools each view's raw features before normalising: vision.onnx must emit them raw.
        return self.scoring.protocol != "vificlip"


def _build(job: _Job, work: Path) -> ExportResult:
    from apclip.class_matrix import class_prompts, encode_class_matrix, save_class_matrix, save_prompt_texts

    from apclip.export.onnx_export import (EnsembleScorer, export_scorer, export_text, export_vision,
                                           export_vision_clip, export_vificlip_scorer, scorer_opset)

    model, opt, log, seconds = job.model, job.options, job.log, job.seconds
    labels, bank, opset = job.labels, job.bank, opt.opset
    t = time.perf_counter()
    log(f"exporting {VISION_FILE} (opset {opset}) ...")
    if job.graph.clip_level:
        export_vision_clip(model, work / VISION_FILE, opset, _clips_max(job), job.graph.frames,
                           job.graph.temporal_attention, normalize=job.vision_normalized)
    elif job.vision_normalized:
        export_vision(model, work / VISION_FILE, opset, opt.batch_max)
    else:
        export_vision(model, work / VISION_FILE, opset, opt.batch_max, normalize=False)
    log(f"exporting {TEXT_FILE} (opset {opset}) ...")
    export_text(model, work / TEXT_FILE, opset, text_batch_max(opt.batch_max))
    if opt.scorer:
        log(f"exporting {SCORER_FILE} (opset {scorer_opset(opset)}, {job.scoring.protocol}) ...")
        if job.scoring.protocol == "vificlip":
            export_vificlip_scorer(work / SCORER_FILE, model.config.embed_dim, opset, job.preprocessing.frames,
                                   float(job.scoring.logit_scale))
        elif job.scoring.protocol == "ensemble":
            export_scorer(work / SCORER_FILE, model.config.embed_dim, opset, EnsembleScorer())
        else:
            export_scorer(work / SCORER_FILE, model.config.embed_dim, opset)
    seconds["export onnx"] = time.perf_counter() - t

    t = time.perf_counter()
    from apclip.tokenizer import find_vocab

    # The merges travel with the bundle (hashed in the manifest): run-time labels need no open_clip there.
    shutil.copyfile(find_vocab(), work / VOCAB_FILE)
    prompts, fallback = class_prompts(labels, bank, job.scoring.template)
    from apclip.export.class_encoder import class_matrix_encoder

    encode, job.class_encoder = class_matrix_encoder(model, work / TEXT_FILE)
    n_prompts = sum(map(len, prompts))
    log(f"compiling the class matrix: {len(labels)} classes, {n_prompts} prompts ({job.class_encoder})")
    matrix = encode_class_matrix(labels, prompts, encode, fallback_labels=fallback, progress=opt.progress)
    save_class_matrix(work / CLASSES_FILE, matrix, bound_metadata(job.labels_hash, job.preprocessing, job.scoring))
    save_prompt_texts(work / PROMPTS_FILE, labels, matrix.prompt_texts)
    seconds["class matrix"] = time.perf_counter() - t
    if fallback:
        shown = ", ".join(fallback[:10]) + (", ..." if len(fallback) > 10 else "")
        log(f"{len(fallback)} label(s) have no prompt-bank entry and use {job.scoring.template!r}: {shown}")

    report, video_pixels = None, None
    if opt.verify:
        t = time.perf_counter()
        from apclip.export.verify import generated_video_pixels, verify_bundle_files

        log("verifying ONNX Runtime against the PyTorch reference ...")
        video_pixels = generated_video_pixels(job.preprocessing)
        report = verify_bundle_files(model, work / VISION_FILE, work / TEXT_FILE, matrix, video_pixels,
                                     work / SCORER_FILE if opt.scorer else None,
                                     scoring=job.scoring, frames_per_view=job.preprocessing.frames, graph=job.graph)
        seconds["verify"] = time.perf_counter() - t
        if not report.ok:
            raise ExportError("parity verification failed; nothing was kept:\n" + report.table())
    if "int8" in opt.precisions:
        t = time.perf_counter()
        from apclip.export.int8.calibrate import calibration_set
        from apclip.export.int8.export import add_int8_encoders

        texts = [t for row in (matrix.prompt_texts or []) for t in row]
        from apclip.scoring_protocol import format_template

        texts += [format_template(job.scoring.template, label) for label in labels]
        calibration = calibration_set(job.preprocessing, opt.calibrate, texts, log=log)
        job.int8 = add_int8_encoders(model, work, matrix, video_pixels, verify=opt.verify, log=log,
                                     calibration=calibration, method=opt.int8_method,
                                     graph=job.graph)
        seconds["int8"] = time.perf_counter() - t

    files = {p.name: p.stat().st_size for p in sorted(work.iterdir()) if p.is_file()}
    manifest = _manifest(job, matrix, work, report)
    (work / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return ExportResult(work, matrix.num_classes, matrix.max_prompts, fallback, files, seconds, report, manifest)


def _clips_max(job: _Job) -> int:
    """The clip-level graph's batch range in clips: --batch-max counts frames."""
    return max(1, job.options.batch_max // job.graph.frames)


def trimmed_text_encoder(model) -> Callable[[np.ndarray], np.ndarray]:
    """The reference text encoder on tokens cut after the batch's last EOT.

    The text transformer is causal and pools at EOT, so positions after the last EOT cannot change
    any output: dropping them gives the same embeddings (to fp32 rounding) at about half the cost
    for typical 30-40 token prompts.
    """
    import torch

    from apclip.model import TextEmbedder

    embedder = TextEmbedder(model).eval()

    @torch.inference_mode()
    def encode(tokens: np.ndarray) -> np.ndarray:
        length = int(tokens.argmax(axis=1).max()) + 1  # EOT has the largest id
        return embedder(torch.from_numpy(np.ascontiguousarray(tokens[:, :length]))).numpy()

    return encode


def _io(file: str, inputs: list[tuple[str, str, list]], outputs: list[tuple[str, str, list]], opset: int,
        batch_max: int | None = None) -> dict:
    spec = lambda items: [{"name": n, "dtype": d, "shape": s} for n, d, s in items]  # noqa: E731
    out = {"file": file, "opset": opset, "inputs": spec(inputs), "outputs": spec(outputs)}
    if batch_max is not None:
        out["batch_max"] = batch_max  # the exported graph's dynamic batch range; runners never send more
    return out


def _manifest(job: _Job, matrix, work: Path, report: VerificationReport | None) -> dict[str, Any]:
    from apclip.export.fusion import fusion_record
    from apclip.export.onnx_export import scorer_opset

    opset, batch_max, checkpoint, bank = job.options.opset, job.options.batch_max, job.checkpoint, job.bank
    c = job.model.config
    r, e = c.image_resolution, c.embed_dim
    if job.graph.clip_level:  # batch_max counts clips of T frames
        t = job.graph.frames
        vision_io = _io(VISION_FILE, [(VISION_INPUT, "float32", ["B", t, 3, r, r])],
                        [(EMBEDDINGS_OUTPUT, "float32", ["B", t, e] if job.graph.output == "frames" else ["B", e])],
                        opset, _clips_max(job))
    else:
        vision_io = _io(VISION_FILE, [(VISION_INPUT, "float32", ["N", 3, r, r])],
                        [(EMBEDDINGS_OUTPUT, "float32", ["N", e])], opset, batch_max)
    io = {
        "vision": dict(vision_io, normalized=job.vision_normalized),  # False: raw features, for vificlip
        # "L": 2..context_length tokens; the runtime cuts each batch after its last EOT (engine/runners/text_trim.py)
        "text": _io(TEXT_FILE, [(TEXT_INPUT, "int64", ["M", "L"])],
                    [(EMBEDDINGS_OUTPUT, "float32", ["M", e])], opset, text_batch_max(batch_max)),
    }
    precisions = _precisions_record(job, io)
    if job.options.scorer:
        io["scorer"] = _io(SCORER_FILE, [(SCORER_INPUTS[0], "float32", ["B", "Nv", e]),
                                         (SCORER_INPUTS[1], "float32", ["K", "P", e]),
                                         (SCORER_INPUTS[2], "int64", ["K"])],
                           [(SCORER_OUTPUT, "float32", ["B", "K"])], scorer_opset(opset))
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": c.to_dict(),
        "checkpoint": {"name": checkpoint.path.name, "format": checkpoint.format,
                       "sha256": sha256_file(checkpoint.path)},
        "preprocessing": job.preprocessing.to_dict(),
        "scoring": job.scoring.to_dict(),
        "vision_graph": job.graph.to_dict(),
        "patching": checkpoint.patching.to_dict() if checkpoint.patching is not None else None,
        "io": io,
        "opset": opset,
        "labels": list(job.labels),
        "labels_sha256": job.labels_hash,
        "prompt_bank_sha256": bank.sha256 if bank is not None else None,
        "class_matrix": {"file": CLASSES_FILE, "num_classes": matrix.num_classes,
                         "max_prompts": matrix.max_prompts, "embed_dim": e, "encoder": job.class_encoder,
                         "fallback_labels": matrix.fallback_labels},
        "verification": report.to_dict() if report is not None else None,
        "precisions": precisions,
        "graph_fusions": fusion_record(),
        "engines": {},  # TensorRT engines, built on the target GPU, are added here
        "tools": _versions(),
        "files": {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                  for p in sorted(work.iterdir()) if p.is_file() and p.name != MANIFEST},
    }


def _precisions_record(job: _Job, io: dict) -> dict[str, Any]:
    """{"fp32": {encoder: file}, "int8": {files, quantization, verification, refused}}; adds io rows."""
    record: dict[str, Any] = {"fp32": {"vision": VISION_FILE, "text": TEXT_FILE}}
    if job.int8 is not None:
        record["int8"] = job.int8
        for encoder, name in job.int8["files"].items():
            io[f"{encoder}_int8"] = dict(io[encoder], file=name)
    return record


def _versions() -> dict[str, str]:
    versions = {"apclip": __version__, "python": platform.python_version()}
    for name in ("torch", "onnx", "onnxruntime", "onnxscript", "numpy"):
        module = sys.modules.get(name)
        if module is None:
            try:
                module = __import__(name)
            except ImportError:
                continue
        versions[name] = getattr(module, "__version__", "unknown")
    return versions


def _replace_dir(work: Path, out: Path) -> None:
    """Move the finished bundle into place; an old bundle is removed only after the new one is whole."""
    if out.exists():
        from apclip.export.output_target import is_apclip_bundle

        if out.is_symlink() or not is_apclip_bundle(out):  # something else appeared there during the export
            raise ExportError(f"--out {out} is no longer an apclip bundle; nothing was replaced")
    replace_dir(work, out)


def _describe(c) -> str:
    return (f"ViT {c.vision_width}w/{c.vision_layers}L/p{c.vision_patch_size} @ {c.image_resolution}px, "
            f"text {c.transformer_width}w/{c.transformer_layers}L, embed {c.embed_dim}")
