"""apclip-infer over many sources in one run, and the outputs and advisories a person reads."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import pytest

from apclip.bundle import MANIFEST, VOCAB_FILE

pytest.importorskip("onnxruntime")

from infer_cli_helpers import read_jsonl, run  # noqa: E402
from apclip.testing.videos import write_image_folder  # noqa: E402
from apclip.testing.videos import write_test_video as _write_test_video  # noqa: E402


def write_test_video(path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return _write_test_video(path, **kwargs)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("APCLIP_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture()
def collection(tmp_path) -> Path:
    """vids/a.avi, vids/bad.mp4 (not a video), vids/sub/b.avi, frames/ (12 images), extra/c.avi, list.txt."""
    root = tmp_path / "data"
    write_test_video(root / "vids" / "a.avi", frames=24, size=(64, 48), fps=12.0)
    write_test_video(root / "vids" / "sub" / "b.avi", frames=30, size=(64, 48), fps=12.0)
    (root / "vids" / "bad.mp4").write_bytes(b"\x00not a video" * 100)
    write_image_folder(root / "frames", frames=12)
    write_test_video(root / "extra" / "c.avi", frames=20, size=(64, 48), fps=10.0)
    (root / "list.txt").write_text("# mmaction2 style: path label\nextra/c.avi 3\n", encoding="utf-8")
    return root


def test_many_sources_one_bundle_load(capsys, tiny_bundle, collection, tmp_path, monkeypatch):
    from apclip.engine.recognizer import Recognizer

    loads = []
    original = Recognizer.from_bundle.__func__

    def counting(cls, *args, **kwargs):
        loads.append(args)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(Recognizer, "from_bundle", classmethod(counting))
    jsonl, table = tmp_path / "out.jsonl", tmp_path / "out.csv"
    vids, frames, listed = collection / "vids", collection / "frames", collection / "list.txt"
    code, out, err = run(capsys, vids, "--bundle", tiny_bundle, "--recursive", frames, f"@{listed}",
                         str(vids / "*.avi"), "--json", jsonl, "--csv", table, "--topk", 2)
    assert code == 1  # one source was skipped
    assert len(loads) == 1
    records = read_jsonl(jsonl)
    # Folder order (natural), then the image folder as ONE source, then the list; the glob's a.avi ran already.
    assert [r["source"] for r in records] == [str(vids / "a.avi"), str(vids / "sub" / "b.avi"), str(frames),
                                              str(collection / "extra" / "c.avi")]
    assert records[-1]["expected"] == "3" and "expected" not in records[0]
    assert all(len(r["top"]) == 2 and r["frames"] == 32 for r in records)
    assert records[2]["distinct_frames"] == 12  # 12 images, 16 positions sampled
    rows = list(csv.DictReader(table.open(encoding="utf-8")))
    assert [r["status"] for r in rows] == ["ok", "skipped", "ok", "ok", "ok"]
    assert "bad.mp4" in rows[1]["error"] and rows[0]["rank1"] == records[0]["top"][0]["label"]
    assert float(rows[0]["score1"]) == pytest.approx(records[0]["top"][0]["score"], abs=1e-6)
    skipped = [line for line in err.splitlines() if "skipped [" in line]
    assert len(skipped) == 1 and "bad.mp4" in skipped[0]
    assert "4 done, 1 skipped in" in err and "clips/s" in err
    assert len([line for line in out.splitlines() if line.startswith("[")]) == 4

    # The same video alone gives the same scores: prefetching the next source does not mix them up.
    single = tmp_path / "single.jsonl"
    assert run(capsys, vids / "sub" / "b.avi", "--bundle", tiny_bundle, "--json", single, "--topk", 2)[0] == 0
    assert read_jsonl(single)[0]["top"] == records[1]["top"]


def test_folder_without_recursive_and_strict(capsys, tiny_bundle, collection, tmp_path):
    only_sub = collection / "nested"
    write_test_video(only_sub / "deep" / "d.avi", frames=20, size=(64, 48), fps=10.0)
    code, _, err = run(capsys, only_sub, collection / "extra", "--bundle", tiny_bundle, "--quiet")
    assert code == 1 and "--recursive" in err
    jsonl = tmp_path / "strict.jsonl"
    code, out, err = run(capsys, collection / "vids", "--bundle", tiny_bundle, "--strict", "--json", jsonl)
    assert code == 1 and "--strict" in err and "bad.mp4" in err
    assert out.count("a.avi") == 1 and "b.avi" not in out  # stopped at the bad file, in order
    assert not jsonl.exists()  # a stopped run leaves no half result


def test_json_to_stdout_moves_the_table_to_stderr(capsys, tiny_bundle, collection):
    code, out, err = run(capsys, collection / "extra" / "c.avi", collection / "frames", "--bundle", tiny_bundle,
                         "--json", "-")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]  # every stdout line is JSON
    assert [Path(r["source"]).name for r in records] == ["c.avi", "frames"]
    assert "[1/2]" in err and "[2/2]" in err


def test_fps_sets_image_folder_timestamps(capsys, tiny_bundle, tmp_path):
    frames = tmp_path / "frames"
    write_image_folder(frames, frames=40)
    out = tmp_path / "pred.jsonl"
    assert run(capsys, frames, "--bundle", tiny_bundle, "--explain", "--fps", 10, "--json", out, "--topk", 1)[0] == 0
    matches = read_jsonl(out)[0]["explain"][0]["frames"]
    assert {m["frame"] for m in matches} and all(m["time"] == pytest.approx(m["frame"] / 10) for m in matches)
    assert max(m["time"] for m in matches) > 3.0  # at the default 30 fps the last frame would be at 1.3 s


def test_one_frame_video_says_so(capsys, tiny_bundle, tmp_path):
    video = write_test_video(tmp_path / "one.avi", frames=1, size=(64, 48), fps=10.0)
    code, out, _ = run(capsys, video, "--bundle", tiny_bundle)
    assert code == 0 and "(1 distinct frame sampled 16 times)" in out


def test_compact_explain(capsys, tiny_bundle, demo_assets):
    code, out, _ = run(capsys, demo_assets["video"], "--bundle", tiny_bundle, "--explain", "--topk", 5)
    assert code == 0
    why = [line for line in out.splitlines() if line.strip().startswith("why '")]
    assert len(why) == 5 and all("32 frames chose" in line for line in why)
    choice_lines = [line for line in out.splitlines() if "/32 frames  sim" in line]
    assert 5 <= len(choice_lines) <= 15  # at most 3 prompts per class, not one line per frame
    assert len(out.splitlines()) < 40


@pytest.mark.parametrize("extra, needle", [
    (["--window", "3"], "--window/--stride apply to --mode stream only"),
    (["--prompts", "{bank}"], "--prompts without --labels has no effect"),
    (["--mode", "stream", "--explain", "--window", "1"], "--explain in stream mode is written only to --json"),
    (["--mode", "stream", "--window", "0.1", "--stride", "0.1"], "fewer than the 8 it samples"),
])
def test_advisories_are_said_once(capsys, tiny_bundle, demo_assets, extra, needle):
    argv = [a.format(bank=demo_assets["bank"]) for a in extra]
    code, _, err = run(capsys, demo_assets["video"], "--bundle", tiny_bundle, *argv)
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("apclip-infer: warning:")]
    assert [needle in line for line in warnings].count(True) == 1, err


def test_out_video_says_which_codec(capsys, tiny_bundle, demo_assets, tmp_path):
    out = tmp_path / "overlay.mp4"
    code, _, err = run(capsys, demo_assets["video"], "--bundle", tiny_bundle, "--out-video", out)
    assert code == 0
    capture = cv2.VideoCapture(str(out))
    fourcc = int(capture.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode("ascii", "replace").lower()
    capture.release()
    if "note:" in err:  # this OpenCV has no H.264 encoder: the fallback is said, and used
        assert "mp4v" in err and fourcc in ("mp4v", "fmp4")  # FFmpeg reads MPEG-4 Part 2 back as FMP4
    else:
        assert "H.264 (avc1)" in err and fourcc in ("avc1", "h264")


def test_classind_labels_split_only_when_asked(capsys, tiny_bundle, demo_assets, tmp_path):
    labels = tmp_path / "classInd.txt"
    labels.write_text("1 JugglingBalls\n2 SurfingWater\n", encoding="utf-8")
    out = tmp_path / "pred.jsonl"
    assert run(capsys, demo_assets["video"], "--bundle", tiny_bundle, "--labels", labels, "--json", out)[0] == 0
    assert {t["label"] for t in read_jsonl(out)[0]["top"]} == {"JugglingBalls", "SurfingWater"}
    assert run(capsys, demo_assets["video"], "--bundle", tiny_bundle, "--labels", labels, "--split-camel-case",
               "--json", out)[0] == 0
    assert {t["label"] for t in read_jsonl(out)[0]["top"]} == {"Juggling Balls", "Surfing Water"}


def test_runtime_labels_use_the_bundled_vocabulary(capsys, tiny_bundle, demo_assets, tmp_path, monkeypatch):
    """As in `pip install "apclip[cpu]"`: no open_clip_torch, no $APCLIP_BPE_VOCAB."""
    from importlib import metadata

    from apclip import tokenizer

    def no_open_clip(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(tokenizer.metadata, "distribution", no_open_clip)
    monkeypatch.delenv("APCLIP_BPE_VOCAB", raising=False)
    tokenizer.get_tokenizer.cache_clear()
    with pytest.raises(tokenizer.VocabularyNotFound):
        tokenizer.find_vocab()  # the machine really has no vocabulary now
    labels = tmp_path / "labels.txt"
    labels.write_text("surfing water\nplaying the drums\n", encoding="utf-8")
    out = tmp_path / "pred.jsonl"
    code, _, err = run(capsys, demo_assets["video"], "--bundle", tiny_bundle, "--labels", labels, "--no-cache",
                       "--json", out)
    assert code == 0, err
    assert {t["label"] for t in read_jsonl(out)[0]["top"]} == {"surfing water", "playing the drums"}

    old = tmp_path / "old-bundle"  # a bundle made before the vocabulary travelled with it
    shutil.copytree(tiny_bundle, old)
    (old / VOCAB_FILE).unlink()
    raw = json.loads((old / MANIFEST).read_text(encoding="utf-8"))
    del raw["files"][VOCAB_FILE]
    (old / MANIFEST).write_text(json.dumps(raw), encoding="utf-8")
    tokenizer.get_tokenizer.cache_clear()
    code, _, err = run(capsys, demo_assets["video"], "--bundle", old, "--labels", labels, "--no-cache")
    assert code == 1 and "--bpe-vocab" in err
    tokenizer.get_tokenizer.cache_clear()


def test_only_skipped_sources_still_write_the_csv(capsys, tiny_bundle, tmp_path):
    table, jsonl = tmp_path / "r.csv", tmp_path / "r.jsonl"
    code, _, err = run(capsys, tmp_path / "a.mp4", str(tmp_path / "*.avi"), "--bundle", tiny_bundle,
                       "--csv", table, "--json", jsonl)
    assert code == 1 and "0 done, 2 skipped" in err
    rows = list(csv.DictReader(table.open(encoding="utf-8")))
    assert [(r["status"], r["error"].split(": ")[-1]) for r in rows] == [("skipped", "not found"),
                                                                         ("skipped", "the pattern matches nothing")]
    assert not jsonl.exists()  # no prediction: no JSON file rather than an empty one


def test_missing_sources_are_reported_in_their_place(capsys, tiny_bundle, demo_assets, tmp_path):
    table = tmp_path / "r.csv"
    code, _, err = run(capsys, tmp_path / "first.mp4", demo_assets["video"], tmp_path / "last.mp4",
                       "--bundle", tiny_bundle, "--csv", table)
    assert code == 1
    rows = list(csv.DictReader(table.open(encoding="utf-8")))
    assert [Path(r["source"]).name for r in rows] == ["first.mp4", "video.mp4", "last.mp4"]
    assert [r["status"] for r in rows] == ["skipped", "ok", "skipped"]
    assert "skipped [1/3]" in err and "skipped [3/3]" in err
