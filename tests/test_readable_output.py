"""What users look at: labels in any script on --out-video, report bars that start together and are as
long as their probability (measured in Chromium), the model's probabilities in the table and JSON with
--min-score, and the label sets shipped by name (--labels k400)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from apclip.engine.predictions import LabelScore, Prediction


# -- --out-video labels -----------------------------------------------------------------------------------
def _drawn(label: str) -> np.ndarray:
    from apclip.engine.cli.overlay import draw_top

    image = np.full((360, 480, 3), 120, np.uint8)
    return draw_top(image, Prediction("v.mp4", [LabelScore(label, 0.3, 0.41)], np.zeros(1)), 5)


def test_cjk_labels_are_drawn_with_a_real_font():
    from apclip.engine.cli.overlay import overlay_font

    font = overlay_font(22)
    if font is None or len(font.fonts) < 2:
        pytest.skip("the overlay fonts are not installed (scripts/setup.sh: fonts-dejavu-core, fonts-droid-fallback)")
    cjk, empty, question = _drawn("挥手"), _drawn(""), _drawn("??")
    glyphs = (slice(0, 30), slice(4, 40))  # where the two characters go, before ": 41.0%"
    changed = np.abs(cjk[glyphs].astype(int) - empty[glyphs].astype(int)).max(axis=-1) > 60
    assert changed.sum() > 40  # strokes, not a blank
    # OpenCV's Hershey font turned every non-ASCII character into '?': the CJK rendering must differ.
    assert np.abs(cjk[glyphs].astype(int) - question[glyphs].astype(int)).max(axis=-1).sum() > 1000
    # Each character came from the font that has it: no "missing glyph" boxes from the Latin font.
    assert {id(font.font_for(ch)) for ch in "挥手"} == {id(font.fonts[-1])} and font.font_for("é") is font.fonts[0]


# -- probabilities ---------------------------------------------------------------------------------------
def test_probabilities_are_the_models_softmax_over_the_label_set():
    from apclip.scoring import class_probabilities

    scores = np.array([0.27, 0.25, 0.20])
    p = class_probabilities(scores, "maka", 100.0)
    expected = np.exp(100 * scores) / np.exp(100 * scores).sum()  # CLIP: softmax(logit_scale * similarity)
    np.testing.assert_allclose(p, expected, rtol=1e-12)
    assert p.sum() == pytest.approx(1.0) and p[0] > 0.85  # 0.27 vs 0.25 is not "about even"
    views = np.array([1.5, 0.4, 0.1])  # vificlip: a sum of 2 per-view softmaxes
    np.testing.assert_allclose(class_probabilities(views, "vificlip", 100.0), views / 2.0)


def test_table_and_json_carry_probabilities_and_min_score_filters(capsys, tiny_bundle, demo_assets, tmp_path):
    from infer_cli_helpers import read_jsonl, run

    out = tmp_path / "p.jsonl"
    code, stdout, _ = run(capsys, demo_assets["video"], "--bundle", tiny_bundle, "--json", out, "--topk", "5")
    assert code == 0 and "prob" in stdout and "%" in stdout
    top = read_jsonl(out)[0]["top"]
    assert all(0.0 <= t["probability"] <= 1.0 for t in top) and len(top) == 5
    assert sum(t["probability"] for t in top) == pytest.approx(1.0, abs=1e-5)  # all 5 labels of the bundle
    threshold = (top[0]["probability"] + top[1]["probability"]) / 2  # between the first and the second
    code, stdout, _ = run(capsys, demo_assets["video"], "--bundle", tiny_bundle, "--json", out,
                          "--min-score", f"{threshold:.6f}")
    assert code == 0 and [t["label"] for t in read_jsonl(out)[0]["top"]] == [top[0]["label"]]
    assert run(capsys, demo_assets["video"], "--bundle", tiny_bundle, "--min-score", "7")[0] == 2


# -- the report's bars, measured in a real browser ------------------------------------------------------------
def test_report_bars_start_together_and_are_proportional(tmp_path):
    from test_report_browser import browse

    from apclip.engine.cli.report_html import ReportVideo, render_report

    probabilities = [0.62, 0.31, 0.07]
    labels = ["a very long label that the old layout let squeeze the others aside", "wave", "clap"]
    pred = Prediction("v.mp4", [LabelScore(label, 0.3 - i / 100, p) for i, (label, p)
                                in enumerate(zip(labels, probabilities))], np.zeros(3))
    measure = ("<script>document.body.setAttribute('data-bars', JSON.stringify([].map.call("
               "document.querySelectorAll('.class-bar .bar'), function (b) { var r = b.getBoundingClientRect(); "
               "var t = b.parentElement.getBoundingClientRect(); return [r.left, r.width, t.left, t.width]; })));"
               "</script></body>")
    page = tmp_path / "report.html"
    page.write_text(render_report([ReportVideo("v.mp4", pred, 1)]).replace("</body>", measure), encoding="utf-8")
    dom, _ = browse(page, tmp_path, "--dump-dom")
    bars = json.loads(re.search(r'data-bars="([^"]*)"', dom).group(1).replace("&quot;", '"'))
    assert len(bars) == 3
    lefts = {round(left, 1) for left, _, _, _ in bars}
    assert len(lefts) == 1, bars  # every bar starts at the same x
    track = bars[0][3]
    assert track > 100 and all(abs(t - track) < 0.5 for _, _, _, t in bars)
    for (_, width, _, _), p in zip(bars, probabilities):
        assert width == pytest.approx(p * track, abs=1.0)  # proportional: 100% = the whole track


# -- label sets shipped with the package -------------------------------------------------------------------
@pytest.mark.parametrize("name, count, first, last", [
    ("k400", 400, "abseiling", "zumba"), ("k600", 600, "abseiling", "zumba"),
    ("ucf101", 101, "ApplyEyeMakeup", "YoYo"), ("hmdb51", 51, "brush hair", "wave"),
    ("ssv2", 174, "Approaching something with your camera", "Wiping something off of something")])
def test_label_sets_by_name(name, count, first, last, tmp_path, monkeypatch):
    from apclip.labels import read_labels

    monkeypatch.chdir(tmp_path)
    labels = read_labels(name)
    assert len(labels) == count == len(set(labels)) and labels[0] == first and labels[-1] == last
    (tmp_path / name).write_text("mine\n", encoding="utf-8")
    assert read_labels(name) == ["mine"]  # a file of that name wins


def test_label_sets_are_package_data():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["apclip"]
    assert "data/labels/*.csv" in data


def test_infer_with_a_named_label_set(capsys, tiny_bundle, demo_assets, tmp_path, monkeypatch):
    from infer_cli_helpers import run

    monkeypatch.setenv("APCLIP_CACHE_DIR", str(tmp_path / "cache"))
    code, stdout, err = run(capsys, demo_assets["video"], "--bundle", tiny_bundle, "--labels", "hmdb51", "--topk", "3")
    assert code == 0, err
    assert "51 classes" in err
