"""apclip-bench parity for X-CLIP bundles (manifest family `xclip`, scoring protocol `xclip`).

The reference is transformers' own XCLIPModel, loaded from the folder the bundle came from the way the
export loads it (export/xclip.py load_xclip: safetensors, or torch.load weights_only=True). On each video the
bundle's own decode and preprocessing give the pixels [V, T, 3, R, R]; the same pixels go to

    reference:  XCLIPModel(input_ids, pixel_values).logits_per_video.softmax(-1), mean over the V views
    ort:fp32:   the Recognizer (vision.onnx + text rows + prompt_generator.onnx, the xclip protocol)

and the row reports max |probability diff|, top-1 / top-5 agreement, and the cosine of the video embeddings
(vision.onnx row 0 against XCLIPModel's video_embeds). Other contenders (TensorRT, torch, OpenVINO, int8,
scorers) run APCLIP's frame-level graphs and MAKA: they are listed as unavailable, with the reason.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from apclip.benchmarks.parity import (DEFAULT_THRESHOLDS, Log, ParityReport, ParityRow, Thresholds, _one_line,
                                      embedding_metrics, judge, score_metrics)

SUPPORTED = ("ort:fp32",)  # the contenders that run an xclip bundle (Recognizer backend ort)
UNSUPPORTED = "not supported for X-CLIP bundles (only ort:fp32 runs the xclip graphs and protocol)"


def is_xclip_bundle(manifest) -> bool:
    return manifest.raw.get("family") == "xclip" or manifest.scoring.protocol == "xclip"


def run_xclip_parity(manifest, bundle: str | Path, checkpoint: str | Path, videos: Sequence[Path], *,
                     backends: str | None = None, thresholds: dict[str, Thresholds] | None = None,
                     log: Log = lambda message: None) -> ParityReport:
    """ort:fp32 (the Recognizer) against XCLIPModel from `checkpoint` (an X-CLIP folder) on `videos`."""
    import torch

    from apclip.benchmarks.contenders import select
    from apclip.benchmarks.machine import record
    from apclip.benchmarks.timing import timed
    from apclip.engine.recognizer import Recognizer
    from apclip.engine.runners.encoders import encode_in_batches
    from apclip.engine.video.clips import load_clip
    from apclip.engine.video.preprocess import flatten_views
    from apclip.errors import ApclipError
    from apclip.export.xclip import is_xclip_folder, load_xclip
    from apclip.tokenizer import get_tokenizer

    load_before = list(os.getloadavg())
    thresholds = thresholds or DEFAULT_THRESHOLDS
    if not is_xclip_folder(checkpoint):
        raise ApclipError(f"--ckpt {checkpoint}: an X-CLIP bundle's reference is the transformers XCLIPModel "
                          f"folder it was exported from (config.json with model_type xclip + weights)")
    model, weights = load_xclip(checkpoint)  # safe loading; missing / unexpected keys are one error line
    rows: dict[str, ParityRow] = {}
    runner = None
    for contender in select(backends):
        row = ParityRow(contender.name, contender.kind, contender.precision, "unavailable", UNSUPPORTED)
        rows[contender.name] = row
        if contender.name in SUPPORTED:
            try:
                runner = Recognizer.from_bundle(bundle, backend="ort", use_cache=False)
                row.status, row.reason = "unavailable", None
                row.file_bytes = int(manifest.file("vision.onnx").stat().st_size) if manifest.has("vision.onnx") else None
            except Exception as exc:  # an available backend that cannot start is a failure, not a skip
                row.status, row.reason = "fail", f"could not start: {_one_line(exc)}"
    name = SUPPORTED[0]
    log(f"reference transformers XCLIPModel fp32 ({Path(checkpoint).name}); "
        f"{'1 contender available: ' + name if runner else 'no contender available'}")

    labels = runner.labels if runner is not None else list(manifest.labels)
    template = manifest.scoring.template or "{}"
    tokens = torch.from_numpy(np.asarray(get_tokenizer().tokenize([template.format(x) for x in labels])))
    ref_probs, ref_video, got_probs, got_video, ms_ref, ms_got = [], [], [], [], [], []
    error = None
    for number, video in enumerate(videos, 1):
        clip = load_clip(video, manifest.preprocessing)
        views = np.ascontiguousarray(clip.views, dtype=np.float32)  # [V, T, 3, R, R]: the same pixels to both

        def reference() -> Any:
            with torch.inference_mode():
                return model(input_ids=tokens, pixel_values=torch.from_numpy(views))

        out, took = timed(reference)
        ref_probs.append(out.logits_per_video.softmax(-1).double().numpy().mean(0))  # [K]
        ref_video.append(out.video_embeds.float().numpy())  # [V, E]
        ms_ref.append(took)
        if runner is not None and error is None:
            try:
                emb, took = timed(lambda: encode_in_batches(runner.vision, np.ascontiguousarray(flatten_views(views))))
                emb = np.asarray(emb, dtype=np.float32).reshape(len(views), -1, emb.shape[-1])  # [V, 1 + L, E]
                got_probs.append(np.asarray(runner.score(emb.reshape(-1, emb.shape[-1])), dtype=np.float64))
                got_video.append(emb[:, 0])
                ms_got.append(took)
            except Exception as exc:  # recorded as the contender's failure
                error = f"error on {Path(video).name}: {_one_line(exc)}"
        log(f"[{number}/{len(videos)}] {Path(video).name}: {views.shape[0]} view(s) x {views.shape[1]} frames")

    if runner is not None:
        row = rows[name]
        if error:
            row.status, row.reason = "fail", error
        else:
            values = embedding_metrics(np.concatenate(ref_video), np.concatenate(got_video))
            values |= score_metrics(np.stack(ref_probs), np.stack(got_probs))
            for key, value in values.items():
                setattr(row, key, value)
            row.ms_per_clip = float(np.median(ms_got))
            judge(row, thresholds["fp32"])
    # Not refused on a different sha256 (a re-saved folder is the same model): the note says so, the rows judge.
    from apclip.bundle import sha256_file

    recorded = (manifest.raw.get("checkpoint") or {}).get("sha256")
    differs = f"; its sha256 is not the {recorded[:12]}... the bundle records" if (
        recorded and sha256_file(weights) != recorded) else ""
    reference_row = ParityRow("transformers:fp32", "reference", "fp32", "reference",
                              f"the reference (XCLIPModel from {Path(checkpoint).name}/{weights.name}){differs}",
                              file_bytes=weights.stat().st_size, ms_per_clip=float(np.median(ms_ref)) if ms_ref else None)
    return ParityReport(str(bundle), str(checkpoint), reference_row.contender, [str(v) for v in videos],
                        [reference_row, *rows.values()], record(load_before))
