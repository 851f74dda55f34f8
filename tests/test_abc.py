"""Pin the ABC decode / split / header / filter / patch rules with small literal examples."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from workers.abc import (
    EOP_ID,
    PATCH_LENGTH,
    AbcDecodeError,
    AbcParseError,
    ParsedPiece,
    PieceError,
    RawTune,
    bar_patches,
    decode_abc_bytes,
    encode_patches,
    music_text_for_encoder,
    parse_abc_text,
    parse_tune,
    patch_ids,
    read_header,
    split_tunes,
)

WIKIMT = Path(__file__).resolve().parents[2] / "shared/data/wikimt/wikimusictext.json"


def ids_of(text: str) -> list[int]:
    return [ord(c) - 31 for c in text]


# --- decode -----------------------------------------------------------------------------


def test_decode_plain_utf8() -> None:
    assert decode_abc_bytes("X:1\nT:Café\n".encode()) == ("X:1\nT:Café\n", "utf-8")


def test_decode_strips_utf8_bom() -> None:
    text, enc = decode_abc_bytes(b"\xef\xbb\xbfX:1\nK:C\n")
    assert (text, enc) == ("X:1\nK:C\n", "utf-8-sig")


def test_decode_latin1_falls_back_to_cp1252() -> None:
    # 0xE9 is "é" in both cp1252 and latin-1 and is invalid UTF-8 on its own.
    assert decode_abc_bytes(b"T:Caf\xe9\n") == ("T:Café\n", "cp1252")


def test_decode_byte_undefined_in_cp1252_uses_latin1() -> None:
    text, enc = decode_abc_bytes(b"T:Caf\xe9 \x81x\n")
    assert enc == "latin-1"
    assert text.startswith("T:Café")


def test_decode_normalises_crlf_and_lone_cr() -> None:
    assert decode_abc_bytes(b"X:1\r\nT:a\rK:C\r\n")[0] == "X:1\nT:a\nK:C\n"


def test_decode_utf16_with_bom() -> None:
    assert decode_abc_bytes("X:1\nK:C\n".encode("utf-16")) == ("X:1\nK:C\n", "utf-16")


@pytest.mark.parametrize("data", [b"", b"   \n\t\r\n", b"\xef\xbb\xbf  \n"])
def test_decode_empty(data: bytes) -> None:
    with pytest.raises(AbcDecodeError, match="file is empty"):
        decode_abc_bytes(data)


@pytest.mark.parametrize(
    "data",
    [
        b"X:1\x00\x00K:C",
        b"PK\x03\x04\x14\x00\x06\x00",  # a zip (.mxl) header
        bytes(range(1, 32)) * 4 + b"abc",  # control junk without NUL
    ],
)
def test_decode_binary(data: bytes) -> None:
    with pytest.raises(AbcDecodeError, match="looks like binary data, not ABC text"):
        decode_abc_bytes(data)


def test_decode_error_is_value_error() -> None:
    assert issubclass(AbcDecodeError, ValueError)


# --- split ------------------------------------------------------------------------------


def test_split_multi_tune_with_gaps_and_file_header() -> None:
    text = (
        "% file header comment\n"
        "M:6/8\n"
        "\n"
        "X:1\nT:One\nK:C\nabc|\n"
        "\n\n"
        "free text between tunes\n"
        "\n"
        "X: 7 % seven\nT:Two\nK:D\ndef|\n"
        "X:8\nK:G\nGAB|"
    )
    tunes = split_tunes(text)
    assert [t.index for t in tunes] == [0, 1, 2]
    assert [t.x_number for t in tunes] == ["1", "7", "8"]
    assert tunes[0].text == "X:1\nT:One\nK:C\nabc|"
    assert tunes[0].start_line == 4
    # Free text after the blank line does not belong to tune 1.
    assert "free text" not in tunes[0].text
    assert tunes[1].text == "X: 7 % seven\nT:Two\nK:D\ndef|"
    assert tunes[1].start_line == 12
    assert tunes[2].text == "X:8\nK:G\nGAB|"
    assert tunes[2].start_line == 16


def test_split_no_x_but_k_is_one_tune() -> None:
    tunes = split_tunes("\n\nT:Snippet\nK:C\nabc|\n\ndef|\n\n")
    assert tunes == [
        RawTune(index=0, x_number=None, text="T:Snippet\nK:C\nabc|\n\ndef|", start_line=3)
    ]


def test_split_nothing_abc() -> None:
    assert split_tunes("") == []
    assert split_tunes("hello\nworld") == []


def test_split_empty_x_value_is_none() -> None:
    assert split_tunes("X:\nK:C\nabc|")[0].x_number is None


def test_split_handles_crlf() -> None:
    assert [t.x_number for t in split_tunes("X:1\r\nK:C\r\n\r\nX:2\r\nK:D")] == ["1", "2"]


# --- header -----------------------------------------------------------------------------


def test_header_fields_and_non_ascii() -> None:
    header = read_header(
        "X:3\n"
        "T:Dvořák — Humoreske % a comment\n"
        "T:Second title\n"
        "C:Antonín Dvořák\n"
        "C:arr. Zoë\n"
        "O:Česko\n"
        "R:waltz\n"
        "N:note one\n"
        "Z:transcriber\n"
        "M:2/4\n"
        "L:1/16\n"
        "Q:1/4=60\n"
        "S:book\n"
        "K:Gb  % key\n"
        "T:Part B title in body\n"
        "abc|\n"
        "W:Words here\n"
        "+:and more"
    )
    assert header.x_number == "3"
    assert header.title == "Dvořák — Humoreske"
    assert header.composer == "Antonín Dvořák"
    assert header.origin == "Česko"
    assert header.rhythm == "waltz"
    assert header.meter == "2/4"
    assert header.unit_length == "1/16"
    assert header.tempo == "1/4=60"
    assert header.key == "Gb"
    assert header.extra == {
        "T": ["Second title"],
        "C": ["arr. Zoë"],
        "N": ["note one"],
        "Z": ["transcriber"],
        "S": ["book"],
        "W": ["Words here and more"],
    }


def test_header_missing_fields_are_none() -> None:
    header = read_header("X:1\nabc|")
    assert header.title is None
    assert header.key is None
    assert header.extra == {}


def test_header_continuation_and_empty_key() -> None:
    header = read_header("X:1\nT:Long\n+:title\nT:\nK:\nabc|")
    assert header.title == "Long title"
    assert header.key == ""
    assert "T" not in header.extra


# --- filter -----------------------------------------------------------------------------


def test_filter_drops_metadata_keeps_music_fields() -> None:
    tune = (
        "X:1\nT:Title\nC:Composer\nA:area\nB:book\nD:disc\nF:file\nG:group\nH:history\n"
        "N:notes\nO:origin\nR:reel\nr:remark\nS:source\nZ:transcr\n"
        "L:1/8\nM:4/4\nQ:1/4=120\nI:linebreak $\nP:AB\n%%score (1 2)\n%%MIDI program 1\n"
        "% a comment\nV:1\nK:G\nabc|def|\nw:la la\nW:words"
    )
    assert music_text_for_encoder(tune) == (
        "L:1/8\nM:4/4\nQ:1/4=120\nI:linebreak $\nP:AB\n%%score (1 2)\nV:1\nK:G\nabc|def|\n"
    )


def test_filter_keeps_lines_starting_with_g_that_are_not_fields() -> None:
    # The reference's "G" entry (no colon) is not copied: music lines starting with G stay.
    assert music_text_for_encoder("K:C\nG\nGABc|\nG2 A2|") == "K:C\nG\nGABc|\nG2 A2|\n"


def test_filter_cuts_inline_comment_without_eating_the_bar_line() -> None:
    # The reference would give "abc" here: it drops the character before the "%".
    assert music_text_for_encoder("K:C\nabc|%3\ndef | % bar 4") == "K:C\nabc|\ndef |\n"


def test_filter_cuts_at_first_percent() -> None:
    assert music_text_for_encoder("K:C\nab|%x%y") == "K:C\nab|\n"


def test_filter_escaped_percent_is_not_a_comment() -> None:
    assert music_text_for_encoder('K:C\n"^50\\%" ab|%c') == 'K:C\n"^50\\%" ab|\n'


def test_filter_drops_lines_emptied_by_comment_and_blank_lines() -> None:
    assert music_text_for_encoder("K:C\n\n   % indented comment\nab|") == "K:C\nab|\n"


def test_filter_drops_continuation_of_dropped_field_only() -> None:
    assert music_text_for_encoder("T:a\n+:b\nI:x\n+:y\nK:C\nab|") == "I:x\n+:y\nK:C\nab|\n"


def test_filter_keeps_score_line_with_percent_untouched() -> None:
    assert music_text_for_encoder("%%score 1 % 2\nK:C") == "%%score 1 % 2\nK:C\n"


# --- bar patches ------------------------------------------------------------------------


def test_field_line_is_its_own_patch_and_flushes_body() -> None:
    assert bar_patches("L:1/8\nK:C\nab|cd|\nV:2\nef|") == [
        "L:1/8",
        "K:C",
        "ab|",
        "cd|",
        "V:2",
        "ef|",
    ]


def test_score_line_is_its_own_patch() -> None:
    assert bar_patches("ab|\n%%score (1 2)\ncd|") == ["ab|", "%%score (1 2)", "cd|"]


def test_single_char_line_and_non_field_colon_line_are_body() -> None:
    # "K" alone is too short to be a field; "1:" does not start with a letter.
    assert bar_patches("K\n1:ab|") == ["K1:ab|"]


def test_body_lines_join_without_newline() -> None:
    assert bar_patches("ab\ncd|ef\ngh|") == ["abcd|", "efgh|"]


def test_leading_bar_line_glued_to_next_piece() -> None:
    assert bar_patches("|:ab|cd:|") == ["|:ab|", "cd:|"]


def test_trailing_piece_without_bar_line_dropped() -> None:
    assert bar_patches("ab|cd") == ["ab|"]
    assert bar_patches("abcd") == []


def test_lone_bar_line_body_gives_no_patch() -> None:
    assert bar_patches("K:C\n|") == ["K:C"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # Bodies start with two notes so they are not mistaken for a field line ("a:...").
        ("ab|:cd|", ["ab|:", "cd|"]),
        ("ab::cd|", ["ab::", "cd|"]),
        ("ab:|cd|", ["ab:|", "cd|"]),
        ("ab[|cd|", ["ab[|", "cd|"]),
        ("ab||cd|", ["ab||", "cd|"]),
        ("ab|]cd|", ["ab|]", "cd|"]),
        ("ab|cd|", ["ab|", "cd|"]),
        # ":|" then "|:" (not "||"): pieces ab, :|, |:, cd, | are paired blindly as the
        # reference does, so the second patch starts with its bar line and the last "|" goes.
        ("ab:||:cd|", ["ab:|", "|:cd"]),
    ],
)
def test_bar_line_kinds(body: str, expected: list[str]) -> None:
    assert bar_patches(body) == expected


def test_pairing_follows_reference_for_double_bar_lines() -> None:
    # "a| |b|" splits to a, |, " ", |, b, | and neighbours are paired as they come.
    assert bar_patches("a| |b|") == ["a|", " |", "b|"]


def test_first_empty_line_removed_only() -> None:
    # Empty lines never change the patches (they add "" to the body), only the first goes.
    assert bar_patches("\nK:C\n\nab|\n") == ["K:C", "ab|"]


def test_transliteration() -> None:
    assert bar_patches('"^é"a|') == ['"^e"a|']
    assert bar_patches("T:Dvořák") == ["T:Dvorak"]


# --- patch ids --------------------------------------------------------------------------


def test_patch_ids_short_patch() -> None:
    assert patch_ids("ab|") == [*ids_of("ab|"), EOP_ID] + [0] * 60


def test_patch_ids_63_chars_end_mark_at_63() -> None:
    ids = patch_ids("a" * 63)
    assert ids[:63] == [ord("a") - 31] * 63
    assert ids[63] == EOP_ID


def test_patch_ids_exactly_64_chars_no_end_mark() -> None:
    assert patch_ids("b" * 64) == [ord("b") - 31] * 64


def test_patch_ids_truncates_long_text() -> None:
    assert patch_ids("c" * 63 + "XYZ") == [ord("c") - 31] * 63 + [ord("X") - 31]


def test_patch_ids_space_and_tilde_bounds() -> None:
    assert patch_ids(" ~")[:3] == [1, 95, EOP_ID]


def test_patch_ids_outside_printable_ascii_is_zero() -> None:
    assert patch_ids("a\tb\x7fé")[:6] == [ord("a") - 31, 0, ord("b") - 31, 0, 0, EOP_ID]


def test_tab_survives_transliteration_and_becomes_zero() -> None:
    assert encode_patches("a\tb|", 8)[0, :5].tolist() == [ord("a") - 31, 0, ord("b") - 31, 93, 97]


# --- encode -----------------------------------------------------------------------------


def test_encode_adds_end_patch() -> None:
    arr = encode_patches("K:C\nab|cd|", 512)
    assert arr.dtype == np.uint8
    assert arr.shape == (4, PATCH_LENGTH)
    assert arr[0].tolist() == patch_ids("K:C")
    assert arr[2].tolist() == patch_ids("cd|")
    assert arr[-1].tolist() == [EOP_ID] * PATCH_LENGTH


def test_encode_truncation_drops_end_patch() -> None:
    arr = encode_patches("K:C\nab|cd|", 3)
    assert arr.shape == (3, PATCH_LENGTH)
    assert int(arr[-1].sum()) != EOP_ID * PATCH_LENGTH
    assert arr[-1].tolist() == patch_ids("cd|")


def test_encode_empty_text_is_just_end_patch() -> None:
    assert encode_patches("", 4).tolist() == [[EOP_ID] * PATCH_LENGTH]


# --- pieces -----------------------------------------------------------------------------


def test_parse_tune_fields() -> None:
    raw = RawTune(index=2, x_number="5", text="X:5\nT:Ané\nL:1/8\nK:C\nab|cd|ef", start_line=9)
    piece = parse_tune(raw)
    assert piece.music_text == "L:1/8\nK:C\nab|cd|ef\n"
    assert piece.content_sha256 == hashlib.sha256(piece.music_text.encode()).hexdigest()
    assert piece.patch_count == 5  # L:, K:, ab|, cd|, end patch
    assert piece.header.title == "Ané"
    assert (piece.index, piece.x_number, piece.abc_text) == (2, "5", raw.text)


def test_parse_tune_without_key() -> None:
    raw = RawTune(index=0, x_number="3", text="X:3\nT:Foo\nab|", start_line=1)
    with pytest.raises(AbcParseError, match=r"tune X:3 \(T: Foo\).*no K: \(key\) field"):
        parse_tune(raw)


def test_parse_tune_without_bars() -> None:
    raw = RawTune(index=0, x_number="1", text="X:1\nT:Foo\nK:C\nabc", start_line=1)
    with pytest.raises(AbcParseError, match="no complete bar"):
        parse_tune(raw)


def test_parse_abc_text_bad_tune_does_not_stop_others() -> None:
    results = parse_abc_text("X:1\nK:C\nab|\n\nX:2\nT:Bad\nab|\n\nX:3\nK:D\ncd|")
    assert [type(r) for r in results] == [ParsedPiece, PieceError, ParsedPiece]
    error = results[1]
    assert isinstance(error, PieceError)
    assert (error.index, error.x_number, error.error_class) == (1, "2", "AbcParseError")
    assert "T: Bad" in error.message


def test_parse_abc_text_no_tune() -> None:
    results = parse_abc_text("just some words")
    assert len(results) == 1
    assert isinstance(results[0], PieceError)
    assert results[0].index == 0
    assert "no tune found" in results[0].message


def test_content_hash_ignores_metadata() -> None:
    a = parse_abc_text("X:1\nT:One\nK:C\nab|")[0]
    b = parse_abc_text("X:9\nT:Other\nC:Someone\nK:C\nab| % comment")[0]
    assert isinstance(a, ParsedPiece)
    assert isinstance(b, ParsedPiece)
    assert a.content_sha256 == b.content_sha256


# --- WikiMT -----------------------------------------------------------------------------


# The reference's drop list, including its "G" entry that lacks the colon.
_REFERENCE_DROPPED = frozenset([*(f"{letter}:" for letter in "ABCDFHNORrSTWwXZ"), "G"])


def _reference_filter(text: str) -> str:
    """The reference metadata filter, quirks included, to compare against on real data."""
    out = []
    for line in text.split("\n"):
        if line[:2] in _REFERENCE_DROPPED:
            continue
        if line.startswith("%") and not line.startswith("%%score"):
            continue
        if "%" in line and not line.startswith("%%score"):
            line = line[: line.rindex("%")][:-1]
        out.append(line + "\n")
    return "".join(out)


@pytest.fixture(scope="module")
def wikimt() -> list[dict[str, str]]:
    if not WIKIMT.exists():
        pytest.skip(f"WikiMT not found at {WIKIMT}")
    return json.loads(WIKIMT.read_text(encoding="utf-8"))


def test_wikimt_all_pieces_parse(wikimt: list[dict[str, str]]) -> None:
    assert len(wikimt) == 1010
    for item in wikimt:
        results = parse_abc_text(item["music"])
        assert len(results) == 1
        piece = results[0]
        assert isinstance(piece, ParsedPiece), piece
        assert piece.patch_count >= 2


def test_wikimt_patches_match_reference_filter(wikimt: list[dict[str, str]]) -> None:
    # On WikiMT the two fixed quirks never trigger, so the patches must be the reference's.
    for item in wikimt:
        ours = encode_patches(music_text_for_encoder(item["music"]), 512)
        theirs = encode_patches(_reference_filter(item["music"]), 512)
        assert np.array_equal(ours, theirs)
