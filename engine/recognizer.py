"""The engine: a bundle, a vision runner, a scorer and a class matrix -> predictions for videos.

    rec = Recognizer.from_bundle("bundle/", backend="auto", labels=["surfing", "juggling"])
    pred = rec.predict("video.mp4")              # clip mode: the paper's multi-view inference
    for window in rec.stream("rtsp://..."):      # stream mode: one prediction per sliding window
        print(window.start, window.top[0].label)

Clip mode samples T frames x N temporal clips x C crops (the bundle's numbers), encodes all V*T
frames and scores them with the bundle's protocol (MAKA over all frames pooled, or ViFi-CLIP's
per-view softmax summed over views). Stream mode samples each window with one temporal clip
and the bundle's crops, on a lattice shared by overlapping windows: every sampled frame is encoded
once and windows are scored from a ring of embeddings (engine/stream/). Decoding and preprocessing
run in producer threads, so the encoder does not wait for them.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from apclip.bundle import Manifest, PROMPTS_FILE, read_manifest
from apclip.class_matrix import ClassMatrix, load_prompt_texts
from apclip.errors import ApclipError
from apclip.scoring import class_probabilities

from apclip.engine.video.clips import Clip, load_clip
from apclip.engine.predictions import Explanation, FrameMatch, LabelScore, Prediction, ViewMatch, WindowPrediction
from apclip.engine.video.preprocess import flatten_views
from apclip.engine.runners.encoders import EncoderRunner, encode_in_batches
from apclip.engine.scoring.scorers import Scorer, make_scorer
from apclip.engine.scoring.vocabulary import resolve_classes

Log = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


class Recognizer:
    def __init__(self, manifest: Manifest, vision: EncoderRunner, text: EncoderRunner, classes: ClassMatrix,
                 scorer: Scorer, *, topk: int = 5, workers: int = 1):
        self.manifest = manifest
        self.vision = vision
        self.text = text
        self.classes = classes
        self.scorer = scorer
        self.topk = topk
        self.workers = workers
        self.spec = manifest.preprocessing
        self.scoring = manifest.scoring
        # How the class matrix was made: {"reused": bundle rows, "encoded": new labels run through the
        # text encoder, "cached": new labels read from the on-disk cache} (set by from_bundle).
        self.class_stats: dict[str, int] = {"reused": classes.num_classes, "encoded": 0, "cached": 0}

    @classmethod
    def from_bundle(cls, path: str | os.PathLike, backend: str = "auto", labels: Sequence[str] | None = None, *,
                    prompts: str | os.PathLike | None = None, scorer: str = "auto", threads: int | None = None,
                    batch_size: int = 32, ckpt: str | os.PathLike | None = None, base: str | None = None,
                    topk: int = 5, use_cache: bool = True, template: str | None = None, precision: str = "auto",
                    log: Log = _quiet, verbose: bool = False) -> "Recognizer":
        """Load a bundle (every file checked against its sha256) and pick the runners and the scorer.

        backend, precision: a row of the backend table (engine/runners/table.py; torch and torch-cuda need
        `ckpt`, the exported checkpoint). backend auto takes the first row that runs here (fastest first)
        and logs what it chose and why; precision auto is the backend's default (fp16 on trt and
        torch-cuda, fp32 elsewhere). The precision asked for is the one run; a pair the table does not
        have is a one-line UsageError.
        labels: the classes to rank (default: the bundle's); labels not in the bundle are encoded with
        text.onnx from `prompts` (a prompt bank) or the template, and cached on disk unless use_cache
        is False. scorer: auto | numpy | onnx | triton. template: text of new labels without bank
        entries (default: the bundle's). log: receives one-line progress messages; verbose: also why
        backend auto passed over the faster backends.
        """
        from apclip.errors import ApclipError
        from apclip.scoring_protocol import check_template

        manifest = read_manifest(path)
        template = template or manifest.scoring.template
        try:
            check_template(template)
        except ValueError as exc:
            raise ApclipError(f"--template: {exc}") from None
        from apclip.engine.runners.table import Context, choose

        context = Context(manifest, ckpt, base, threads, batch_size)
        row, (vision, text) = choose(backend, precision, context, log=log, detail=log if verbose else None)
        if backend != "auto":
            log(f"backend {row.key} -> {vision.name}")
        bank = None
        if prompts is not None and manifest.scoring.protocol == "vificlip":
            log(f"note: bundle {path} scores with the vificlip protocol (one prompt per class): {prompts} is not "
                f"used; new labels use the template {template!r}")
        elif prompts is not None:
            from apclip.prompt_bank import load_prompt_bank

            bank = load_prompt_bank(prompts)
            exported = manifest.raw.get("prompt_bank_sha256")
            if bank.sha256 != exported and set(bank.labels) & set(manifest.labels):
                log(f"note: {prompts} differs from the prompt bank the bundle was exported with; labels already "
                    f"in the bundle keep their exported prompts (re-export to use the new ones)")
        classes, stats = resolve_classes(manifest, labels, bank, text, use_cache=use_cache, template=template,
                                         log=log)
        if classes.prompt_texts is None:
            classes.prompt_texts = _prompt_texts(manifest, classes, bank, template)
        rec = cls(manifest, vision, text, classes, make_scorer(scorer, manifest), topk=topk,
                  workers=1 if (os.cpu_count() or 1) > 1 else 0)
        rec.class_stats = stats
        return rec

    @property
    def backend(self) -> str:
        return self.vision.name

    @property
    def labels(self) -> list[str]:
        return self.classes.labels

    # -- one clip -> scores -------------------------------------------------------------------
    def encode_clip(self, clip: Clip) -> np.ndarray:
        """[V, T, 3, R, R] views -> [V*T, E] frame embeddings (normalised; raw features for vificlip bundles)."""
        return encode_in_batches(self.vision, flatten_views(clip.views))  # [V*T, 3, R, R] -> [V*T, E]

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """[Nv, E] -> [K] scores of all classes by the bundle's protocol (maka: all frames pooled into one set).
        NaN or infinite scores (a broken model or class matrix) are an error, never ranked: NaN sorts anywhere."""
        scores = self.scorer(embeddings[None], self.classes)[0]
        if not np.isfinite(scores).all():
            raise ApclipError(f"the model of bundle {self.manifest.path} gave NaN or infinite scores; nothing was "
                              f"scored (re-export the bundle)")
        return scores

    def _fill(self, pred: Prediction, clip: Clip, timings: dict[str, float], topk: int, explain: bool,
              on_stage: Callable[[str], None] | None = None) -> None:
        if on_stage:
            on_stage("encode")
        t = time.perf_counter()
        emb = self.encode_clip(clip)
        timings["encode"] = time.perf_counter() - t
        if on_stage:
            on_stage("score")
        self.rank(pred, emb, clip, timings, topk, explain)

    def rank(self, pred: Prediction, emb: np.ndarray, clip: Clip, timings: dict[str, float], topk: int,
             explain: bool) -> None:
        """Fill `pred` from a clip's frame embeddings [V*T, E] (view-major): scores, top-k, explanations."""
        t = time.perf_counter()
        scores = self.score(emb)
        timings["score"] = time.perf_counter() - t
        order = np.argsort(-scores, kind="stable")[:topk]
        probs = class_probabilities(scores, self.scoring.protocol, self.scoring.logit_scale)
        pred.top = [LabelScore(self.labels[k], float(scores[k]), float(probs[k])) for k in order]
        pred.scores = scores
        pred.backend, pred.scorer, pred.protocol = self.backend, self.scorer.name, self.scoring.protocol
        pred.frames, pred.approximate, pred.timings = len(emb), bool(clip.approximate), timings
        # [V, T] indices: crops repeat a clip's frames, so count distinct ones among one crop's rows
        pred.sampled_frames = int(clip.frame_indices[::clip.spec.crops].size)
        pred.distinct_frames = int(np.unique(clip.frame_indices).size)
        if explain:
            pred.explanations = self.explain(emb, clip, order)

    def explain(self, emb: np.ndarray, clip: Clip, classes: Iterable[int]) -> list[Explanation]:
        """For each class, the prompt every frame matched best, with its similarity (maka), or every
        view's similarity and probability (vificlip)."""
        from apclip.scoring import explain as explain_scores

        if self.scoring.protocol == "vificlip":
            return self._explain_views(emb, clip, list(classes))
        if self.scoring.protocol == "xclip":  # rows are a video embedding + visual tokens, not frames to match
            scores = self.score(emb)
            return [Explanation(self.labels[k], float(scores[k]), []) for k in classes]
        if not self.manifest.vision_normalized:
            emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
        frames = clip.frame_indices.reshape(-1)  # [V, T] -> [V*T]
        times = clip.timestamps.reshape(-1)
        t = clip.frame_indices.shape[1]
        # The matches are MAKA's; the score shown is the bundle's protocol's (ensemble bundles differ).
        protocol_scores = self.score(emb) if self.scoring.protocol != "maka" else None
        out = []
        for ex in explain_scores(emb, self.classes.embeddings, self.classes.counts, list(classes)):
            texts = self.classes.prompt_texts[ex.class_index] if self.classes.prompt_texts else None
            matches = [FrameMatch(i // t, int(frames[i]), float(times[i]),
                                  texts[p] if texts else f"prompt {p}", sim)
                       for i, (p, sim) in enumerate(zip(ex.best_prompt_per_frame, ex.frame_similarity))]
            score = ex.score if protocol_scores is None else float(protocol_scores[ex.class_index])
            out.append(Explanation(self.labels[ex.class_index], score, matches))
        return out

    def _explain_views(self, emb: np.ndarray, clip: Clip, classes: list[int]) -> list[Explanation]:
        from apclip.scoring import explain_vificlip

        text = self.classes.embeddings[:, 0]  # [K, P, E] -> [K, E]: one prompt per class
        per_class = explain_vificlip(emb, text, clip.frame_indices.shape[1], float(self.scoring.logit_scale), classes)
        out = []
        for k, views in zip(classes, per_class):
            prompt = self.classes.prompt_texts[k][0] if self.classes.prompt_texts else "prompt 0"
            matches = [ViewMatch(v.view, int(clip.frame_indices[v.view, 0]), int(clip.frame_indices[v.view, -1]),
                                 float(clip.timestamps[v.view, 0]), float(clip.timestamps[v.view, -1]), prompt,
                                 v.cosine, v.probability) for v in views]
            out.append(Explanation(self.labels[k], float(sum(v.probability for v in views)), [], matches))
        return out

    # -- whole video ----------------------------------------------------------------------------
    def predict(self, source, *, topk: int | None = None, explain: bool = False,
                max_frames: int | None = None, on_stage: Callable[[str], None] | None = None,
                fps: float | None = None) -> Prediction:
        """Clip mode: one multi-view prediction for the whole video.

        on_stage: called with "decode", "encode" and "score" as each stage starts (progress display).
        fps: frame rate of an image-folder source (default 30)."""
        if on_stage:
            on_stage("decode")
        t = time.perf_counter()
        clip = load_clip(source, self.spec, max_frames=max_frames, workers=self.workers, fps=fps)
        timings = {"decode+preprocess": time.perf_counter() - t}
        pred = Prediction(source=clip.source.name, top=[], scores=np.zeros(0))
        self._fill(pred, clip, timings, topk or self.topk, explain, on_stage)
        return pred

    def predict_many(self, sources: Iterable, *, topk: int | None = None, explain: bool = False,
                     fps: float | None = None,
                     on_error: Callable[[object, Exception], None] | None = None) -> Iterator[Prediction]:
        """Clip mode over many videos; the next video decodes while the current one encodes.

        on_error(source, exc): called, in source order, for a source that cannot be decoded
        (ApclipError / OSError), which is then skipped; None: the error ends the iteration."""
        def clips():
            for source in sources:
                try:
                    yield load_clip(source, self.spec, workers=self.workers, fps=fps)
                except (ApclipError, OSError) as exc:
                    if on_error is None:
                        raise
                    yield _Failed(source, exc)

        for clip, decode_s in _prefetch(clips):
            if isinstance(clip, _Failed):
                on_error(clip.source, clip.error)
                continue
            pred = Prediction(source=clip.source.name, top=[], scores=np.zeros(0))
            self._fill(pred, clip, {"decode+preprocess": decode_s}, topk or self.topk, explain)
            yield pred

    # -- stream -----------------------------------------------------------------------------------
    def stream(self, source, *, window: float = 2.0, stride: float = 1.0, unit: str = "seconds",
               topk: int | None = None, explain: bool = False, fps: float | None = None) -> Iterator[WindowPrediction]:
        """Stream mode: a prediction per sliding window, yielded as soon as the window completes.

        Frames are sampled on the stream lattice (engine/video/lattice.py) and each is encoded once; a
        window is scored from the embeddings of its frames. Errors of the source are raised here."""
        from apclip.engine.stream.engine import MultiStream, StreamSettings
        from apclip.engine.stream.feeds import FeedOptions

        settings = StreamSettings(window, stride, unit, feed=FeedOptions(fps=fps))
        for pred in MultiStream(self, [source], settings, topk=topk, explain=explain, raise_errors=True):
            pred.stream = None  # one source: no stream number in its records
            yield pred

    def stream_many(self, sources: Sequence, settings=None, *, topk: int | None = None, explain: bool = False,
                    on_event=None):
        """Many sources in one batched loop (engine/stream/engine.py's MultiStream; iterate it for windows,
        read its .stats for windows, drops and lag per source)."""
        from apclip.engine.stream.engine import MultiStream

        return MultiStream(self, sources, settings, topk=topk, explain=explain, on_event=on_event)


def _prompt_texts(manifest: Manifest, classes: ClassMatrix, bank, template: str) -> list[list[str]] | None:
    """Row texts for explanations: the bundle's prompts.json for its labels, the bank or template for new ones."""
    if not manifest.has(PROMPTS_FILE):
        return None
    from apclip.class_matrix import class_prompts

    known = [label for label in classes.labels if label in manifest.labels]
    stored = load_prompt_texts(manifest.file(PROMPTS_FILE), known)
    if stored is None:
        return None
    texts = dict(zip(known, stored))
    new = [label for label in classes.labels if label not in texts]
    texts.update(zip(new, class_prompts(new, bank, template)[0]))
    return [texts[label] for label in classes.labels]


_DONE = object()


class _Failed(NamedTuple):
    """A source predict_many could not decode, passed from the producer thread to the consumer."""

    source: object
    error: Exception


def _prefetch(make: Callable[[], Iterator[Clip]], depth: int = 1) -> Iterator[tuple[Clip, float]]:
    """Run a clip iterator in a producer thread, `depth` clips ahead; re-raise its errors here.

    Yields (clip, seconds the producer spent making it)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            iterator = make()
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    clip = next(iterator)
                except StopIteration:
                    break
                _put(q, (clip, time.perf_counter() - t), stop)
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        except BaseException as exc:  # handed to the consumer, which raises it
            _put(q, exc, stop)
        _put(q, _DONE, stop)

    thread = threading.Thread(target=produce, name="apclip-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def _put(q: queue.Queue, item: object, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue
