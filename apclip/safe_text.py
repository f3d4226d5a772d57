"""Text from a bundle, a label file or an LLM, made safe for whoever reads our output.

Labels and prompts are data from outside. Printed raw, a label holding ESC [ ... or an OSC sequence can
rewrite the terminal (hide lines, set the title, plant a hyperlink; some terminals answer queries into
the input); in a CSV, a cell starting with = + - @ is run as a formula by spreadsheet programs.
"""
from __future__ import annotations

import unicodedata

# Bidirectional overrides and isolates reorder what the reader sees ("trojan source").
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def terminal_safe(text: object) -> str:
    """`text` with control characters (C0, DEL, C1: ESC, BEL, CSI ...) and bidi overrides shown escaped
    (\\x1b, \\u202e) instead of acted on. Printable text, non-ASCII letters included, is unchanged."""
    text = str(text)
    if text.isprintable() and not _BIDI.intersection(text):
        return text
    out = []
    for char in text:
        if char in _BIDI or unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp"):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_safe(value: object) -> object:
    """A CSV cell a spreadsheet shows as text: strings starting with = + - @ tab CR (or ') get a leading
    ' (OWASP's advice). Numbers, and strings that are numbers (-0.25), stay as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _is_number(value):
        return "'" + value
    return value


def csv_unsafe(value: str) -> str:
    """The inverse of csv_safe for cells read back (the review table)."""
    if len(value) > 1 and value[0] == "'" and value[1:].startswith(_FORMULA_START) and not _is_number(value[1:]):
        return value[1:]
    return value
