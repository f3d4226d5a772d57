"""apclip-infer end to end: output table and JSON lines, overlay videos, and every error a user can
cause as one line on stderr with a non-zero exit and no traceback."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from apclip.bundle import MANIFEST, VISION_FILE

pytest.importorskip("onnxruntime")

from infer_cli_helpers import read_jsonl, run  # noqa: E402
from apclip.testing.videos import write_test_video  # noqa: E402

PREDICTION_KEYS = {"source", "top", "backend", "scorer", "protocol", "frames", "approximate", "distinct_frames",
                   "timings_ms"}
WINDOW_KEYS = PREDICTION_KEYS | {"window", "start", "end"}


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("APCLIP_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def four_seconds(tmp_path_factory) -> Path:
    """40 frames at 10 fps: windows of 2 s every 1 s start at 0, 1 and 2 (window k ends sampling at k + 1.875 s)."""
    return write_test_video(tmp_path_factory.mktemp("video") / "four.avi", frames=40, size=(96, 72), fps=10.0)


def check_top(top: list, k: int, labels: list[str]) -> None:
    assert len(top) == k
    assert all(set(t) == {"label", "score", "probability"} and t["label"] in labels and isinstance(t["score"], float) for t in top)
    assert [t["score"] for t in top] == sorted((t["score"] for t in top), reverse=True)
    assert len({t["label"] for t in top}) == k


def bundle_labels(bundle: Path) -> list[str]:
    return json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))["labels"]


def count_frames(path: Path) -> tuple[int, tuple[int, int]]:
    capture = cv2.VideoCapture(str(path))
    count, size = 0, None
    while True:
        ok, image = capture.read()
        if not ok:
            break
        count, size = count + 1, image.shape[:2]
    capture.release()
    return count, size


# -- output ----------------------------------------------------------------------------------------------------
def test_clip_mode_table_and_json(capsys, tiny_bundle, demo_assets, tmp_path):
    out = tmp_path / "pred.jsonl"
    code, stdout, _ = run(capsys, demo_assets["video"], "--bundle", tiny_bundle, "--topk", 3, "--json", out)
    assert code == 0
    [record] = read_jsonl(out)
    assert set(record) == PREDICTION_KEYS
    assert record["source"] == str(demo_assets["video"])
    assert (record["backend"], record["scorer"], record["frames"], record["approximate"]) == ("ort-cpu", "numpy", 32, False)
    check_top(record["top"], 3, bundle_labels(tiny_bundle))
    assert all(isinstance(v, float) for v in record["timings_ms"].values())
    ranks = [line.split() for line in stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [r[3:] for r in ranks] == [t["label"].split() for t in record["top"]]  # rank, prob, score, label
    assert [float(r[2]) for r in ranks] == pytest.approx([t["score"] for t in record["top"]], abs=1e-4)
    assert [float(r[1].rstrip("%")) for r in ranks] == pytest.approx([100 * t["probability"] for t in record["top"]],
                                                                       abs=0.051)


def test_stream_mode_one_line_per_window(capsys, tiny_bundle, four_seconds, tmp_path):
    out = tmp_path / "windows.jsonl"
    code, stdout, err = run(capsys, four_seconds, "--bundle", tiny_bundle, "--mode", "stream", "--window", 2,
                            "--stride", 1, "--topk", 2, "--json", out)
    assert code == 0
    records = read_jsonl(out)
    assert [r["window"] for r in records] == [0, 1, 2]
    assert [(r["start"], r["end"]) for r in records] == [(0.0, 2.0), (1.0, 3.0), (2.0, 4.0)]
    for r in records:
        assert set(r) == WINDOW_KEYS
        assert list(r)[:4] == ["source", "window", "start", "end"]
        assert r["frames"] == 16  # 8 frames x 2 crops x 1 temporal clip
        check_top(r["top"], 2, bundle_labels(tiny_bundle))
    assert len([line for line in stdout.splitlines() if line.startswith("[")]) == 3
    assert "3 window(s)" in err


def test_explain_in_json(capsys, tiny_bundle, demo_assets, tmp_path):
    out = tmp_path / "explain.jsonl"
    assert run(capsys, demo_assets["video"], "--bundle", tiny_bundle, "--topk", 2, "--explain", "--json", out)[0] == 0
    [record] = read_jsonl(out)
    assert [e["label"] for e in record["explain"]] == [t["label"] for t in record["top"]]
    for e in record["explain"]:
        assert len(e["frames"]) == record["frames"]
        assert all(set(f) == {"view", "frame", "time", "prompt", "similarity"} for f in e["frames"])
        assert all(f["prompt"].startswith(f"a video of {e['label']}") for f in e["frames"])


def test_runtime_labels_from_a_file(capsys, tiny_bundle, demo_assets, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("surfing water\nplaying the drums\n", encoding="utf-8")
    out = tmp_path / "pred.jsonl"
    code, _, err = run(capsys, demo_assets["video"], "--bundle", tiny_bundle, "--labels", labels,
                       "--prompts", demo_assets["bank"], "--json", out)
    assert code == 0
    check_top(read_jsonl(out)[0]["top"], 2, ["surfing water", "playing the drums"])
    assert "encoding 1 new label(s)" in err
    _, _, err = run(capsys, demo_assets["video"], "--bundle", tiny_bundle, "--labels", labels,
                    "--prompts", demo_assets["bank"])
    assert "1 new label(s) loaded from the cache" in err


@pytest.mark.parametrize("mode, extra", [("clip", []), ("stream", ["--window", "1", "--stride", "0.5"])])
def test_out_video_has_every_input_frame(capsys, tiny_bundle, demo_assets, tmp_path, mode, extra):
    out = tmp_path / "nested" / f"overlay-{mode}.mp4"
    code, _, err = run(capsys, demo_assets["video"], "--bundle", tiny_bundle, "--mode", mode, "--out-video", out,
                       *extra)
    assert code == 0, err
    assert count_frames(out) == count_frames(demo_assets["video"]) == (90, (240, 320))
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left behind


def test_overlay_draws_the_current_window(tiny_bundle, demo_assets, tmp_path):
    """Frames before the first window ends carry the 'pending' box; later ones the window's labels."""
    from apclip.engine import Recognizer
    from apclip.engine.cli.overlay import write_overlay

    rec = Recognizer.from_bundle(tiny_bundle, backend="ort", scorer="numpy")
    windows = list(rec.stream(demo_assets["video"], window=1.0, stride=1.0))
    plain, drawn = tmp_path / "plain.avi", tmp_path / "drawn.avi"
    write_overlay(demo_assets["video"], plain, [], topk=1)  # no prediction: every frame says pending
    write_overlay(demo_assets["video"], drawn, windows, topk=1)

    def frame(path: Path, index: int) -> np.ndarray:
        capture = cv2.VideoCapture(str(path))
        capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, image = capture.read()
        capture.release()
        assert ok
        return image[:40, :200].astype(np.int16)

    assert np.abs(frame(plain, 10) - frame(drawn, 10)).mean() < 2  # window 0 ends at 1 s (frame 30)
    assert np.abs(frame(plain, 60) - frame(drawn, 60)).mean() > 2


