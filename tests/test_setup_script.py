"""scripts/setup.sh installs only what changed: a second run with the same pyproject.toml, constraints.txt
and setup.sh calls pip not once (it took 17 s re-resolving everything); a changed pin installs again."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAKE_PYTHON = """#!/bin/sh
echo "$0 $*" >> "$(dirname "$0")/../../pip-calls.log"
"""


def _setup(repo: Path) -> list[str]:
    log = repo / "pip-calls.log"
    log.write_text("")
    bin_dir = repo / "fakebin"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "scripts/setup.sh"], cwd=repo, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    return [line for line in log.read_text().splitlines() if "pip install" in line]


def test_setup_skips_pip_when_nothing_changed(tmp_path):
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("pyproject.toml", "constraints.txt", "scripts/setup.sh"):
        shutil.copyfile(ROOT / name, repo / name)
    for venv in (".venv", ".venv-serve"):
        python = repo / venv / "bin" / "python"
        python.parent.mkdir(parents=True)
        python.write_text(FAKE_PYTHON)
        python.chmod(0o755)
    (repo / "fakebin").mkdir()
    for tool in ("chromium", "apt-get"):  # the apt-get step (browser, fonts) is not what this test is about
        fake = repo / "fakebin" / tool
        fake.write_text("#!/bin/sh\n")
        fake.chmod(0o755)

    first = _setup(repo)
    assert len(first) == 3, first  # .venv (apclip, open_clip_torch) and .venv-serve
    assert _setup(repo) == []
    with open(repo / "constraints.txt", "a", encoding="utf-8") as f:
        f.write("\n# a new pin\n")
    assert len(_setup(repo)) == 3
