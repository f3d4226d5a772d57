"""The prompt bank format: load/save, content hash, the API export and training use, graphs, review."""
from __future__ import annotations

import csv
import json

import pytest

from apclip.errors import ApclipError
from apclip.export.prompts.graph import UnreviewedGraphError, default_graph, load_graph, snake_case
from apclip.export.prompts.review import ReviewError, apply_review, write_review_csv
from apclip.export.prompts.cli import main
from apclip.prompt_bank import (
    AttributeGraph, ClassPrompts, PromptBank, PromptBankError, PromptEntry, format_prompt, load_prompt_bank,
    save_prompt_bank,
)


def make_bank(texts=("The archer aims.", "A field with targets."), labels=("archery", "tańczyć 踊り")):
    graph = default_graph()
    slots = graph.slots()
    classes = tuple(
        ClassPrompts(label, tuple(PromptEntry(*slots[i], 0, f"{text} {k}") for i, text in enumerate(texts)))
        for k, label in enumerate(labels)
    )
    return PromptBank("action-centric", "fake-model", {"llm_prompts": 1}, graph, classes)


def test_format_prompt():
    assert format_prompt("archery", "The archer aims.") == "a video of archery. The archer aims."
    assert format_prompt("archery") == "a video of archery."
    assert format_prompt("archery", "") == "a video of archery."


def test_round_trip_keeps_content_and_hash(tmp_path):
    bank = make_bank()
    path = save_prompt_bank(bank, tmp_path / "bank.json")
    loaded = load_prompt_bank(path)
    assert loaded == bank
    assert loaded.sha256 == bank.sha256 == json.loads(path.read_text(encoding="utf-8"))["sha256"]
    assert loaded.labels == ["archery", "tańczyć 踊り"]
    assert loaded.descriptions("tańczyć 踊り") == ["The archer aims. 1", "A field with targets. 1"]
    assert loaded.prompts("archery")[0] == "a video of archery. The archer aims. 0"
    assert loaded.descriptions("juggling") is None
    assert [p.name for p in tmp_path.iterdir()] == ["bank.json"]  # no temporary file left behind


def test_hash_depends_on_content_not_formatting(tmp_path):
    bank = make_bank()
    path = save_prompt_bank(bank, tmp_path / "bank.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    (tmp_path / "compact.json").write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
    assert load_prompt_bank(tmp_path / "compact.json").sha256 == bank.sha256
    assert make_bank(texts=("The archer aims!", "A field with targets.")).sha256 != bank.sha256


def test_hand_edits_are_detected_unless_the_hash_is_removed(tmp_path):
    path = save_prompt_bank(make_bank(), tmp_path / "bank.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    data["classes"][0]["prompts"][0]["text"] = "Edited."
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(PromptBankError, match="does not match its sha256"):
        load_prompt_bank(path)
    del data["sha256"]
    path.write_text(json.dumps(data), encoding="utf-8")
    assert load_prompt_bank(path).descriptions("archery")[0] == "Edited."


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("{not json", "not valid JSON"),
    ('{"format": "something-else"}', "not an apclip prompt bank"),
    ('{"format": "apclip-prompt-bank", "format_version": 99}', "format_version 99"),
    ('{"format": "apclip-prompt-bank", "format_version": 1, "strategy": "x", "classes": [{"label": "a"}]}',
     "malformed"),
])
def test_bad_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bank.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ApclipError, match=message) as info:
        load_prompt_bank(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_duplicate_labels_are_refused():
    entry = (PromptEntry(None, None, 0, "x."),)
    with pytest.raises(PromptBankError, match="twice"):
        PromptBank("direct", None, {}, None, (ClassPrompts("a", entry), ClassPrompts("a", entry)))


def test_default_graph_is_three_aspects_of_four():
    graph = default_graph()
    assert [a.name for a in graph.aspects] == ["scene", "actor", "body"]
    assert [len(a.attributes) for a in graph.aspects] == [4, 4, 4]
    assert graph.reviewed and all(t.definition for a in graph.aspects for t in a.attributes)


def test_graph_validation(tmp_path):
    data = default_graph().to_dict()
    data["aspects"][1]["attributes"][0]["name"] = "location"  # already used in scene
    with pytest.raises(PromptBankError, match="appears twice"):
        AttributeGraph.from_dict(data)
    data["aspects"][1]["attributes"][0]["name"] = "Bad Name"
    with pytest.raises(PromptBankError, match="snake_case"):
        AttributeGraph.from_dict(data)
    candidate = default_graph().to_dict() | {"reviewed": False}
    (tmp_path / "g.json").write_text(json.dumps(candidate), encoding="utf-8")
    with pytest.raises(UnreviewedGraphError, match="reviewed"):
        load_graph(tmp_path / "g.json")
    assert not load_graph(tmp_path / "g.json", require_reviewed=False).reviewed
    assert snake_case("Body-part Movement") == "body_part_movement"


def _mark(csv_path, rejected_ids):
    with open(csv_path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        if row["id"] in rejected_ids:
            row["decision"] = "reject"
    with open(csv_path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_review_drops_rejected_rows_and_refuses_stale_tables(tmp_path):
    bank = make_bank()
    table = tmp_path / "review.csv"
    assert write_review_csv(bank, table) == 4
    _mark(table, {"1:0"})
    reviewed, dropped = apply_review(bank, table)
    assert dropped == 1
    assert reviewed.descriptions("tańczyć 踊り") == ["A field with targets. 1"]
    assert reviewed.descriptions("archery") == bank.descriptions("archery")
    assert reviewed.review["reviewed_sha256"] == bank.sha256 and reviewed.sha256 != bank.sha256
    with pytest.raises(ReviewError, match="does not match the bank"):
        apply_review(reviewed, table)  # the same table again would drop the wrong prompt
    _mark(table, {"1:0", "1:1"})
    with pytest.raises(ReviewError, match="every prompt of label"):
        apply_review(bank, table)


def test_review_cli_round_trip(tmp_path, capsys):
    bank_path = save_prompt_bank(make_bank(), tmp_path / "bank.json")
    table = tmp_path / "review.csv"
    assert main(["review", str(bank_path), "--csv", str(table)]) == 0
    _mark(table, {"0:1"})
    assert main(["apply-review", str(bank_path), str(table), "--out", str(tmp_path / "out.json")]) == 0
    assert load_prompt_bank(tmp_path / "out.json").descriptions("archery") == ["The archer aims. 0"]
    with open(table, encoding="utf-8") as f:
        text = f.read().replace(",reject", ",maybe")
    table.write_text(text, encoding="utf-8")
    assert main(["apply-review", str(bank_path), str(table)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("apclip-prompts: error:") and "neither keep nor reject" in err
    assert load_prompt_bank(bank_path) == make_bank()  # a failed apply leaves the bank untouched
