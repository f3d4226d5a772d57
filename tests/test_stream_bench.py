"""apclip-bench stream on the tiny bundle: rows for encode-once and today's re-encoding path, in JSON."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")


def test_stream_bench_rows(tiny_bundle, tmp_path, capsys):
    from apclip.benchmarks.cli import main

    out = tmp_path / "stream.json"
    code = main(["stream", "--bundle", str(tiny_bundle), "--seconds", "3", "--sources", "2", "--baseline",
                 "--processes", "--workdir", str(tmp_path), "--json", str(out), "--quiet"])
    assert code == 0
    report = json.loads(out.read_text())
    rows = {r["path"]: r for r in report["rows"]}
    assert set(rows) == {"once", "reencode", "reencode x2 processes"}
    # 3 s at 25 fps, 2 s windows every 0.5 s: 3 windows per source
    assert (rows["once"]["windows"], rows["reencode"]["windows"], rows["reencode x2 processes"]["windows"]) == (6, 3, 6)
    assert rows["reencode"]["frames_per_window"] == 8
    assert rows["once"]["frames_per_window"] == pytest.approx((8 + 2 + 2) / 3)
    assert all(r["rss_peak_mib"] > 0 and r["windows_per_s"] > 0 for r in rows.values())
    assert rows["once"]["lag_ms"]["p99"] >= rows["once"]["lag_ms"]["p50"] > 0
    assert "frames/win" in capsys.readouterr().out
