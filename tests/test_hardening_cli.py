"""Hostile input to the CLIs, built here: option values that would hang a run, files that never end, folder
loops, and text that attacks the terminal or the spreadsheet that reads our output."""
from __future__ import annotations

import csv
import os
import time

import numpy as np
import pytest

from infer_cli_helpers import run

EVIL = "surf\x1b]8;;http://evil.example\x07click\x1b[2J\x1b[1A\u202e"


@pytest.mark.parametrize("option", [["--mode", "stream", "--stride", "1e-9"], ["--threads", "100000"],
                                    ["--mode", "stream", "--window", "nan"], ["--fps", "inf"]])
def test_option_ranges_are_usage_errors(capsys, tiny_bundle, demo_assets, option):
    code, out, err = run(capsys, demo_assets["video"], "--bundle", tiny_bundle, *option)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and option[-2] in err


def test_fifos_are_refused_not_read_forever(tmp_path):
    from apclip.cli_common import UsageError
    from apclip.engine.video.sources_list import expand_sources
    from apclip.labels import LabelsError, read_labels
    from apclip.prompt_bank import PromptBankError, load_prompt_bank

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(LabelsError, match="not a regular file"):
        read_labels(fifo)
    with pytest.raises(PromptBankError, match="not a regular file"):
        load_prompt_bank(fifo)
    with pytest.raises(UsageError, match="not a regular file"):
        expand_sources([f"@{fifo}"], recursive=False)
    assert time.monotonic() - start < 5


def test_symlink_loops_in_globs_and_recursive_walks_end(tmp_path):
    """Two links to the parent made glob.glob('**') walk 2^40 paths."""
    from apclip.engine.video.sources_list import expand_sources
    from apclip.scale.batch import expand_inputs

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.mp4").write_bytes(b"x")
    (tmp_path / "a" / "up").symlink_to("..")
    (tmp_path / "a" / "up2").symlink_to("..")
    start = time.monotonic()
    want = [str(tmp_path / "a" / "x.mp4")]
    assert [item.path for item in expand_sources([str(tmp_path / "**" / "*.mp4")], recursive=False)] == want
    assert [item.path for item in expand_sources([str(tmp_path)], recursive=True)] == want
    assert expand_inputs(str(tmp_path / "**" / "*.mp4")) == want
    assert expand_inputs(str(tmp_path)) == want
    assert time.monotonic() - start < 10


def test_labels_cannot_drive_the_terminal():
    from apclip.engine.cli.infer_run import format_prediction, format_window
    from apclip.engine.predictions import LabelScore, Prediction, WindowPrediction

    pred = Prediction(source="v\x1b[31m.mp4", top=[LabelScore(EVIL, 0.5)], scores=np.zeros(1))
    window = WindowPrediction(source="cam", top=[LabelScore(EVIL, 0.5)], scores=np.zeros(1))
    for text in (format_prediction(pred), format_window(window)):
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
        assert "\\x1b]8;;http://evil.example\\x07click" in text and "\\u202e" in text


def test_bundle_info_escapes_labels(tiny_bundle):
    from apclip.engine.cli.bundle import bundle_info, format_info

    info = bundle_info(str(tiny_bundle))
    info["labels"] = [EVIL] + info["labels"]
    text = format_info(info)
    assert "\x1b" not in text and "\\x1b" in text


def test_csv_cells_cannot_be_formulas_and_the_review_table_reads_back(tmp_path):
    from apclip.engine.cli.outputs import CsvResults
    from apclip.export.prompts.review import read_rejections, write_review_csv
    from apclip.prompt_bank import ClassPrompts, PromptBank, PromptEntry
    from apclip.safe_text import csv_safe

    out = CsvResults(str(tmp_path / "r.csv"), ["source", "label", "score"])
    out.write({"source": "=HYPERLINK(\"http://evil\")", "label": "@SUM(A1)", "score": -0.25})
    out.commit()
    rows = list(csv.DictReader(open(tmp_path / "r.csv", newline="")))
    assert rows == [{"source": "'=HYPERLINK(\"http://evil\")", "label": "'@SUM(A1)", "score": "-0.25"}]
    assert csv_safe("-0.5") == "-0.5" and csv_safe("+cmd") == "'+cmd"

    entry = PromptEntry(aspect=None, attribute=None, llm_prompt=0, text="-a person surfing.")
    bank = PromptBank("direct", None, {}, None, (ClassPrompts("=cmd|' /C calc'!A0", (entry,)),))
    path = tmp_path / "review.csv"
    write_review_csv(bank, path)
    cells = [cell for row in csv.reader(open(path, encoding="utf-8-sig", newline="")) for cell in row]
    assert not any(cell.startswith(("=", "+", "-", "@")) for cell in cells), cells
    text = path.read_text(encoding="utf-8-sig").replace(",keep", ",reject")
    path.write_text(text, encoding="utf-8-sig")
    assert read_rejections(bank, path) == {(0, 0)}  # label and text compared as written
