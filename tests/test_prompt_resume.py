"""Interrupt the generator for real (Ctrl-C, then SIGKILL) in a subprocess, resume: nothing lost or asked twice."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from fake_llm_server import FakeLLMServer

from apclip.export.prompts.strategies import ACTION_CENTRIC_TEMPLATES
from apclip.prompt_bank import load_prompt_bank

LABELS = [f"action number {i}" for i in range(7)] + ["tańczyć 踊り"]
PAIRS = {(label, i) for label in LABELS for i in range(3)}

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses POSIX signals")


def journal_keys(path):
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")[1:]
    return [tuple(json.loads(line)[k] for k in ("label", "llm_prompt")) for line in lines if line.endswith(b"}")]


def pair_of(question):
    """(label, llm_prompt) a request asked about, recovered from its question text."""
    for label in LABELS:
        for i, template in enumerate(ACTION_CENTRIC_TEMPLATES[:3]):
            if template.format(label=label) == question:
                return label, i
    raise AssertionError(f"unexpected question {question!r}")


def start(server, labels, out):
    env = dict(os.environ, OPENAI_API_KEY="test-dummy-key", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "apclip.export.prompts.cli", "generate", "--labels", str(labels),
               "--out", str(out), "--base-url", server.base_url, "--model", "fake-model", "--concurrency", "2",
               "--backoff-s", "0.001", "--no-progress"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_answers(journal, count, proc, deadline_s=60.0):
    """Block until the journal holds `count` answers (the subprocess is mid-run)."""
    end = time.monotonic() + deadline_s
    while len(journal_keys(journal)) < count:
        assert proc.poll() is None, f"generator ended early: {proc.communicate()}"
        assert time.monotonic() < end, "generator made no progress"
        time.sleep(0.01)


def test_interrupt_kill_and_resume(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS), encoding="utf-8")
    out = tmp_path / "bank.json"
    journal = tmp_path / "bank.json.journal.jsonl"
    with FakeLLMServer(delay_s=0.08) as server:
        # 1. Ctrl-C: a clean exit with status 130 and a hint to resume.
        proc = start(server, labels, out)
        wait_for_answers(journal, 3, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130 and "rerun the same command to resume" in err

        # 2. SIGKILL: no chance to clean up at all.
        before = set(journal_keys(journal))
        sent_before = len(server.requests)
        proc = start(server, labels, out)
        wait_for_answers(journal, len(before) + 4, proc)
        proc.kill()
        proc.wait(timeout=30)
        assert not out.exists()
        second_run = {pair_of(q) for q in server.questions()[sent_before:]}
        assert not second_run & before  # answers already journaled were not asked again

        # 3. Resume to the end.
        saved = set(journal_keys(journal))
        sent_before = len(server.requests)
        proc = start(server, labels, out)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        third_run = [pair_of(q) for q in server.questions()[sent_before:]]
        assert not set(third_run) & saved and len(third_run) == len(set(third_run))
        assert saved | set(third_run) == PAIRS  # nothing lost

    keys = journal_keys(journal)
    assert len(keys) == len(set(keys)) == len(PAIRS)  # no duplicate answer in the journal
    bank = load_prompt_bank(out)
    assert bank.labels == LABELS and all(len(bank.descriptions(label)) == 36 for label in LABELS)

    # The resumed bank is exactly the bank of an uninterrupted run.
    with FakeLLMServer() as server:
        proc = start(server, labels, tmp_path / "fresh" / "bank.json")
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert load_prompt_bank(tmp_path / "fresh" / "bank.json").sha256 == bank.sha256
