"""`export_xclip_bundle`: an X-CLIP transformers folder -> bundle (scoring protocol `xclip`), atomically.

Defaults come from the folder's config.json (frames: vision_config.num_frames, resolution: image_size,
logit_scale: the weights); preprocessing is the `xclip` profile (XCLIPProcessor's: PIL bilinear, centre crop, ImageNet mean/std). The
bundle is checked before it is kept: ONNX Runtime's probabilities against XCLIPModel's own forward.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from apclip.export.errors import ExportError
from apclip.export.xclip import (GENERATOR_INPUTS, GENERATOR_OUTPUT, PROMPT_GENERATOR_FILE, XCLIP_TEMPLATE,
                                 export_xclip_graphs, load_xclip, model_config_of)

XCLIP_MIN_OPSET = 18
VERIFY_TOLERANCE = 1e-4  # class probabilities, ONNX Runtime vs transformers, fp32


def export_xclip_bundle(folder, *, out, labels, frames: int | None = None, clips: int | None = None,
                        opset: int = 17, force: bool = False, verify: bool = True,
                        log: Callable[[str], None] = print) -> Path:
    from apclip.bundle import (CLASSES_FILE, EMBEDDINGS_OUTPUT, FORMAT, FORMAT_VERSION, MANIFEST, PROMPTS_FILE,
                               TEXT_FILE, TEXT_INPUT, VISION_FILE, VISION_INPUT, VOCAB_FILE, VisionGraph,
                               bound_metadata, sha256_file)
    from apclip.class_matrix import class_prompts, encode_class_matrix, save_class_matrix, save_prompt_texts
    from apclip.fileio import partial_dir
    from apclip.labels import labels_sha256, read_labels
    from apclip.preprocessing import Preprocessing
    from apclip.scoring_protocol import Scoring
    from apclip.tokenizer import find_vocab

    from apclip.export.api import _io, _replace_dir, _versions
    from apclip.export.output_target import check_bundle_target

    shown = Path(out)
    out = check_bundle_target(out, force, inputs=(folder, labels))
    if not labels:
        raise ExportError(f"X-CLIP folder {folder} carries no class labels; pass --labels labels.txt")
    label_list = read_labels(labels)
    t0 = time.perf_counter()
    model, weights = load_xclip(folder)
    vc = model.config.vision_config
    t = frames or vc.num_frames
    if t != vc.num_frames:
        raise ExportError(f"--frames {t}: this X-CLIP was built for {vc.num_frames} frames (vision_config.num_frames)")
    log(f"loaded {folder} ({weights.name}) in {time.perf_counter() - t0:.1f}s: X-CLIP ViT {vc.hidden_size}w/"
        f"{vc.num_hidden_layers}L/p{vc.patch_size} @ {vc.image_size}px, {t} frames, embed {model.config.projection_dim}")
    pre = Preprocessing(frames=t, clips=clips or 1, crops=1, resolution=vc.image_size, profile="xclip")
    scale = float(model.logit_scale.detach().exp())
    scoring = Scoring("xclip", logit_scale=scale, template=XCLIP_TEMPLATE)
    graph = VisionGraph("clip", "tokens", t, "xclip")
    log(f"  frames {t} (config.json vision_config.num_frames), clips {pre.clips} ({'--clips' if clips else 'default'}), "
        f"1 centre crop, xclip profile (PIL bilinear, ImageNet mean/std), logit_scale {scale:.4g} (weights), template {XCLIP_TEMPLATE!r} (X-CLIP's)")
    if opset < XCLIP_MIN_OPSET:  # the exporter lowers X-CLIP's graphs to opset 18 whatever it is asked
        log(f"  opset {XCLIP_MIN_OPSET} instead of {opset} (X-CLIP's graphs need it)")
        opset = XCLIP_MIN_OPSET
    out.parent.mkdir(parents=True, exist_ok=True)
    work = partial_dir(out)
    try:
        log(f"exporting {VISION_FILE}, {TEXT_FILE}, {PROMPT_GENERATOR_FILE} (opset {opset}) ...")
        export_xclip_graphs(model, work, t, opset)
        shutil.copyfile(find_vocab(), work / VOCAB_FILE)
        import onnxruntime as ort

        text = ort.InferenceSession(str(work / TEXT_FILE), providers=["CPUExecutionProvider"])
        prompts, fallback = class_prompts(label_list, None, XCLIP_TEMPLATE)
        matrix = encode_class_matrix(label_list, prompts, lambda tok: text.run(None, {TEXT_INPUT: tok})[0],
                                     fallback_labels=fallback)
        lab_hash = labels_sha256(label_list)
        save_class_matrix(work / CLASSES_FILE, matrix, bound_metadata(lab_hash, pre, scoring))
        save_prompt_texts(work / PROMPTS_FILE, label_list, matrix.prompt_texts)
        verification = _verify(model, work, matrix, t) if verify else None
        if verification is not None:
            log(f"verified: max |p_onnx - p_transformers| = {verification['max_abs_prob']:.2e} "
                f"(tolerance {VERIFY_TOLERANCE})")
        c = model_config_of(model)
        r, e, grid = c["image_resolution"], c["embed_dim"], (c["image_resolution"] // c["vision_patch_size"]) ** 2
        io = {"vision": dict(_io(VISION_FILE, [(VISION_INPUT, "float32", ["B", t, 3, r, r])],
                                 [(EMBEDDINGS_OUTPUT, "float32", ["B", 1 + grid, e])], opset, 64), normalized=True),
              "text": _io(TEXT_FILE, [(TEXT_INPUT, "int64", ["M", "L"])], [(EMBEDDINGS_OUTPUT, "float32", ["M", e])],
                          opset, 4096),
              "prompt_generator": _io(PROMPT_GENERATOR_FILE, [(GENERATOR_INPUTS[0], "float32", ["B", "K", e]),
                                                              (GENERATOR_INPUTS[1], "float32", ["B", grid, e])],
                                      [(GENERATOR_OUTPUT, "float32", ["B", "K", e])], opset)}
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "family": "xclip",
            "model": c, "checkpoint": {"name": Path(folder).name, "format": "transformers-xclip",
                                       "weights": weights.name, "sha256": sha256_file(weights)},
            "preprocessing": pre.to_dict(), "scoring": scoring.to_dict(), "vision_graph": graph.to_dict(),
            "patching": None, "io": io, "opset": opset, "labels": label_list, "labels_sha256": lab_hash,
            "prompt_bank_sha256": None,
            "class_matrix": {"file": CLASSES_FILE, "num_classes": matrix.num_classes, "max_prompts": 1,
                             "embed_dim": e, "encoder": "onnxruntime text.onnx (raw text_projection)",
                             "fallback_labels": matrix.fallback_labels},
            "verification": verification, "precisions": {"fp32": {"vision": VISION_FILE, "text": TEXT_FILE}},
            "engines": {}, "tools": dict(_versions(), transformers=__import__("transformers").__version__),
            "files": {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                      for p in sorted(work.iterdir()) if p.is_file()},
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _replace_dir(work, out)
        return shown
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _verify(model, work: Path, matrix, frames: int) -> dict:
    """Probabilities of the exported files (the engine's xclip scorer) vs XCLIPModel.forward on 2 clips."""
    import onnxruntime as ort
    import torch

    from apclip.bundle import VISION_FILE, VISION_INPUT
    from apclip.engine.scoring.xclip_scorer import xclip_probabilities

    from apclip.tokenizer import get_tokenizer

    r = model.config.vision_config.image_size
    pixels = np.random.default_rng(0).standard_normal((2, frames, 3, r, r)).astype(np.float32)
    tokens = get_tokenizer().tokenize([p[0] for p in matrix.prompt_texts])
    with torch.inference_mode():
        want = model(input_ids=torch.from_numpy(tokens), pixel_values=torch.from_numpy(pixels)
                     ).logits_per_video.softmax(-1).numpy()
    vision = ort.InferenceSession(str(work / VISION_FILE), providers=["CPUExecutionProvider"])
    gen = ort.InferenceSession(str(work / PROMPT_GENERATOR_FILE), providers=["CPUExecutionProvider"])
    tokens_out = vision.run(None, {VISION_INPUT: pixels})[0]  # [2, 1 + L, E]
    got = np.stack([xclip_probabilities(tokens_out[i:i + 1], matrix.embeddings[:, 0], gen,
                                        float(model.logit_scale.detach().exp()))[0] for i in range(2)])
    err = float(np.abs(got - want).max())
    if not (err <= VERIFY_TOLERANCE and math.isfinite(err)):
        raise ExportError(f"X-CLIP parity failed: ONNX Runtime probabilities differ from transformers' by {err:.2e} "
                          f"(> {VERIFY_TOLERANCE}); nothing was kept")
    return {"max_abs_prob": err, "tolerance": VERIFY_TOLERANCE, "reference": "transformers XCLIPModel",
            "clips": 2}
