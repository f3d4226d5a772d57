"""apclip-bench parity: every contender (backend x precision, and every scorer) against the PyTorch fp32
reference from the checkpoint the bundle came from, on a set of videos.

Encoders are compared on the frames the engine really feeds them (its own decode and preprocessing of
each video); their scores are computed in float64 MAKA from their embeddings, so the row measures the
encoder alone. Scorers get the reference embeddings and are compared with float64 MAKA of those.
Thresholds (docs/architecture.md) are chosen by the contender's precision, and can be overridden.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from apclip.errors import ApclipError

Log = Callable[[str], None]


@dataclass(frozen=True)
class Thresholds:
    min_cosine: float | None  # embedding cosine of every frame (None: not judged)
    max_score_diff: float | None  # |score - reference score| of every class of every video
    min_top1: float  # share of videos whose top-1 class matches the reference's

    def to_dict(self) -> dict[str, float | None]:
        return dataclasses.asdict(self)


# docs/architecture.md "Parity thresholds": fp32 backends, and fp16 / bf16 / int8 backends.
DEFAULT_THRESHOLDS = {
    "fp32": Thresholds(min_cosine=0.99999, max_score_diff=1e-4, min_top1=1.0),
    "fp16": Thresholds(min_cosine=0.999, max_score_diff=None, min_top1=0.995),
    "bf16": Thresholds(min_cosine=0.999, max_score_diff=None, min_top1=0.995),
    "int8": Thresholds(min_cosine=0.999, max_score_diff=None, min_top1=0.995),
}


def parse_overrides(values: Sequence[str] | None, flag: str) -> dict[str | None, float]:
    """["0.9999", "fp16=0.998"] -> {None: 0.9999, "fp16": 0.998} (None: every precision)."""
    out: dict[str | None, float] = {}
    for value in values or []:
        precision, _, number = value.rpartition("=")
        if precision and precision not in DEFAULT_THRESHOLDS:
            raise ApclipError(f"{flag} {value}: unknown precision {precision!r}; use one of "
                              f"{', '.join(DEFAULT_THRESHOLDS)} (or a bare number for all)")
        try:
            out[precision or None] = float(number)
        except ValueError:
            raise ApclipError(f"{flag} {value}: not a number (write 0.999 or fp16=0.999)") from None
    return out


def thresholds_with(min_cosine: Sequence[str] | None = None, max_score_diff: Sequence[str] | None = None,
                    min_top1: Sequence[str] | None = None) -> dict[str, Thresholds]:
    """DEFAULT_THRESHOLDS with flag overrides applied (a precision's own value beats the all-precision one)."""
    overrides = {"min_cosine": parse_overrides(min_cosine, "--min-cosine"),
                 "max_score_diff": parse_overrides(max_score_diff, "--max-score-diff"),
                 "min_top1": parse_overrides(min_top1, "--min-top1")}
    out = {}
    for precision, base in DEFAULT_THRESHOLDS.items():
        changes = {}
        for metric, given in overrides.items():
            if precision in given:
                changes[metric] = given[precision]
            elif None in given:
                changes[metric] = given[None]
        out[precision] = dataclasses.replace(base, **changes)
    return out


@dataclass
class ParityRow:
    contender: str  # backend:precision
    kind: str  # encoder | scorer | reference
    precision: str
    status: str  # pass | fail | unavailable | reference
    reason: str | None = None  # why unavailable, or what failed
    cosine_min: float | None = None
    cosine_p1: float | None = None
    cosine_median: float | None = None
    abs_diff_max: float | None = None
    abs_diff_p99: float | None = None
    score_diff_max: float | None = None
    top1_agreement: float | None = None
    top5_agreement: float | None = None
    file_bytes: int | None = None
    ms_per_clip: float | None = None
    thresholds: dict[str, float | None] | None = None


@dataclass
class ParityReport:
    bundle: str
    checkpoint: str
    reference: str
    videos: list[str]
    rows: list[ParityRow]
    machine: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[ParityRow]:
        return [r for r in self.rows if r.status == "fail"]

    def to_dict(self) -> dict[str, Any]:
        return {"benchmark": "parity", "bundle": self.bundle, "checkpoint": self.checkpoint,
                "reference": self.reference, "videos": self.videos, "passed": not self.failed,
                "rows": [dataclasses.asdict(r) for r in self.rows], "machine": self.machine}


def embedding_metrics(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Cosine per frame (min, p1, median) and absolute differences per element (max, p99) of [N, E] sets."""
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    cosine = np.sum(ref64 * got64, -1) / (np.linalg.norm(ref64, axis=-1) * np.linalg.norm(got64, axis=-1))
    diff = np.abs(ref64 - got64)
    return {"cosine_min": float(cosine.min()), "cosine_p1": float(np.percentile(cosine, 1)),
            "cosine_median": float(np.median(cosine)), "abs_diff_max": float(diff.max()),
            "abs_diff_p99": float(np.percentile(diff, 99))}


def score_metrics(ref_scores: np.ndarray, got_scores: np.ndarray) -> dict[str, float]:
    """[videos, K] scores: max |diff|, share of videos with the same top-1, and with the same top-5 set."""
    k5 = min(5, ref_scores.shape[1])
    top1 = np.argmax(ref_scores, 1) == np.argmax(got_scores, 1)
    ref5 = np.sort(np.argsort(-ref_scores, 1, kind="stable")[:, :k5], 1)
    got5 = np.sort(np.argsort(-got_scores, 1, kind="stable")[:, :k5], 1)
    return {"score_diff_max": float(np.abs(ref_scores.astype(np.float64) - got_scores).max()),
            "top1_agreement": float(top1.mean()), "top5_agreement": float(np.all(ref5 == got5, 1).mean())}


def judge(row: ParityRow, t: Thresholds) -> ParityRow:
    """pass / fail against the thresholds; the reason names every metric that missed."""
    missed = []
    if t.min_cosine is not None and row.cosine_min is not None and not row.cosine_min >= t.min_cosine:
        missed.append(f"cosine min {row.cosine_min:.7f} < {t.min_cosine}")
    if t.max_score_diff is not None and row.score_diff_max is not None and not row.score_diff_max <= t.max_score_diff:
        missed.append(f"score |diff| {row.score_diff_max:.3g} > {t.max_score_diff:g}")
    if row.top1_agreement is None or not row.top1_agreement >= t.min_top1:
        missed.append(f"top-1 agreement {row.top1_agreement if row.top1_agreement is not None else float('nan'):.1%}"
                      f" < {t.min_top1:.1%}")
    row.status = "fail" if missed else "pass"
    row.reason = "; ".join(missed) or None
    row.thresholds = t.to_dict()
    return row


def _maka64(emb: np.ndarray, classes) -> np.ndarray:
    from apclip.scoring import maka_score

    return maka_score(emb[None].astype(np.float64), classes.embeddings.astype(np.float64), classes.counts)[0]


def _protocol64(manifest) -> Callable[[np.ndarray, Any], np.ndarray]:
    """The bundle's scoring protocol in float64 (what scorer contenders must match): MAKA, vificlip or ensemble."""
    from apclip.scoring import mean_pool_score, vificlip_score

    scoring = manifest.scoring
    if scoring.protocol == "vificlip":
        return lambda emb, classes: vificlip_score(emb[None].astype(np.float64), classes.embeddings[:, 0],
                                                   manifest.preprocessing.frames, float(scoring.logit_scale))[0]
    if scoring.protocol == "ensemble":
        return lambda emb, classes: mean_pool_score(emb[None], classes.embeddings, classes.counts)[0]
    return _maka64


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def run_parity(bundle: str | Path, checkpoint: str | Path, videos: Sequence[Path], *, base: str | None = None,
               backends: str | None = None, thresholds: dict[str, Thresholds] | None = None,
               reference_device: str = "cpu", threads: int | None = None, batch_size: int = 32,
               log: Log = lambda message: None) -> ParityReport:
    """Every chosen contender against the torch fp32 reference on `videos`; unavailable ones listed with why."""
    from apclip.bundle import read_manifest
    from apclip.benchmarks.contenders import BuildContext, build, probe_all, select
    from apclip.engine.video.clips import load_clip
    from apclip.engine.video.preprocess import flatten_views
    from apclip.engine.runners.encoders import BackendUnavailable, encode_in_batches, torch_runners
    from apclip.engine.scoring.vocabulary import bundle_class_matrix
    from apclip.benchmarks.machine import record
    from apclip.benchmarks.timing import timed

    load_before = list(os.getloadavg())
    thresholds = thresholds or DEFAULT_THRESHOLDS
    manifest = read_manifest(bundle)  # every file checked against its sha256
    from apclip.benchmarks.parity_xclip import is_xclip_bundle, run_xclip_parity

    if is_xclip_bundle(manifest):  # reference: transformers' XCLIPModel, contender: the ORT Recognizer
        return run_xclip_parity(manifest, bundle, checkpoint, videos, backends=backends, thresholds=thresholds,
                                log=log)
    chosen = select(backends)  # the reference itself only when named
    ctx = BuildContext(manifest, checkpoint, base, threads, batch_size)
    # The reference: the checkpoint's sha256 must be the one the bundle records (as --backend torch checks).
    reference = torch_runners(manifest, checkpoint, base, batch_size=batch_size, device=reference_device)[0]
    classes = bundle_class_matrix(manifest)
    protocol64 = _protocol64(manifest)
    rows: dict[str, ParityRow] = {}
    runners: dict[str, Any] = {}
    for contender, reason in probe_all(ctx, chosen):
        row = ParityRow(contender.name, contender.kind, contender.precision, "unavailable", reason)
        if contender.file and manifest.has(contender.file):
            row.file_bytes = int(manifest.files[contender.file].get("bytes") or manifest.file(contender.file).stat().st_size)
        rows[contender.name] = row
        if reason is None:
            try:
                runners[contender.name] = (contender, build(contender, ctx))
            except BackendUnavailable as exc:
                row.reason = str(exc)
            except Exception as exc:  # an available backend that cannot start is a failure, not a skip
                row.status, row.reason = "fail", f"could not start: {_one_line(exc)}"
    log(f"reference {reference.name} fp32; {len(runners)} contender(s) available of {len(chosen)}: "
        f"{', '.join(runners) or 'none'}")

    ref_emb: list[np.ndarray] = []
    got_emb: dict[str, list[np.ndarray]] = {name: [] for name, (c, _) in runners.items() if c.kind == "encoder"}
    got_scores: dict[str, list[np.ndarray]] = {name: [] for name in runners}
    ms: dict[str, list[float]] = {name: [] for name in [*runners, "reference"]}
    errors: dict[str, str] = {}
    for number, video in enumerate(videos, 1):
        clip = load_clip(video, manifest.preprocessing)
        pixels = np.ascontiguousarray(flatten_views(clip.views))  # [V, T, 3, R, R] -> [V*T, 3, R, R]
        emb, took = timed(lambda: encode_in_batches(reference, pixels))
        ref_emb.append(emb)
        ms["reference"].append(took)
        for name, (contender, runner) in runners.items():
            if name in errors:
                continue
            try:
                if contender.kind == "encoder":
                    out, took = timed(lambda: encode_in_batches(runner, pixels))
                    got_emb[name].append(np.asarray(out, dtype=np.float32))
                    got_scores[name].append(protocol64(out, classes))
                else:
                    out, took = timed(lambda: runner(emb[None], classes)[0])
                    got_scores[name].append(np.asarray(out, dtype=np.float64))
                ms[name].append(took)
            except Exception as exc:  # recorded as this contender's failure; the others go on
                errors[name] = f"error on {Path(video).name}: {_one_line(exc)}"
        log(f"[{number}/{len(videos)}] {Path(video).name}: {len(pixels)} frames")

    ref_scores = np.stack([protocol64(e, classes) for e in ref_emb])  # [videos, K]
    for name, (contender, _) in runners.items():
        row = rows[name]
        if name in errors:
            row.status, row.reason = "fail", errors[name]
            continue
        values: dict[str, float] = {}
        if contender.kind == "encoder":
            values |= embedding_metrics(np.concatenate(ref_emb), np.concatenate(got_emb[name]))
        values |= score_metrics(ref_scores, np.stack(got_scores[name]))
        for key, value in values.items():
            setattr(row, key, value)
        row.ms_per_clip = float(np.median(ms[name]))
        judge(row, thresholds[contender.precision])
    # named like the backend table's rows: torch:fp32 on the CPU, torch-cuda:fp32 on a GPU
    reference_name = "torch:fp32" if reference_device == "cpu" else f"torch-{reference_device.split(':')[0]}:fp32"
    reference_row = ParityRow(reference_name, "reference", "fp32", "reference",
                              f"the reference ({Path(checkpoint).name})",
                              file_bytes=Path(checkpoint).stat().st_size, ms_per_clip=float(np.median(ms["reference"])))
    return ParityReport(str(bundle), str(checkpoint), reference_row.contender, [str(v) for v in videos],
                        [reference_row, *rows.values()], record(load_before))


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(report: ParityReport) -> str:
    """Ultralytics-style status table; the last column says why a row is not a pass."""
    header = (f"{'contender':<17} {'status':<11} {'cos min':>9} {'cos p1':>9} {'cos med':>9} {'max|d|':>8} "
              f"{'p99|d|':>8} {'score|d|':>8} {'top1':>6} {'top5':>6} {'MB':>7} {'ms/clip':>8}  note")
    lines = [header]
    for r in report.rows:
        mb = None if r.file_bytes is None else r.file_bytes / 1e6
        lines.append(
            f"{r.contender:<17} {r.status:<11} {_num(r.cosine_min, '.7f'):>9} {_num(r.cosine_p1, '.7f'):>9} "
            f"{_num(r.cosine_median, '.7f'):>9} {_num(r.abs_diff_max, '.1e'):>8} {_num(r.abs_diff_p99, '.1e'):>8} "
            f"{_num(r.score_diff_max, '.1e'):>8} {_num(r.top1_agreement, '.1%'):>6} {_num(r.top5_agreement, '.1%'):>6} "
            f"{_num(mb, '.1f'):>7} {_num(r.ms_per_clip, '.1f'):>8}  {r.reason or ''}")
    return "\n".join(lines)
