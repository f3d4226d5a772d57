"""apclip-bench latency: per-stage and end-to-end latency of every contender on one video.

Stages (milliseconds; warm-up rounds dropped; median, p90, p99, min, max over the runs):
  decode       the video decoded and its sampled frames colour-converted (what load_clip decodes)
  preprocess   resize, crops and normalisation of those frames, from frames already decoded
  h2d          host-to-device copy of the clip's pixels (CUDA events); none on CPU backends, and
               inside `encode` for ONNX Runtime CUDA (it copies within session.run)
  encode       the vision encoder on the clip's V*T images (CUDA events for device-resident runners)
  score        MAKA against the bundle's classes, and against a synthetic K x P matrix (every scorer;
               the Triton kernel with triton.testing.do_bench)
  total        Recognizer.predict end to end: decode + preprocess + encode + score (numpy scorer)
  stream       Recognizer.stream over the whole video at the bundle's settings (ms per window)
Decode and preprocess do not depend on the backend and are measured once. Stages run interleaved
(one call of each per round), so load from other jobs skews them alike; compare contenders within
one run (`vs first` column), and runs of separate invocations with `apclip-bench compare`.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

Log = Callable[[str], None]


@dataclass
class LatencySettings:
    runs: int = 5
    warmup: int = 1
    batch: int | None = None  # vision batch (None: the clip's V*T images in one batch)
    threads: int | None = None
    window: float = 2.0  # stream window span, seconds
    stride: float = 1.0
    stream: bool = True
    large_classes: int = 400  # K of the synthetic class matrix (0: no such row)
    large_prompts: int = 36


@dataclass
class LatencyReport:
    bundle: str
    video: dict[str, Any]
    clip: dict[str, Any]
    images_per_clip: int
    settings: dict[str, Any]
    rows: list[dict[str, Any]]
    contenders: list[dict[str, Any]]
    unavailable: list[dict[str, str]]
    machine: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"benchmark": "latency", **dataclasses.asdict(self)}


def peak_rss_mib() -> float:
    """The process's peak resident set (VmHWM), MiB."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _row(contender: str, kind: str, stage: str, times: list[float] | None, timed_with: str,
         note: str | None = None, **extra: Any) -> dict[str, Any]:
    from apclip.benchmarks.timing import STATS, summarize

    stats = summarize(times) if times else {k: None for k in (*STATS, "runs")}
    return {"contender": contender, "kind": kind, "stage": stage, **stats, "timed_with": timed_with,
            "note": note, **extra}


def _ingest_rows(video: Path, spec, s: LatencySettings) -> tuple[list[dict], Any]:
    """decode and preprocess, measured once; returns the rows and the clip for the encoders."""
    from apclip.engine.video.clips import load_clip
    from apclip.engine.video.preprocess import resize_frame, spec_views
    from apclip.engine.video.sampling import sample_segment_indices
    from apclip.engine.video.sources import open_source
    from apclip.benchmarks.timing import host_timer, measure

    with open_source(video) as probe:
        frame_count = probe.info.frame_count
    plan = sample_segment_indices(frame_count, spec.frames, spec.clips)  # [N, T]
    wanted = set(plan.ravel().tolist())

    def decode() -> list[np.ndarray]:
        with open_source(video) as src:
            return [f.image for f in src.frames(lambda index, timestamp: index in wanted)]

    by_index = dict(zip(sorted(wanted), decode()))
    frames = [[by_index[int(i)] for i in row] for row in plan]

    def preprocess() -> np.ndarray:
        resized = [[resize_frame(f, spec) for f in row] for row in frames]  # the bundle's profile
        return spec_views(resized, spec)

    times = measure({"decode": host_timer(decode), "preprocess": host_timer(preprocess)}, s.runs, s.warmup)
    rows = [_row("all", "ingest", name, t, "host clock") for name, t in times.items()]
    return rows, load_clip(video, spec)


def _encoder_timers(runner: Any, contender, pixels: np.ndarray) -> tuple[dict, dict[str, str], dict[str, str]]:
    """Timers for h2d and encode, how each is timed, and notes for stages that do not apply."""
    from apclip.engine.runners.encoders import encode_in_batches
    from apclip.benchmarks.timing import cuda_timer, host_timer

    torch = getattr(runner, "torch", None)
    if contender.device == "cuda" and torch is not None and hasattr(runner, "embed_on_device"):
        # Device-resident runner (torch-cuda): events on the runner's own stream, embeddings left on the device.
        stream = getattr(runner, "stream", None) or torch.cuda.current_stream()
        pinned = torch.from_numpy(pixels).pin_memory()
        copy, encode = (cuda_timer(torch, lambda: pinned.to("cuda", non_blocking=True)),
                        cuda_timer(torch, lambda: runner.embed_on_device(pixels)))

        def on_stream(timer):
            def timed() -> float:
                with torch.cuda.stream(stream):
                    return timer()
            return timed

        return ({"h2d": on_stream(copy), "encode": on_stream(encode)},
                {"h2d": "cuda events (pinned copy of the clip)", "encode": "cuda events (incl. its staging copy)"}, {})
    note = ("inside encode: the runner copies within its call, which returns finished numpy"
            if contender.device == "cuda" else "host memory: no copy")
    return ({"encode": host_timer(lambda: encode_in_batches(runner, pixels))}, {"encode": "host clock"},
            {"h2d": note})


