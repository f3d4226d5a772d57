"""apclip-eval's metrics on a hand-checked case, its scoring through a recognizer, and its errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from apclip.train.data import VideoItem
from apclip.train.eval import Scored, build_report, compute_metrics, harmonic_mean, score_with_recognizer

LABELS = ["a", "b", "c", "d", "e", "f", "g"]
# 6 videos over 7 classes; rows are scores in label order. By hand (ranks best first):
#   v0 target a: a > b > ...                          top-1 yes
#   v1 target a: b > c > d > e > f > a > g            top-1 no, top-5 no (a is 6th)
#   v2 target b: b best                               top-1 yes
#   v3 target c: a > c > ...                          top-1 no, top-5 yes
#   v4 target e: e best                               top-1 yes
#   v5 target f: g > f > ...                          top-1 no, top-5 yes
SCORES = np.array([
    [0.9, 0.8, 0.1, 0.1, 0.1, 0.1, 0.0],
    [0.2, 0.9, 0.8, 0.7, 0.6, 0.5, 0.1],
    [0.1, 0.9, 0.2, 0.3, 0.0, 0.0, 0.0],
    [0.9, 0.8, 0.0, 0.1, 0.0, 0.0, 0.0],
    [0.0, 0.1, 0.2, 0.3, 0.9, 0.4, 0.5],
    [0.1, 0.0, 0.0, 0.0, 0.2, 0.8, 0.9],
])
SCORES[3, 2] = 0.85  # v3: a 0.9 > c 0.85 > b 0.8
TARGETS = [0, 0, 1, 2, 4, 5]


def _scored(rows=SCORES, targets=TARGETS):
    return [Scored(VideoItem(Path(f"v{i}.avi"), t, i + 1), row.astype(np.float32)) for i, (row, t) in
            enumerate(zip(rows, targets))]


def test_hand_checked_top1_top5_mean_class():
    report = build_report(_scored(), LABELS)
    assert report.top1 == pytest.approx(100 * 3 / 6)
    assert report.top5 == pytest.approx(100 * 5 / 6)
    # per class: a 1/2, b 1/1, c 0/1, e 1/1, f 0/1 -> mean of 0.5, 1, 0, 1, 0 = 0.5
    assert report.mean_class_accuracy == pytest.approx(50.0)
    assert report.confusion[0].tolist() == [1, 1, 0, 0, 0, 0, 0]  # a -> a once, a -> b once
    assert report.confusion[5, 6] == 1 and report.confusion.sum() == 6
    assert [p["predicted"] for p in report.predictions] == ["a", "b", "b", "a", "e", "g"]
    assert report.predictions[1]["top"][0] == {"label": "b", "score": pytest.approx(0.9)}


def test_hand_checked_base_novel_harmonic_mean():
    # base {a, b, c}: v0 a -> a, v1 a -> b, v2 b -> b, v3 c -> a: 2/4 = 50%
    # novel {d, e, f} (g in neither): v4 e -> e, v5 f -> f (g no longer competes): 2/2 = 100%
    report = build_report(_scored(), LABELS, base_classes=[0, 1, 2], novel_classes=[3, 4, 5])
    assert report.base == pytest.approx(50.0)
    assert report.novel == pytest.approx(100.0)
    assert report.harmonic_mean == pytest.approx(2 * 50 * 100 / 150)
    assert harmonic_mean(0.0, 0.0) == 0.0


def test_ties_rank_in_label_order_and_few_classes():
    scores = np.array([[0.5, 0.5, 0.1]])
    m = compute_metrics(scores, np.array([1]), 3)
    assert m["top1"] == 0.0 and m["top5"] == 100.0  # a wins the tie; top-5 is top-3 with 3 classes


class _FakeRecognizer:
    """predict() gives fixed scores per file name; one file fails like an undecodable video."""

    def __init__(self, table):
        self.table = table

    def predict(self, source, topk=1):
        from apclip.engine.video.errors import NoFramesError

        name = Path(source).name
        if name not in self.table:
            raise NoFramesError(f"no decodable frames in {source}")
        return type("P", (), {"scores": self.table[name]})()


def test_score_with_recognizer_skips_and_counts_bad_videos():
    items = [VideoItem(Path(f"v{i}.avi"), t, i + 1) for i, t in enumerate(TARGETS)]
    items.append(VideoItem(Path("broken.avi"), 3, 7))
    rec = _FakeRecognizer({f"v{i}.avi": row for i, row in enumerate(SCORES)})
    scored = list(score_with_recognizer(rec, items))
    assert [s.scores is None for s in scored] == [False] * 6 + [True]
    assert "no decodable frames" in scored[-1].error
    report = build_report(scored, LABELS)
    assert report.skipped == ["broken.avi"] and report.evaluated == 6 and report.videos == 7
    assert report.top1 == pytest.approx(50.0)  # the bad video is not counted as wrong
    doc = report.to_dict()
    assert doc["skipped"] == 1 and len(doc["predictions"]) == 6 and json.dumps(doc)


def test_all_videos_bad_is_an_error():
    from apclip.train.data import DataError

    with pytest.raises(DataError, match="none of the 2 listed videos"):
        build_report([Scored(VideoItem(Path("x.avi"), 0, 1), None), Scored(VideoItem(Path("y.avi"), 0, 2), None)],
                     LABELS)


def test_list_files_and_class_splits(tmp_path):
    from apclip.train.data import (DataError, few_shot_subset, parse_video_list, read_class_split,
                                   restrict_classes)

    items = parse_video_list("# comment\nfolder with space/x.mp4 1\n\ny.mp4 0\nz.mp4 1\nw.mp4 1\n", tmp_path, 2)
    assert [(i.path.name, i.label, i.line) for i in items] == [("x.mp4", 1, 2), ("y.mp4", 0, 4), ("z.mp4", 1, 5),
                                                              ("w.mp4", 1, 6)]
    assert items[0].path == tmp_path / "folder with space" / "x.mp4"
    with pytest.raises(DataError, match="line 1"):
        parse_video_list("justapath\n", tmp_path, 2)
    shots = few_shot_subset(items, 2, seed=3)
    assert sorted(i.label for i in shots) == [0, 1, 1] and few_shot_subset(items, 2, seed=3) == shots
    split = tmp_path / "novel.txt"
    split.write_text("b\n0\n")
    assert read_class_split(split, ["a", "b"]) == [0, 1]
    split.write_text("zebra\n")
    with pytest.raises(DataError, match="zebra"):
        read_class_split(split, ["a", "b"])
    assert [(i.path.name, i.label) for i in restrict_classes(items, [1])] == [("x.mp4", 0), ("z.mp4", 0), ("w.mp4", 0)]


def test_cli_needs_a_model(capsys):
    from apclip.train.eval_cli import main

    assert main(["--list", "x.txt", "--labels", "l.txt"]) == 2
    assert capsys.readouterr().err.strip() == "apclip-eval: error: pass --bundle DIR or --ckpt CHECKPOINT"


def test_cli_missing_list_is_one_line(tmp_path, capsys):
    from apclip.train.eval_cli import main

    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    assert main(["--ckpt", "x.pt", "--list", str(tmp_path / "none.txt"), "--labels", str(labels)]) == 1
    assert capsys.readouterr().err.strip() == f"apclip-eval: error: list file {tmp_path / 'none.txt'} does not exist"