# -- errors: one line, non-zero exit, no traceback ----------------------------------------------------------------
def tampered(bundle: Path, tmp: Path) -> Path:
    out = tmp / "tampered"
    shutil.copytree(bundle, out)
    data = bytearray((out / VISION_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (out / VISION_FILE).write_bytes(bytes(data))
    return out


def no_manifest(bundle: Path, tmp: Path) -> Path:
    out = tmp / "no-manifest"
    shutil.copytree(bundle, out)
    (out / MANIFEST).unlink()
    return out


def garbled_manifest(bundle: Path, tmp: Path) -> Path:
    out = tmp / "garbled"
    shutil.copytree(bundle, out)
    (out / MANIFEST).write_text('{"format": "apclip-bundle", ', encoding="utf-8")
    return out


def file_with(text: bytes, name: str):
    def make(tmp: Path) -> Path:
        (tmp / name).write_bytes(text)
        return tmp / name
    return make


ERRORS = {
    # case: (bundle maker, source maker, extra args, words the one line must hold)
    "tampered bundle": (tampered, None, [], ["vision.onnx", "sha256"]),
    "missing bundle": (lambda b, t: t / "nowhere", None, [], ["nowhere", "does not exist"]),
    "missing manifest": (no_manifest, None, [], ["no-manifest", "manifest.json"]),
    "garbled manifest": (garbled_manifest, None, [], ["manifest.json", "unreadable"]),
    "labels missing": (None, None, ["--labels", "{tmp}/absent.txt"], ["absent.txt", "does not exist"]),
    "labels empty": (None, None, ["--labels", "{tmp}/empty.txt"], ["empty.txt", "no labels"]),
    "video missing": (None, lambda t: t / "absent.mp4", [], ["absent.mp4", "not found"]),
    "video empty": (None, file_with(b"", "empty.mp4"), [], ["empty.mp4", "empty"]),
    "video unreadable": (None, file_with(b"\x00\x01garbage" * 500, "garbage.mp4"), [], ["garbage.mp4"]),
    "ort-cuda unavailable": (None, None, ["--backend", "ort-cuda"], ["ort-cuda", '-e ".[gpu]"']),
    "tensorrt unavailable": (None, None, ["--backend", "trt"], ["TensorRT", "--backend ort"]),
    "torch without ckpt": (None, None, ["--backend", "torch"], ["--ckpt"]),
    "camera not present": (None, lambda t: "97", [], ["camera 97"]),
    "camera in clip mode": (None, lambda t: "97", ["--mode", "clip"], ["97", "--mode stream"]),
    "stream shorter than a window": (None, None, ["--mode", "stream", "--window", "60"], ["first window"]),
    "bad out-video name": (None, None, ["--out-video", "{tmp}/overlay.txt"], ["overlay.txt", ".mp4"]),
    "bad topk": (None, None, ["--topk", "0"], ["--topk"]),
    "bad threads": (None, None, ["--threads", "-1"], ["--threads"]),
    "json is a folder": (None, None, ["--json", "{tmp}"], ["--json", "folder"]),
    "vocabulary missing": (None, None, ["--bpe-vocab", "{tmp}/vocab.gz"], ["vocab.gz", "does not exist"]),
    "torch ckpt missing": (None, None, ["--backend", "torch", "--ckpt", "{tmp}/best.pt"], ["best.pt", "does not exist"]),
    "manifest labels edited": (lambda b, t: _swapped_labels(b, t), None, [], ["labels_sha256"]),
}


def _swapped_labels(bundle: Path, tmp: Path) -> Path:
    import json

    out = tmp / "swapped"
    shutil.copytree(bundle, out)
    raw = json.loads((out / MANIFEST).read_text())
    raw["labels"][:2] = raw["labels"][1::-1]
    (out / MANIFEST).write_text(json.dumps(raw))
    return out


@pytest.mark.parametrize("case", list(ERRORS))
def test_error_is_one_line(capsys, tiny_bundle, demo_assets, tmp_path, case):
    make_bundle, make_source, extra, words = ERRORS[case]
    (tmp_path / "empty.txt").write_text("# no labels here\n\n", encoding="utf-8")
    bundle = make_bundle(tiny_bundle, tmp_path) if make_bundle else tiny_bundle
    source = make_source(tmp_path) if make_source else demo_assets["video"]
    argv = [source, "--bundle", bundle, "--quiet", *[a.format(tmp=tmp_path) for a in extra]]
    code, stdout, stderr = run(capsys, *argv)
    assert code != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("apclip-infer: error: ")
    for word in words:
        assert word in lines[0]
    assert "Traceback" not in stderr and stdout == ""


def test_json_never_half_written(capsys, tiny_bundle, four_seconds, tmp_path):
    """Stream windows were written when the error came: the target is absent, no temporary file is left."""
    from apclip.engine import recognizer as recognizer_module
    from apclip.engine.video.errors import SourceError

    out = tmp_path / "out" / "windows.jsonl"
    original = recognizer_module.Recognizer.stream

    def fails_after_two(self, *args, **kwargs):
        for i, window in enumerate(original(self, *args, **kwargs)):
            if i == 2:
                raise SourceError(f"{four_seconds}: decoding failed (simulated)")
            yield window

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(recognizer_module.Recognizer, "stream", fails_after_two)
        code, stdout, stderr = run(capsys, four_seconds, "--bundle", tiny_bundle, "--mode", "stream", "--json", out)
    assert code == 1 and "simulated" in stderr
    assert len([line for line in stdout.splitlines() if line.startswith("[")]) == 2  # printed before the error
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_json_keeps_the_previous_file_on_error(capsys, tiny_bundle, tmp_path):
    out = tmp_path / "pred.jsonl"
    out.write_text("previous run\n", encoding="utf-8")
    code, _, _ = run(capsys, tmp_path / "absent.mp4", "--bundle", tiny_bundle, "--json", out)
    assert code == 1
    assert out.read_text(encoding="utf-8") == "previous run\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pred.jsonl"]


def test_ctrl_c_in_stream_mode_keeps_the_finished_windows(capsys, tiny_bundle, four_seconds, tmp_path):
    from apclip.engine import recognizer as recognizer_module

    out = tmp_path / "windows.jsonl"
    original = recognizer_module.Recognizer.stream

    def interrupted_after_one(self, *args, **kwargs):
        for window in original(self, *args, **kwargs):
            yield window
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(recognizer_module.Recognizer, "stream", interrupted_after_one)
        code, _, stderr = run(capsys, four_seconds, "--bundle", tiny_bundle, "--mode", "stream", "--json", out)
    assert code == 0
    assert "interrupted: 1 window(s)" in stderr
    assert [r["window"] for r in read_jsonl(out)] == [0]


# -- the installed console script, in a real process ------------------------------------------------------------
def console_script() -> str:
    script = Path(sys.executable).with_name("apclip-infer")
    return str(script) if script.exists() else shutil.which("apclip-infer") or pytest.skip("apclip-infer not on PATH")


def test_console_script_runs_and_fails_cleanly(tiny_bundle, demo_assets, tmp_path):
    env = {**os.environ, "APCLIP_CACHE_DIR": str(tmp_path / "cache")}
    ok = subprocess.run([console_script(), str(demo_assets["video"]), "--bundle", str(tiny_bundle), "--topk", "2"],
                        capture_output=True, text=True, timeout=120, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "rank" in ok.stdout and "backend auto chose ort:fp32 (ort-cpu)" in ok.stderr

    bad = subprocess.run([console_script(), str(demo_assets["video"]), "--bundle", str(tampered(tiny_bundle, tmp_path))],
                         capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        f"apclip-infer: error: bundle file {tmp_path / 'tampered' / VISION_FILE} does not match its sha256 in the "
        "manifest (modified or corrupt); re-run apclip-export"]
    assert bad.stdout == ""

    camera = subprocess.run([console_script(), "97", "--bundle", str(tiny_bundle)], capture_output=True, text=True,
                            timeout=120, env=env)
    assert camera.returncode == 1
    assert camera.stderr.strip().splitlines()[-1] == "apclip-infer: error: cannot open camera 97: no such device, or it is busy"
    assert "WARN" not in camera.stderr  # OpenCV's own console noise is off