def _time_encoder(contender, runner: Any, manifest, classes, video: Path, pixels: np.ndarray,
                  s: LatencySettings) -> tuple[list[dict], dict[str, Any], np.ndarray]:
    """h2d, encode, total and stream of one encoder; its throughput summary; its embeddings of the clip."""
    from apclip.engine.recognizer import Recognizer
    from apclip.engine.runners.encoders import encode_in_batches
    from apclip.engine.scoring.scorers import NumpyScorer
    from apclip.benchmarks.timing import host_timer, measure, per_item

    images = len(pixels)
    torch = getattr(runner, "torch", None) if contender.device == "cuda" else None
    if torch is not None:
        torch.cuda.reset_peak_memory_stats()
    workers = 1 if (os.cpu_count() or 1) > 1 else 0  # as Recognizer.from_bundle
    rec = Recognizer(manifest, runner, None, classes, NumpyScorer(), workers=workers)
    timers, how, notes = _encoder_timers(runner, contender, pixels)
    windows: list[int] = []  # windows of every stream call, warm-up ones first

    def stream() -> None:
        windows.append(sum(1 for _ in rec.stream(video, window=s.window, stride=s.stride)))

    timers["total"] = host_timer(lambda: rec.predict(video))
    how["total"] = "host clock (returns numpy)"
    if s.stream:
        timers["stream"] = host_timer(stream)
        how["stream"] = "host clock, per window"
    times = measure(timers, s.runs, s.warmup)
    if "stream" in times:  # each run divided by its own window count
        times["stream"] = per_item(times["stream"], windows[s.warmup:])
    rows = []
    for stage in ("h2d", "encode", "total", "stream"):
        if stage in times:
            rows.append(_row(contender.name, "encoder", stage, times[stage], how[stage],
                             windows=windows[-1] if stage == "stream" else None))
        elif stage in notes:
            rows.append(_row(contender.name, "encoder", stage, None, "not applicable", notes[stage]))
    total = float(np.median(times["total"]))
    encode = float(np.median(times["encode"]))
    summary = {
        "contender": contender.name, "kind": "encoder", "clips_per_s": 1e3 / total,
        "frames_per_s": images * 1e3 / total, "encode_images_per_s": images * 1e3 / encode,
        "windows_per_s": 1e3 / float(np.median(times["stream"])) if "stream" in times else None,
        "peak_rss_mib": peak_rss_mib(),
        "peak_device_mib": torch.cuda.max_memory_allocated() / 2**20 if torch is not None else None,
    }
    return rows, summary, encode_in_batches(runner, pixels)


def _built(available, kind: str, ctx, unavailable: list[dict]):
    """(contender, runner or scorer) for each available contender of `kind` that builds; the others are
    recorded in `unavailable` with the reason."""
    from apclip.benchmarks.contenders import build
    from apclip.engine.runners.encoders import BackendUnavailable

    for contender in [c for c in available if c.kind == kind]:
        try:
            built = build(contender, ctx)
        except BackendUnavailable as exc:
            unavailable.append({"contender": contender.name, "reason": str(exc)})
            continue
        yield contender, built
        del built  # one runner alive at a time: the caller drops its reference before the next is built


