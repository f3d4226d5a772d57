"""The manual double-check of a prompt bank: export a CSV table, mark rows "reject", apply it.

Each row carries an id "<class index>:<prompt index>" plus the label and text it points at;
applying checks both, so a review of another (or an already reviewed) bank is refused instead
of dropping the wrong prompts. Only rejections are applied; edits to the text are not.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from apclip.errors import ApclipError
from apclip.safe_text import csv_safe, csv_unsafe
from apclip.prompt_bank import ClassPrompts, PromptBank, format_prompt, write_text_atomic
from apclip.tokenizer import count_tokens

COLUMNS = ("id", "label", "llm_prompt", "aspect", "attribute", "tokens", "text", "decision")
KEEP = {"", "keep", "k", "ok", "y", "yes"}
REJECT = {"reject", "rejected", "r", "x", "n", "no", "drop"}


class ReviewError(ApclipError):
    pass


def write_review_csv(bank: PromptBank, path: str | Path) -> int:
    """Write the review table (every prompt marked "keep"); returns the number of rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    rows = 0
    for k, cls in enumerate(bank.classes):
        for i, entry in enumerate(cls.entries):
            tokens = count_tokens(format_prompt(cls.label, entry.text))
            writer.writerow([csv_safe(cell) for cell in (f"{k}:{i}", cls.label, entry.llm_prompt, entry.aspect or "",
                                                         entry.attribute or "", tokens, entry.text, "keep")])
            rows += 1
    # utf-8-sig so that spreadsheet programs open non-ASCII labels correctly.
    write_text_atomic(path, buffer.getvalue(), encoding="utf-8-sig")
    return rows


def read_rejections(bank: PromptBank, csv_path: str | Path) -> set[tuple[int, int]]:
    """(class index, prompt index) of every row marked rejected, each checked against the bank."""
    csv_path = Path(csv_path)
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as f:
            rows = [{key: csv_unsafe(value) if isinstance(value, str) else value for key, value in row.items()}
                    for row in csv.DictReader(f)]  # cells written with csv_safe's leading ' read back as written
    except FileNotFoundError:
        raise ReviewError(f"review table {csv_path} does not exist; write it with `apclip-prompts review`") \
            from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReviewError(f"review table {csv_path} cannot be read as a UTF-8 CSV: {exc}") from None
    if rows and not {"id", "label", "text", "decision"} <= set(rows[0]):
        raise ReviewError(f"review table {csv_path} needs the columns id, label, text and decision "
                          f"(as written by `apclip-prompts review`)")
    rejected: set[tuple[int, int]] = set()
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        decision = (row.get("decision") or "").strip().lower()
        if decision in KEEP:
            continue
        if decision not in REJECT:
            raise ReviewError(f"review table {csv_path} line {number}: decision {row['decision']!r} is neither "
                              f"keep nor reject")
        rejected.add(_locate(bank, row, f"review table {csv_path} line {number}"))
    return rejected


def _locate(bank: PromptBank, row: dict[str, str], where: str) -> tuple[int, int]:
    try:
        k, i = (int(part) for part in row["id"].split(":"))
        cls = bank.classes[k]
        entry = cls.entries[i]
    except (ValueError, IndexError):
        raise ReviewError(f"{where}: id {row['id']!r} is not in this bank; export a fresh table with "
                          f"`apclip-prompts review`") from None
    if cls.label != row["label"] or entry.text != row["text"]:
        raise ReviewError(f"{where}: row {row['id']} does not match the bank (label or text differ: was the table "
                          f"exported from another bank, or already applied?); export a fresh table with "
                          f"`apclip-prompts review`")
    return k, i


def apply_review(bank: PromptBank, csv_path: str | Path) -> tuple[PromptBank, int]:
    """(the bank without the rejected prompts, how many were dropped)."""
    rejected = read_rejections(bank, csv_path)
    classes = []
    for k, cls in enumerate(bank.classes):
        kept = tuple(e for i, e in enumerate(cls.entries) if (k, i) not in rejected)
        if not kept:
            raise ReviewError(f"review table {csv_path} rejects every prompt of label {cls.label!r}; keep at "
                              f"least one per label")
        classes.append(ClassPrompts(cls.label, kept))
    previous = (bank.review or {}).get("rejected", 0)
    review = {"csv": Path(csv_path).name, "rejected": previous + len(rejected), "reviewed_sha256": bank.sha256}
    return PromptBank(bank.strategy, bank.model, bank.settings, bank.graph, tuple(classes), review), len(rejected)
