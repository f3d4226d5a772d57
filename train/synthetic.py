"""A generated action dataset a tiny model learns in about a minute on 2 CPU cores (tests, demo).

Each class is a coloured shape drifting over a textured background in a random direction, at a
random start position and speed; every video has its own background texture. AP-CLIP scores a video
as a *set* of frame embeddings (MAKA, order-invariant), and so does mean pooling: neither can tell a
left drift from a right one, so classes differ in what every frame shows (the shape and its colour)
and motion is what varies within a class.

    python -m apclip.train.synthetic --out data/          # videos/, labels.txt, bank.json, train/val/test.txt

List files follow ViFi-CLIP / mmaction2: `relative/path.avi LABEL_ID` per line, ids into labels.txt.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from apclip.fileio import atomic_write

# (label, BGR colour, shape); labels read like actions so the prompts look like AP-CLIP's.
CLASSES = (
    ("rolling red ball", (40, 40, 230), "circle"),
    ("sliding green box", (40, 200, 40), "square"),
    ("gliding blue kite", (230, 90, 30), "triangle"),
    ("swinging yellow bar", (30, 220, 230), "bar"),
)
# Hand-written stand-ins for LLM descriptions (several per class, so prompt subsets matter).
DESCRIPTIONS = {
    "rolling red ball": ["A round red object moves steadily.", "The ball is the only red thing in view.",
                         "A circle travels across a grey textured floor."],
    "sliding green box": ["A green square block slides along.", "Straight edges and right angles.",
                          "The box keeps its corners as it moves."],
    "gliding blue kite": ["A blue triangle drifts through the frame.", "Three pointed corners.",
                          "The kite moves smoothly without turning."],
    "swinging yellow bar": ["A long thin yellow bar moves sideways.", "The bar is narrow and bright.",
                            "A yellow stripe crosses the view."],
}
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SyntheticDataset:
    root: Path  # folder holding videos/ and the files below
    labels: Path  # one label per line
    bank: Path  # prompt bank with DESCRIPTIONS
    lists: dict[str, Path]  # split -> list file (relative/path LABEL_ID)


def draw_shape(image: np.ndarray, shape: str, center: tuple[float, float], size: float, color) -> None:
    x, y = int(round(center[0])), int(round(center[1]))
    r = max(2, int(round(size / 2)))
    if shape == "circle":
        cv2.circle(image, (x, y), r, color, -1, cv2.LINE_AA)
    elif shape == "square":
        cv2.rectangle(image, (x - r, y - r), (x + r, y + r), color, -1)
    elif shape == "triangle":
        points = np.array([[x, y - r], [x - r, y + r], [x + r, y + r]], dtype=np.int32)
        cv2.fillConvexPoly(image, points, color, cv2.LINE_AA)
    elif shape == "bar":
        cv2.rectangle(image, (x - max(1, r // 3), y - 2 * r), (x + max(1, r // 3), y + 2 * r), color, -1)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render_video(class_index: int, rng: np.random.Generator, *, frames: int = 16,
                 size: tuple[int, int] = (64, 48)) -> list[np.ndarray]:
    """The frames [H, W, 3] uint8 BGR of one video of class `class_index`."""
    width, height = size
    _, color, shape = CLASSES[class_index]
    # A blurred-noise background, different for every video, so the class is the shape and not the scene.
    noise = rng.integers(70, 130, size=(height // 4 + 1, width // 4 + 1, 3)).astype(np.uint8)
    background = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    shape_size = rng.uniform(0.4, 0.5) * min(width, height)
    angle = rng.uniform(0, 2 * np.pi)
    speed = rng.uniform(1.0, 2.5)  # pixels per frame
    start = np.array([rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height])
    velocity = speed * np.array([np.cos(angle), np.sin(angle)])
    jitter = rng.integers(-20, 21, size=3)  # a slightly different shade per video
    shade = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(color, jitter))
    out = []
    for t in range(frames):
        image = background.copy()
        position = start + velocity * (t - frames / 2)
        position = np.clip(position, shape_size / 2, [width - shape_size / 2, height - shape_size / 2])
        draw_shape(image, shape, (position[0], position[1]), shape_size, shade)
        out.append(image)
    return out


def write_video(path: Path, images: list[np.ndarray], fps: float = 10.0) -> Path:
    """MJPG in AVI: written and decoded by every OpenCV build, fast to decode in loader workers."""
    height, width = images[0].shape[:2]
    with atomic_write(path, mode=None, suffix=path.suffix) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
        if not writer.isOpened():
            raise RuntimeError(f"OpenCV cannot write MJPG into {path.suffix} here")
        try:
            for image in images:
                writer.write(image)
        finally:
            writer.release()
    return path


def write_synthetic_dataset(root: str | Path, *, per_class: dict[str, int] | None = None, classes: int = 4,
                            frames: int = 16, size: tuple[int, int] = (64, 48), seed: int = 0) -> SyntheticDataset:
    """Write videos/<split>/<class>_<n>.avi, labels.txt, bank.json and one list file per split.

    per_class: videos per class in each split (default train 20, val 4, test 4).
    """
    from apclip.prompt_bank import PromptBank, save_prompt_bank

    if not 1 <= classes <= len(CLASSES):
        raise ValueError(f"classes must be in [1, {len(CLASSES)}], got {classes}")
    per_class = per_class or {"train": 20, "val": 4, "test": 4}
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    labels = [CLASSES[k][0] for k in range(classes)]
    labels_path = root / "labels.txt"
    with atomic_write(labels_path) as f:
        f.write("\n".join(labels) + "\n")
    bank = PromptBank.from_dict({
        "format": "apclip-prompt-bank", "format_version": 1, "strategy": "handwritten", "model": None,
        "settings": {"note": "synthetic dataset descriptions written by hand"}, "graph": None, "review": None,
        "classes": [{"label": label, "prompts": [{"aspect": None, "attribute": None, "llm_prompt": 0, "text": t}
                                                 for t in DESCRIPTIONS[label]]} for label in labels],
    }, "synthetic bank")
    bank_path = save_prompt_bank(bank, root / "bank.json")
    lists = {}
    for split_number, split in enumerate(SPLITS):
        lines = []
        for k in range(classes):
            for n in range(per_class.get(split, 0)):
                rng = np.random.default_rng([seed, split_number, k, n])
                relative = Path("videos") / split / f"{k}_{n:03d}.avi"
                write_video(root / relative, render_video(k, rng, frames=frames, size=size))
                lines.append(f"{relative.as_posix()} {k}")
        order = np.random.default_rng([seed, split_number]).permutation(len(lines))
        lists[split] = root / f"{split}.txt"
        with atomic_write(lists[split]) as f:
            f.write("".join(lines[i] + "\n" for i in order))
    return SyntheticDataset(root, labels_path, bank_path, lists)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="synthetic", help="dataset folder")
    p.add_argument("--classes", type=int, default=len(CLASSES))
    p.add_argument("--train", type=int, default=20, help="training videos per class")
    p.add_argument("--val", type=int, default=4, help="validation videos per class")
    p.add_argument("--test", type=int, default=4, help="held-out test videos per class")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    data = write_synthetic_dataset(args.out, per_class={"train": args.train, "val": args.val, "test": args.test},
                                   classes=args.classes, frames=args.frames, seed=args.seed)
    print(json.dumps({"root": str(data.root), "labels": str(data.labels), "bank": str(data.bank),
                      **{split: str(path) for split, path in data.lists.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