def run_latency(bundle: str | Path, video: str | Path, *, backends: str | None = None,
                checkpoint: str | Path | None = None, base: str | None = None,
                settings: LatencySettings | None = None, log: Log = lambda message: None) -> LatencyReport:
    from apclip.bundle import read_manifest
    from apclip.class_matrix import ClassMatrix
    from apclip.benchmarks.contenders import BuildContext, probe_all, select
    from apclip.engine.video.preprocess import flatten_views
    from apclip.engine.video.sources import open_source
    from apclip.engine.scoring.vocabulary import bundle_class_matrix
    from apclip.benchmarks.machine import record
    from apclip.benchmarks.timing import do_bench_ms, host_timer, measure

    load_before = list(os.getloadavg())
    s = settings or LatencySettings()
    video = Path(video)
    manifest = read_manifest(bundle)
    spec = manifest.preprocessing
    images = spec.frames * spec.views
    ctx = BuildContext(manifest, checkpoint, base, s.threads, s.batch or images)
    classes = bundle_class_matrix(manifest)
    chosen = select(backends, include_reference=True)
    available, unavailable = [], []
    for contender, reason in probe_all(ctx, chosen):
        if reason:
            unavailable.append({"contender": contender.name, "reason": reason})
        else:
            available.append(contender)
    with open_source(video) as probe:
        info = probe.info
    video_info = {"path": str(video), "frames": info.frame_count, "fps": info.fps,
                  "size": [info.width, info.height]}
    log(f"latency on {video.name}: {images} images per clip; contenders: {', '.join(c.name for c in available) or 'none'}")

    rows, clip = _ingest_rows(video, spec, s)
    pixels = np.ascontiguousarray(flatten_views(clip.views))  # [V, T, 3, R, R] -> [V*T, 3, R, R]
    summaries: list[dict[str, Any]] = []
    embeddings = None
    for contender, runner in _built(available, "encoder", ctx, unavailable):
        log(f"timing {contender.name} ...")
        encoder_rows, summary, emb = _time_encoder(contender, runner, manifest, classes, video, pixels, s)
        rows += encoder_rows
        summaries.append(summary)
        embeddings = emb if embeddings is None else embeddings
        del runner

    if embeddings is None:  # no encoder ran: score random unit rows of the clip's size
        embeddings = np.random.default_rng(0).standard_normal((images, manifest.embed_dim)).astype(np.float32)
        embeddings /= np.linalg.norm(embeddings, axis=-1, keepdims=True)
    matrices = {f"score K={classes.num_classes}": classes}
    if s.large_classes > 0:
        big = np.random.default_rng(1).standard_normal((s.large_classes, s.large_prompts, manifest.embed_dim))
        big = (big / np.linalg.norm(big, axis=-1, keepdims=True)).astype(np.float32)
        matrices[f"score K={s.large_classes}xP={s.large_prompts}"] = ClassMatrix(
            big, np.full(s.large_classes, s.large_prompts, np.int32), [f"class {k}" for k in range(s.large_classes)], [])
    frames = embeddings[None]  # [Nv, E] -> [1, Nv, E]
    for contender, scorer in _built(available, "scorer", ctx, unavailable):
        log(f"timing scorer {contender.name} ...")
        for stage, matrix in matrices.items():
            fn = (lambda m=matrix: scorer(frames, m))
            if contender.device == "cuda" and getattr(scorer, "device", "cuda") == "cuda":
                fn()  # compile and cache the class matrix on the device first
                rows.append(_row(contender.name, "scorer", stage, do_bench_ms(fn), "triton do_bench",
                                 "incl. copies of the frames and scores"))
            else:
                rows.append(_row(contender.name, "scorer", stage,
                                 measure({stage: host_timer(fn)}, s.runs, s.warmup)[stage], "host clock"))
        summaries.append({"contender": contender.name, "kind": "scorer", "peak_rss_mib": peak_rss_mib()})
    return LatencyReport(str(bundle), video_info, spec.to_dict(), images, dataclasses.asdict(s), rows, summaries,
                         unavailable, record(load_before))


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(report: LatencyReport) -> str:
    firsts: dict[str, float] = {}
    lines = [f"{'stage':<20} {'contender':<17} {'median':>9} {'p90':>9} {'p99':>9} {'min':>9} {'max':>9} "
             f"{'vs first':>8}  timed with"]
    for r in report.rows:
        ratio = None
        if r["median_ms"] is not None:
            first = firsts.setdefault(r["stage"], r["median_ms"])
            ratio = r["median_ms"] / first if first else None
        lines.append(f"{r['stage']:<20} {r['contender']:<17} {_num(r['median_ms'], '.2f'):>9} "
                     f"{_num(r['p90_ms'], '.2f'):>9} {_num(r['p99_ms'], '.2f'):>9} {_num(r['min_ms'], '.2f'):>9} "
                     f"{_num(r['max_ms'], '.2f'):>9} {_num(ratio, '.2f'):>8}  "
                     f"{r['timed_with']}{'; ' + r['note'] if r['note'] else ''}")
    lines.append("")
    lines.append(f"{'contender':<17} {'clips/s':>8} {'frames/s':>9} {'enc img/s':>9} {'windows/s':>9} "
                 f"{'peak RSS MiB':>12} {'peak dev MiB':>12}")
    for c in report.contenders:
        lines.append(f"{c['contender']:<17} {_num(c.get('clips_per_s'), '.3f'):>8} {_num(c.get('frames_per_s'), '.2f'):>9} "
                     f"{_num(c.get('encode_images_per_s'), '.2f'):>9} {_num(c.get('windows_per_s'), '.3f'):>9} "
                     f"{_num(c.get('peak_rss_mib'), '.0f'):>12} {_num(c.get('peak_device_mib'), '.0f'):>12}")
    for u in report.unavailable:
        lines.append(f"{u['contender']:<17} unavailable: {u['reason']}")
    return "\n".join(lines)
