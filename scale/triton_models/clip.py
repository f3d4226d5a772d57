"""apclip-serve's `apclip_clip`: one clip per batch item -> top-k labels and scores, and all scores.

inputs (one of frames / views; max_batch_size > 0, so each has a leading batch dimension B):
  frames     uint8 [B, N, H, W, 3] RGB: the decoded frames of a clip; sampled (T frames x clips) and
             preprocessed (resize, crops, normalisation) with the bundle's settings, as apclip-infer does
  views      float32 [B, Nv, 3, R, R]: already preprocessed views, flattened (V*T frames)
  label_set  string [B, 1] (optional): an id from apclip_labels; default: the bundle's labels
outputs: labels string [B, k], scores float32 [B, k], all_scores float32 [B, K]

The dynamic batcher hands this model several requests at once: all their frames go through the
vision encoder in one call, then each clip is scored with MAKA against its label set.
"""

import json
import os

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from apclip.scale.triton_models import _serve_common as serve_common  # noqa: E402


class RequestError(Exception):
    pass


class TritonPythonModel:
    def initialize(self, args):
        from apclip.engine.recognizer import Recognizer

        self.params = serve_common.parameters(args)
        threads = int(self.params.get("threads") or 0) or None
        self.rec = Recognizer.from_bundle(self.params["bundle"], self.params.get("backend", "auto"),
                                          scorer=self.params.get("scorer", "auto"), threads=threads,
                                          topk=int(self.params.get("topk", "5")))
        self.bank = serve_common.load_bank(self.params)
        self.spec = self.rec.manifest.preprocessing
        self.resolution = self.spec.resolution
        self.label_sets = {}  # id -> ClassMatrix (this instance's cache; the lists live on disk)

    def _classes(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, "label_set")
        ids = set(serve_common.decode_strings(tensor.as_numpy())) if tensor is not None else set()
        if len(ids) > 1:
            raise RequestError("one request takes one label_set (send other sets in other requests)")
        if not ids or ids == {""}:
            return self.rec.classes
        (set_id,) = ids
        if set_id not in self.label_sets:
            from apclip.engine.scoring.vocabulary import resolve_classes

            path = serve_common.label_set_path(self.params["state_dir"], set_id)
            if not set_id.isalnum() or not os.path.exists(path):
                raise RequestError(f"unknown label_set {set_id!r}: register the labels with apclip_labels first")
            with open(path, encoding="utf-8") as f:
                labels = json.load(f)
            self.label_sets[set_id], _ = resolve_classes(self.rec.manifest, labels, self.bank, self.rec.text,
                                                         use_cache=True)
        return self.label_sets[set_id]

    def _views(self, request):
        """The request's clips -> list of [Nv, 3, R, R] float32 (one per batch item)."""
        from apclip.engine.video.clips import load_clip
        from apclip.engine.video.preprocess import flatten_views

        from apclip.scale.array_source import ArraySource

        frames = pb_utils.get_input_tensor_by_name(request, "frames")
        views = pb_utils.get_input_tensor_by_name(request, "views")
        if (frames is None) == (views is None):
            raise RequestError("send exactly one of the inputs frames (uint8 [B, N, H, W, 3]) and views")
        if views is not None:
            array = views.as_numpy()  # [B, Nv, 3, R, R]
            if array.shape[1] == 0:
                raise RequestError("views is empty: send at least one preprocessed frame")
            if not np.isfinite(array).all():
                raise RequestError("views has NaN or infinite values: send finite preprocessed pixels")
            return [np.ascontiguousarray(clip, dtype=np.float32) for clip in array]
        array = frames.as_numpy()  # [B, N, H, W, 3]
        if 0 in array.shape:
            raise RequestError(f"frames is empty ({list(array.shape)}): send at least one frame of at least 1x1 pixels")
        out = []
        for clip in array:
            loaded = load_clip(ArraySource(clip, rgb=True), self.spec)
            out.append(flatten_views(loaded.views))  # [V, T, 3, R, R] -> [V*T, 3, R, R]
        return out

    def execute(self, requests):
        from apclip.errors import ApclipError

        from apclip.engine.runners.encoders import encode_in_batches

        parsed = []  # per request: (clips, classes) or an error message
        for request in requests:
            try:
                parsed.append((self._views(request), self._classes(request)))
            except (RequestError, ApclipError, ValueError) as exc:
                parsed.append(" ".join(str(exc).split()))
        clips = [clip for item in parsed if not isinstance(item, str) for clip in item[0]]
        if clips:
            # Every frame of every clip of every request in one encoder pass: [sum Nv, 3, R, R] -> [sum Nv, E]
            embeddings = encode_in_batches(self.rec.vision, np.concatenate(clips))
        offset = 0
        responses = []
        for item in parsed:
            if isinstance(item, str):
                responses.append(serve_common.request_error(pb_utils, item))
                continue
            request_clips, classes = item
            labels, top, full = [], [], []
            for clip in request_clips:
                emb = embeddings[offset:offset + len(clip)]  # [Nv, E]
                offset += len(clip)
                scores = self.rec.scorer(emb[None], classes)[0]  # [K]
                if not np.isfinite(scores).all():  # never ranked: NaN sorts anywhere
                    continue
                order = np.argsort(-scores, kind="stable")[:self.rec.topk]
                labels.append([classes.labels[k].encode("utf-8") for k in order])
                top.append(scores[order])
                full.append(scores)
            if len(full) < len(request_clips):
                responses.append(serve_common.request_error(
                    pb_utils, "the model gave NaN or infinite scores for this clip; nothing was scored"))
                continue
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("labels", np.array(labels, dtype=np.object_)),
                pb_utils.Tensor("scores", np.array(top, dtype=np.float32)),
                pb_utils.Tensor("all_scores", np.array(full, dtype=np.float32)),
            ]))
        return responses
