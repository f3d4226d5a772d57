"""Labelled video lists and the datasets that decode them in DataLoader workers.

List files are ViFi-CLIP / mmaction2's: one `relative/path.mp4 LABEL_ID` per line (the path may hold
spaces: the label is the last field), relative to a root folder; ids index the labels file. Blank
lines and `#` comments are ignored.

A video that cannot be decoded (missing, empty, corrupt, no frames) never stops a run: the dataset
returns None for it, `collate_clips` drops it from the batch and counts it, and the training loop
and apclip-eval report how many were skipped and which.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from apclip.errors import ApclipError


class DataError(ApclipError):
    """A list file, class split or shot count that cannot be used."""


@dataclass(frozen=True)
class VideoItem:
    path: Path  # root / relative path
    label: int  # index into the labels
    line: int  # line number in the list file (1-based), for messages


def parse_video_list(text: str, root: str | os.PathLike, num_classes: int, source: str = "<list>") -> list[VideoItem]:
    root = Path(root)
    items = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        path, _, label = line.rpartition(" ")
        if not path or not label.lstrip("-").isdigit():
            raise DataError(f"list file {source} line {number}: {line[:80]!r} is not `relative/path LABEL_ID`")
        label_id = int(label)
        if not 0 <= label_id < num_classes:
            raise DataError(f"list file {source} line {number}: label id {label_id} is outside the "
                            f"{num_classes} labels of the labels file")
        items.append(VideoItem(root / path.strip(), label_id, number))
    if not items:
        raise DataError(f"list file {source} lists no videos (one `relative/path LABEL_ID` per line)")
    return items


def read_video_list(path: str | os.PathLike, root: str | os.PathLike, num_classes: int) -> list[VideoItem]:
    from apclip.fileio import read_user_text

    path = Path(path)
    text = read_user_text(path, f"list file {path}", DataError)
    return parse_video_list(text, root, num_classes, str(path))


PREFLIGHT_DECODES = 3  # videos decoded before any work: enough to catch a wrong --root or codec, in a second


def check_videos(items: Sequence[VideoItem], list_file: str | os.PathLike, root: str | os.PathLike,
                 decode: int = PREFLIGHT_DECODES) -> None:
    """Before any work: every listed path exists under `root`, and at least one of the first `decode`
    videos decodes a frame. A wrong --root otherwise "trains" on nothing (DataError naming the first)."""
    missing = [item for item in items if not item.path.exists()]
    if missing:
        first = missing[0]
        raise DataError(f"{len(missing)} of {len(items)} videos of {list_file} do not exist under --root {root} "
                        f"(first: line {first.line}, {first.path}); check --root, the folder the list's paths are "
                        f"relative to")
    from apclip.engine.video.sources import open_source

    errors = []
    for item in items[:decode]:
        try:
            with open_source(str(item.path)) as src:
                if next(iter(src.frames(limit=1)), None) is not None:
                    return
            errors.append(f"{item.path}: no frames")
        except _bad_video_errors() as exc:
            errors.append(" ".join(str(exc).split()) or f"{item.path}: {type(exc).__name__}")
    raise DataError(f"none of the first {len(errors)} videos of {list_file} decodes ({errors[0]}); check the "
                    f"files and --root {root}")


def read_class_split(path: str | os.PathLike, labels: Sequence[str]) -> list[int]:
    """Class ids of a base or novel split file: one label name or id per line, in the labels' order."""
    from apclip.labels import read_labels

    entries = read_labels(path)
    index = {label: i for i, label in enumerate(labels)}
    ids = []
    for entry in entries:
        if entry in index:
            ids.append(index[entry])
        elif entry.isdigit() and int(entry) < len(labels):
            ids.append(int(entry))
        else:
            raise DataError(f"class split {path}: {entry!r} is neither a label of the labels file nor a label id")
    if len(set(ids)) != len(ids):
        raise DataError(f"class split {path} names a class twice")
    return sorted(ids)


def few_shot_subset(items: Sequence[VideoItem], shots: int, seed: int) -> list[VideoItem]:
    """K videos per class drawn without replacement by `seed` (list order kept); classes with fewer keep all."""
    if shots < 1:
        raise DataError(f"--shots {shots}: must be >= 1")
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        by_class.setdefault(item.label, []).append(i)
    keep = set()
    for label in sorted(by_class):
        members = by_class[label]
        chosen = rng.choice(len(members), size=min(shots, len(members)), replace=False)
        keep.update(members[j] for j in chosen)
    return [item for i, item in enumerate(items) if i in keep]


