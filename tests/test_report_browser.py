"""--report report.html opened in a real headless Chromium: it loads offline without console errors,
shows the sampled frames and the top-k classes of every video, and renders to a non-blank PNG.

Chromium comes from Debian's packages (scripts/setup.sh installs it); without it the test skips."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from apclip.engine.cli.infer import main  # noqa: E402
from apclip.testing.videos import write_image_folder  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--window-size=1400,1200"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("Chromium is not installed (scripts/setup.sh runs `apt-get install -y chromium`)")


def browse(page: Path, tmp: Path, *action: str) -> tuple[str, str]:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"  # fresh per launch
    proc = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *action, page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


def console_messages(stderr: str) -> list[str]:
    # Chromium logs every console call of the page as `INFO:CONSOLE:<line>] "<message>", source: ...`.
    return re.findall(r':CONSOLE(?:\(\d+\)|:\d+)\] "(.*?)", source:', stderr)


@pytest.fixture()
def attributed_bank(demo_assets, tmp_path) -> Path:
    """The demo bank with an aspect and attribute on every description (as apclip-prompts writes them)."""
    raw = json.loads(demo_assets["bank"].read_text(encoding="utf-8"))
    for cls in raw["classes"]:
        for entry in cls["prompts"]:
            entry["aspect"], entry["attribute"] = "actor", "movement"
    raw.pop("sha256", None)
    path = tmp_path / "bank.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


def test_report_in_headless_chromium(capsys, tiny_bundle, demo_assets, tmp_path, monkeypatch, attributed_bank):
    monkeypatch.setenv("APCLIP_CACHE_DIR", str(tmp_path / "cache"))
    frames = tmp_path / "frames"
    write_image_folder(frames, frames=20, size=(96, 72))
    report = tmp_path / "out" / "report.html"
    code = main([str(demo_assets["video"]), str(frames), "--bundle", str(tiny_bundle), "--topk", "3",
                 "--prompts", str(attributed_bank), "--report", str(report), "--quiet"])
    assert code == 0, capsys.readouterr().err
    text = report.read_text(encoding="utf-8")
    assert not re.search(r'(src|href)="(https?:)?//', text)  # nothing fetched from a network

    dom, stderr = browse(report, tmp_path, "--dump-dom")
    assert console_messages(stderr) == [], stderr[-2000:]
    sections = dom.split('<section class="video">')[1:]
    assert len(sections) == 2
    for section in sections:
        assert section.count('<img class="frame"') == 16  # 2 clips x 8 frames (first crop of each view)
        assert section.count('<tr class="class-row">') == 3 and section.count('class="class-bar"') == 3
        assert "actor: movement" in section
    assert 'data-images-ok="32"' in dom  # the page's own check: every inlined thumbnail decoded

    shot = tmp_path / "report.png"
    _, stderr = browse(report, tmp_path, f"--screenshot={shot}")
    assert console_messages(stderr) == []
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (1200, 1400)
    assert image.std() > 20 and len(np.unique(image.reshape(-1, 3), axis=0)) > 500  # not blank
    bar = np.all(np.abs(image.astype(int) - (216, 125, 59)) < 12, axis=-1)  # the bars' #3b7dd8 (BGR)
    assert bar.sum() > 1000


def test_console_errors_are_detected(tmp_path):
    """The check above can fail: a page that logs an error is caught."""
    page = tmp_path / "bad.html"
    page.write_text('<html><body><script>console.error("broken thumbnail")</script></body></html>',
                    encoding="utf-8")
    _, stderr = browse(page, tmp_path, "--dump-dom")
    assert console_messages(stderr) == ["broken thumbnail"]
