"""`apclip-prompts generate` / `derive` end to end against the local fake server."""
from __future__ import annotations

import json

import pytest
from fake_llm_server import FakeLLMServer

from apclip.export.prompts.graph import default_graph
from apclip.export.prompts.cli import main
from apclip.prompt_bank import format_prompt, load_prompt_bank
from apclip.tokenizer import count_tokens

LABELS = ["archery", "playing guitar", "tańczyć 踊り 💃"]  # one label with Polish, Japanese and an emoji
FAST = ["--backoff-s", "0.001", "--timeout-s", "5", "--no-progress", "--model", "fake-model"]


@pytest.fixture()
def server(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-dummy-key")
    with FakeLLMServer() as fake:
        yield fake


@pytest.fixture()
def labels(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("\n".join(LABELS) + "\n\n", encoding="utf-8")
    return path


def generate(server, labels, out, *extra):
    return main(["generate", "--labels", str(labels), "--out", str(out), "--base-url", server.base_url,
                 *FAST, *extra])


def last_error(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1] if lines else ""


def test_action_centric_bank(server, labels, tmp_path):
    out = tmp_path / "bank.json"
    assert generate(server, labels, out) == 0
    bank = load_prompt_bank(out)
    assert bank.labels == LABELS and bank.strategy == "action-centric" and bank.model == "fake-model"
    slots = default_graph().slots()
    for label in LABELS:
        entries = bank.entries(label)
        assert len(entries) == 3 * 12 == len(bank.descriptions(label))
        # deterministic order: LLM-prompt, then the graph's aspect/attribute order
        assert [(e.llm_prompt, e.aspect, e.attribute) for e in entries] == \
            [(i, a, t) for i in range(3) for a, t in slots]
        for entry in entries:
            assert entry.text.endswith(".") and "  " not in entry.text and ",," not in entry.text
            assert count_tokens(entry.text) <= 30
            assert count_tokens(format_prompt(label, entry.text)) <= 77
    assert len(server.requests) == 9
    assert any("💃" in q for q in server.questions())


def test_hash_is_stable_across_runs(server, labels, tmp_path):
    assert generate(server, labels, tmp_path / "a" / "bank.json") == 0
    assert generate(server, labels, tmp_path / "b" / "bank.json") == 0
    assert len(server.requests) == 18  # the second run has its own journal: everything asked again
    a, b = load_prompt_bank(tmp_path / "a" / "bank.json"), load_prompt_bank(tmp_path / "b" / "bank.json")
    assert a.sha256 == b.sha256
    assert (tmp_path / "a" / "bank.json").read_bytes() == (tmp_path / "b" / "bank.json").read_bytes()


def test_a_finished_journal_is_reused_without_requests(server, labels, tmp_path, capsys):
    out = tmp_path / "bank.json"
    assert generate(server, labels, out) == 0
    first = load_prompt_bank(out).sha256
    assert generate(server, labels, out) == 0
    assert len(server.requests) == 9 and load_prompt_bank(out).sha256 == first
    assert "9 answers from" in capsys.readouterr().err


def test_faults_are_survived(server, labels, tmp_path, capsys):
    server.add_fault("429", match="archery")
    server.add_fault("500", match="guitar")
    server.add_fault("malformed", match="💃")
    server.add_fault("long", times=3)
    out = tmp_path / "bank.json"
    assert generate(server, labels, out, "--concurrency", "2") == 0
    bank = load_prompt_bank(out)
    assert all(len(bank.descriptions(label)) == 36 for label in LABELS)
    assert max(count_tokens(t) for label in LABELS for t in bank.descriptions(label)) <= 30
    err = capsys.readouterr().err
    assert "2 retries, 1 repairs" in err and "shortened to 30 tokens" in err


def test_server_without_structured_output(monkeypatch, labels, tmp_path, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "test-dummy-key")
    with FakeLLMServer(supports_json_schema=False) as server:
        assert generate(server, labels, tmp_path / "bank.json", "--concurrency", "1") == 0
    assert "JSON instructions" in capsys.readouterr().err
    assert len(load_prompt_bank(tmp_path / "bank.json").descriptions("archery")) == 36


def test_failed_requests_are_reported_then_resumed(server, labels, tmp_path, capsys):
    server.add_fault("500", times=3, match="guitar")  # first guitar request: 1 try + 2 retries, then given up
    out = tmp_path / "bank.json"
    assert generate(server, labels, out, "--max-retries", "2", "--concurrency", "1") == 1
    err = last_error(capsys)
    assert "1 of 9 requests failed" in err and "playing guitar" in err and "rerun" in err
    assert not out.exists()
    journal = tmp_path / "bank.json.journal.jsonl"
    assert len(journal.read_text(encoding="utf-8").splitlines()) == 1 + 8
    sent = len(server.requests)
    assert generate(server, labels, out) == 0
    assert len(server.requests) == sent + 1  # only the missing pair
    assert len(load_prompt_bank(out).descriptions("playing guitar")) == 36


def test_torn_journal_line_is_dropped_and_requested_again(server, labels, tmp_path):
    out = tmp_path / "bank.json"
    assert generate(server, labels, out) == 0
    journal = tmp_path / "bank.json.journal.jsonl"
    lines = journal.read_bytes().split(b"\n")
    journal.write_bytes(b"\n".join(lines[:-2]) + b"\n" + lines[-2][:40])  # a crash mid-write of the last one
    out.unlink()
    sent = len(server.requests)
    assert generate(server, labels, out) == 0
    assert len(server.requests) == sent + 1
    records = [json.loads(line) for line in journal.read_text(encoding="utf-8").splitlines()[1:]]
    keys = [(r["label"], r["llm_prompt"]) for r in records]
    assert len(keys) == len(set(keys)) == 9


def test_journal_from_other_settings_is_refused(server, labels, tmp_path, capsys):
    out = tmp_path / "bank.json"
    assert generate(server, labels, out) == 0
    assert generate(server, labels, out, "--model", "other-model") == 1
    assert "other settings" in last_error(capsys)


def test_more_llm_prompts_reuse_the_journal(server, labels, tmp_path):
    out = tmp_path / "bank.json"
    assert generate(server, labels, out, "--llm-prompts", "2") == 0
    assert generate(server, labels, out, "--llm-prompts", "3") == 0
    assert len(server.requests) == 6 + 3
    assert len(load_prompt_bank(out).descriptions("archery")) == 36


@pytest.mark.parametrize("strategy, per_label, requests", [
    ("direct", 2 * 5, 6), ("cupl", 2 * 5, 6), ("set", 15, 0), ("single", 1, 0),
])
def test_ablation_strategies(server, labels, tmp_path, strategy, per_label, requests):
    out = tmp_path / "bank.json"
    assert generate(server, labels, out, "--strategy", strategy, "--llm-prompts", "2",
                    "--descriptions-per-prompt", "5") == 0
    bank = load_prompt_bank(out)
    assert bank.strategy == strategy and len(server.requests) == requests
    assert all(len(bank.descriptions(label)) == per_label for label in LABELS)
    if strategy == "single":
        assert bank.prompts("archery") == ["a video of archery."]
    if strategy == "set":
        assert "a video of archery. Look, the human is archery." in bank.prompts("archery")


def test_dry_run_sends_nothing_and_needs_no_key(monkeypatch, labels, tmp_path, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeLLMServer() as server:
        assert generate(server, labels, tmp_path / "bank.json", "--dry-run") == 0
        assert server.requests == []
    captured = capsys.readouterr()
    requests = [json.loads(line) for line in captured.out.splitlines()]
    assert [(r["label"], r["llm_prompt"]) for r in requests] == [(lb, i) for lb in LABELS for i in range(3)]
    assert requests[0]["body"]["response_format"]["json_schema"]["strict"] is True
    assert "9 requests" in captured.err and "cost: unknown for model 'fake-model'" in captured.err
    assert not (tmp_path / "bank.json").exists() and not (tmp_path / "bank.json.journal.jsonl").exists()


@pytest.mark.parametrize("setup, args, message", [
    ("nokey", [], "OPENAI_API_KEY is not set"),
    ("", ["--labels", "missing.txt"], "does not exist"),
    ("duplicate", [], "lists 'archery' twice"),
    ("unreviewed", ["--graph", "{tmp}/graph.json"], "unreviewed candidate"),
    ("", ["--llm-prompts", "9"], "--llm-prompts must be between 1 and 5"),
    ("", ["--concurrency", "0"], "--concurrency must be at least 1"),
])
def test_bad_input_is_a_one_line_error(server, labels, tmp_path, capsys, monkeypatch, setup, args, message):
    if setup == "nokey":
        monkeypatch.delenv("OPENAI_API_KEY")
    if setup == "duplicate":
        labels.write_text("archery\nrunning\narchery\n", encoding="utf-8")
    if setup == "unreviewed":
        graph = default_graph().to_dict() | {"reviewed": False}
        (tmp_path / "graph.json").write_text(json.dumps(graph), encoding="utf-8")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = tmp_path / "bank.json"
    usage = message.startswith("--concurrency")  # a value out of range: a usage error (docs/cli.md)
    assert main(["generate", "--labels", str(labels), "--out", str(out), "--base-url", server.base_url,
                 *FAST, *args]) == (2 if usage else 1)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("apclip-prompts: error:") and message in err[0]
    assert server.requests == [] and not out.exists()


def test_derive_writes_an_unreviewed_candidate(server, labels, tmp_path, capsys):
    out = tmp_path / "graph.json"
    assert main(["derive", "--out", str(out), "--labels", str(labels), "--base-url", server.base_url,
                 "--model", "fake-model", "--attributes-per-aspect", "3"]) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["reviewed"] is False and [len(a["attributes"]) for a in data["aspects"]] == [3, 3, 3]
    assert "archery" in server.questions()[0]
    assert generate(server, labels, tmp_path / "bank.json", "--graph", str(out)) == 1
    assert "unreviewed" in last_error(capsys)
    data["reviewed"] = True
    out.write_text(json.dumps(data), encoding="utf-8")
    assert generate(server, labels, tmp_path / "bank.json", "--graph", str(out), "--llm-prompts", "1") == 0
    assert len(load_prompt_bank(tmp_path / "bank.json").descriptions("archery")) == 9
    assert main(["derive", "--out", str(out), "--base-url", server.base_url]) == 1  # never overwrites silently
    assert "--force" in last_error(capsys)


def test_labels_files_are_read_like_export_reads_them(server, tmp_path, capsys):
    """Comments and ViFi-CLIP CSV rows are not labels: the bank must match the labels export sees."""
    labels = tmp_path / "labels.csv"
    labels.write_text("# kinetics subset\nid,name\n1,playing guitar\n0,abseiling\n", encoding="utf-8")
    out = tmp_path / "bank.json"
    assert main(["generate", "--labels", str(labels), "--out", str(out), "--strategy", "single"]) == 0
    assert json.loads(out.read_text())["classes"][0]["label"] == "abseiling"
    assert [c["label"] for c in json.loads(out.read_text())["classes"]] == ["abseiling", "playing guitar"]
