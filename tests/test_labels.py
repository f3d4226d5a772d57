"""Labels files: mmaction2 one-per-line and ViFi-CLIP CSV, comments, and the one-line errors."""
from __future__ import annotations

import pytest

from apclip.labels import LabelsError, labels_sha256, parse_labels, read_labels, split_camel_case


def test_one_label_per_line_with_comments_blanks_and_spaces(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("# kinetics subset\n\nabseiling\n  playing   guitar \n\n# end\nriding a bike\n", encoding="utf-8")
    assert read_labels(path) == ["abseiling", "playing guitar", "riding a bike"]


def test_vificlip_csv_with_header_is_ordered_by_id(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("id,name\n1,playing guitar\n0,abseiling\n2,\"dancing, ballet\"\n", encoding="utf-8")
    assert read_labels(path) == ["abseiling", "playing guitar", "dancing, ballet"]


def test_csv_without_header_and_bom(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes("\ufeff0,abseiling\n1,surfing water\n".encode("utf-8"))
    assert read_labels(path) == ["abseiling", "surfing water"]


def test_plain_labels_with_commas_stay_plain():
    assert parse_labels("push up, fast\nsit down\n") == ["push up, fast", "sit down"]


def test_unicode_labels_survive():
    assert parse_labels("café dancing\n跳舞\n") == ["café dancing", "跳舞"]


@pytest.mark.parametrize("text, message", [
    ("", "no labels"),
    ("# only a comment\n\n", "no labels"),
    ("id,name\n", "no labels"),
    ("a\nb\na\n", "'a' twice"),
    ("id,name\n0,a\n0,b\n", "id 0 appears twice"),
    ("id,name\n0,a\nx,b\n", "not `id,name`"),
])
def test_bad_labels_are_one_line_errors(text, message):
    with pytest.raises(LabelsError, match=message) as info:
        parse_labels(text, "labels.txt")
    assert "\n" not in str(info.value) and "labels.txt" in str(info.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(LabelsError, match="does not exist"):
        read_labels(tmp_path / "missing.txt")
    binary = tmp_path / "labels.bin"
    binary.write_bytes(b"\xff\xfe\xfa\x00abc")
    with pytest.raises(LabelsError, match="unreadable"):
        read_labels(binary)
    with pytest.raises(LabelsError, match="unreadable"):
        read_labels(tmp_path)


def test_labels_hash_is_order_sensitive():
    assert labels_sha256(["a", "b"]) != labels_sha256(["b", "a"])
    assert labels_sha256(["a", "b"]) == labels_sha256(["a", "b"])


def test_ucf101_classind_is_ordered_by_index_and_split_only_when_asked(tmp_path):
    path = tmp_path / "classInd.txt"
    path.write_text("2 ApplyLipstick\n1 ApplyEyeMakeup\n3 YoYo\n4 TaiChi\n5 PlayingDaf\n", encoding="utf-8")
    assert read_labels(path) == ["ApplyEyeMakeup", "ApplyLipstick", "YoYo", "TaiChi", "PlayingDaf"]
    assert read_labels(path, split_camel=True) == ["Apply Eye Makeup", "Apply Lipstick", "Yo Yo", "Tai Chi",
                                                   "Playing Daf"]


@pytest.mark.parametrize("text, labels", [
    ("3 legged race\nswimming\n", ["3 legged race", "swimming"]),  # not every line numbered
    ("10 pin bowling\n3 legged race\n", ["10 pin bowling", "3 legged race"]),  # numbers are not 1..K
    ("0 a\n1 b\n", ["a", "b"]),  # 0-based indices count too
])
def test_numbered_lines_are_classind_only_when_they_number_every_label(text, labels):
    assert parse_labels(text) == labels


def test_camel_case_split_keeps_acronyms_and_plain_names():
    assert split_camel_case("PlayingDhol") == "Playing Dhol"
    assert split_camel_case("HTMLParser") == "HTML Parser"
    assert split_camel_case("riding a bike") == "riding a bike"
