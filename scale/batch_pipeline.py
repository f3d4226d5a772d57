"""The Ray Data pipeline of apclip-batch: paths -> decode+preprocess (CPU tasks) -> encode+score (actors).

    paths (one row each, one row per block)
      .map(decode_video)            CPU task: decode once, sample, preprocess -> views [V, T, 3, R, R]
      .map_batches(ClipScorer)      actor pool: bundle loaded once per actor; encode V*T frames, MAKA
      .iter_batches() on the driver -> ResultStore.commit (one part file per batch)

One video per block keeps at most a few clips of frames in flight per task (a ViT-B/16 clip of
2 x 2 x 8 frames is 19 MB of float32), so Ray's streaming executor can apply backpressure instead of
spilling huge blocks. Failures never stop the job: a video that cannot be decoded or scored gets a
row carrying its error.
"""
from __future__ import annotations

import json
import pickle
import time
from typing import Any

import numpy as np

# Columns a decoded row carries to the encode actors. "clip" is the engine's Clip pickled to bytes
# (b"" on error): Ray Data would otherwise try to turn the dataclass into a tensor column.
_DECODED = ("path", "clip", "duration", "decode_s", "error")


def _error_text(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def decode_video(row: dict[str, Any], *, preprocessing: dict[str, Any]) -> dict[str, Any]:
    """One path -> its preprocessed Clip (or the error), decoded in this one task."""
    import os

    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # the error row names the cause; no FFmpeg noise
    from apclip.engine.video.clips import load_clip
    from apclip.preprocessing import Preprocessing

    spec = Preprocessing.from_dict(preprocessing)
    path = row["path"]
    t = time.perf_counter()
    try:
        clip = load_clip(path, spec)
    except Exception as exc:  # any decode failure becomes the row's error, never the job's
        return {"path": path, "clip": b"", "duration": None, "decode_s": time.perf_counter() - t,
                "error": _error_text(exc)}
    duration = clip.source.duration
    if duration is None:
        duration = float(clip.end - clip.start)
    return {"path": path, "clip": pickle.dumps(clip, protocol=pickle.HIGHEST_PROTOCOL), "duration": float(duration), "decode_s": time.perf_counter() - t,
            "error": None}


class ClipScorer:
    """Encode and score decoded clips; one Recognizer (bundle, runners, class matrix) per actor."""

    def __init__(self, bundle: str, backend: str = "auto", labels: list[str] | None = None, scorer: str = "auto",
                 threads: int | None = None, topk: int = 5, prompts: str | None = None):
        from apclip.engine.recognizer import Recognizer

        self.rec = Recognizer.from_bundle(bundle, backend, labels, prompts=prompts, scorer=scorer, threads=threads,
                                          topk=topk)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = [json.dumps(self.score_row({name: batch[name][i] for name in _DECODED}), ensure_ascii=False)
                   for i in range(len(batch["path"]))]
        return {"path": batch["path"], "record": np.array(records, dtype=object)}

    def score_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """One decoded row -> Prediction.to_dict() plus path, duration and error (as apclip-infer --json)."""
        from apclip.engine.predictions import Prediction

        rec = self.rec
        error = row["error"] if isinstance(row["error"], str) else None
        duration = None if row["duration"] is None or np.isnan(row["duration"]) else float(row["duration"])
        timings = {"decode+preprocess": float(row["decode_s"])}
        clip = pickle.loads(row["clip"]) if error is None else None  # our own decode task's bytes
        pred = Prediction(source=clip.source.name if clip is not None else str(row["path"]), top=[],
                          scores=np.zeros(0), backend=rec.backend, scorer=rec.scorer.name,
                          protocol=rec.scoring.protocol, timings=timings)
        if error is None:
            try:
                # The Recognizer's own per-clip step (encode, score by the bundle's protocol, top-k), so
                # every field is the one apclip-infer --json writes for the same video.
                rec._fill(pred, clip, timings, rec.topk, explain=False)
            except Exception as exc:  # a clip the encoder refuses is that video's error
                error = _error_text(exc)
        return {**pred.to_dict(), "path": str(row["path"]), "duration": duration, "error": error}


def build_dataset(paths: list[str], *, bundle: str, preprocessing: dict[str, Any], decode_workers: int | None,
                  encode_workers: int, gpus_per_worker: float, cpus_per_worker: float, scorer_kwargs: dict[str, Any]):
    import ray.data

    from apclip.preprocessing import Preprocessing

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=max(1, len(paths)))
    # Ray 2.51+ sizes pools with compute= strategies (its `concurrency=` now warns as deprecated).
    # The memory reservation (a clip's float32 views, and room for its decoded frames) is also what
    # keeps Ray from fusing the decode into the encode actors (fusion needs equal remote args):
    # decoding belongs on CPU tasks anywhere in the cluster, not inside a GPU actor.
    spec = Preprocessing.from_dict(preprocessing)
    clip_bytes = spec.views * spec.frames * 3 * spec.resolution ** 2 * 4
    ds = ds.map(decode_video, fn_kwargs={"preprocessing": preprocessing}, num_cpus=1,
                memory=(256 << 20) + 4 * clip_bytes,
                compute=ray.data.TaskPoolStrategy(size=decode_workers) if decode_workers else None)
    return ds.map_batches(ClipScorer, fn_constructor_kwargs={"bundle": bundle, **scorer_kwargs}, batch_size=1,
                          batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=encode_workers),
                          num_gpus=gpus_per_worker or None, num_cpus=cpus_per_worker)