def restrict_classes(items: Sequence[VideoItem], class_ids: Sequence[int]) -> list[VideoItem]:
    """The items of the given classes, with labels renumbered 0..len(class_ids)-1 in class_ids order."""
    remap = {c: i for i, c in enumerate(class_ids)}
    return [VideoItem(item.path, remap[item.label], item.line) for item in items if item.label in remap]


def decode_train_frames(path: Path, frames: int, rng: np.random.Generator,
                        resize: Callable[[np.ndarray], np.ndarray]) -> list[np.ndarray]:
    """T frames at ViFi-CLIP's train indices (one random frame per segment), each resized as it decodes.

    Uses the engine's source and sampler, so corrupt or truncated files behave as in inference:
    indices are redrawn for the frames that really decoded. Raises SourceError / NoFramesError.
    """
    from apclip.engine.video.errors import NoFramesError
    from apclip.engine.video.sampling import nearest_kept, sample_train_indices
    from apclip.engine.video.sources import open_source

    with open_source(path) as src:
        count = src.info.frame_count
        planned = sample_train_indices(count, frames, 1, rng=rng)[0] if count else None
        wanted = set(planned.tolist()) if planned is not None else None
        kept: dict[int, np.ndarray] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lost frames are handled below; one warning per worker is noise
            for frame in src.frames(lambda i, _t: wanted is None or i in wanted):
                kept[frame.index] = resize(frame.image)
        if not kept:
            raise NoFramesError(f"no decodable frames in {path}")
        if planned is None or not wanted.issubset(kept):
            # Unknown count, or the file ended early: draw for what decoded, served by the nearest kept frames.
            planned = nearest_kept(sample_train_indices(src.decoded_frames, frames, 1, rng=rng)[0], kept)
        return [kept[int(i)] for i in planned]


def _bad_video_errors() -> tuple[type[BaseException], ...]:
    import cv2

    from apclip.engine.video.errors import SourceError

    return (SourceError, cv2.error, ValueError, OSError)


class TrainClips:
    """torch Dataset of augmented training clips, indexed by (epoch, index) pairs from `EpochSampler`.

    The clip of (epoch, i) is a pure function of (seed, epoch, i): its frames and augmentation come
    from np.random.default_rng([seed, epoch, i]), whichever worker makes it.
    """

    def __init__(self, items: Sequence[VideoItem], frames: int, augment, seed: int) -> None:
        self.items = list(items)
        self.frames = frames
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any] | None:
        import torch

        epoch, index = key
        item = self.items[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        try:
            frames = decode_train_frames(item.path, self.frames, rng, self.augment.resize)
        except _bad_video_errors():
            return {"bad": index}
        clip = self.augment(frames, rng)  # [T, 3, R, R]
        return {"video": torch.from_numpy(clip), "label": item.label, "index": index}


class EvalClips:
    """torch Dataset of test-mode clips through the engine's load_clip: views [V, T, 3, R, R]."""

    def __init__(self, items: Sequence[VideoItem], preprocessing) -> None:
        self.items = list(items)
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        import torch

        from apclip.engine.video.clips import load_clip

        item = self.items[index]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clip = load_clip(item.path, self.preprocessing)
        except _bad_video_errors():
            return {"bad": index}
        return {"video": torch.from_numpy(clip.views), "label": item.label, "index": index}


def single_threaded_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: one OpenCV thread per worker (the workers are the parallelism)."""
    import cv2

    cv2.setNumThreads(1)


def collate_clips(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack the good samples; the indices of bad videos travel in `bad` (counted by the caller)."""
    import torch

    good = [s for s in samples if "bad" not in s]
    bad = [s["bad"] for s in samples if "bad" in s]
    if not good:
        return {"video": None, "label": None, "index": [], "bad": bad}
    return {"video": torch.stack([s["video"] for s in good]),
            "label": torch.tensor([s["label"] for s in good], dtype=torch.long),
            "index": [s["index"] for s in good], "bad": bad}


class EpochSampler:
    """Yields (epoch, index) for the batches of one epoch: a shuffled order drawn from (seed, epoch) by
    torch's DistributedSampler (one replica without torchrun), minus the first `skip` samples when a run
    resumes inside an epoch. Call set_epoch(epoch, skip) before each epoch."""

    def __init__(self, size: int, *, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        from torch.utils.data import DistributedSampler

        self._sampler = DistributedSampler(range(size), num_replicas=num_replicas, rank=rank, shuffle=True,
                                           seed=seed, drop_last=True)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip
        self._sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = list(self._sampler)
        return iter([(self.epoch, i) for i in order[self.skip:]])

    def __len__(self) -> int:
        return len(self._sampler) - self.skip
