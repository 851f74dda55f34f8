"""ABC as found in the wild: each dialect feature reads the way the format page implies."""

from __future__ import annotations

from workers.abc import ParsedPiece, bar_patches, decode_abc_bytes, parse_abc_text


def pieces(text: str) -> list[ParsedPiece]:
    return [p for p in parse_abc_text(text) if isinstance(p, ParsedPiece)]


def test_tunes_without_x_between_numbered_ones_are_kept() -> None:
    text = (
        "%%abc-version 2.1\nM:4/4\n\n"
        "T:First, no X\nK:C\nCDEF|\n\n"
        "X:5\nT:Five\nK:C\nCDEF|\n\n"
        "Free text about the next tune.\n\n"
        "X:17\nT:Seventeen\nK:C\nGABc|\n\n"
        "T:Last, no X\nK:C\ncdef|\n"
    )
    got = [(p.index, p.x_number, p.header.title) for p in pieces(text)]
    assert got == [
        (0, None, "First, no X"),
        (1, "5", "Five"),
        (2, "17", "Seventeen"),
        (3, None, "Last, no X"),
    ]


def test_multi_voice_keeps_voice_and_score_lines_as_patches() -> None:
    [p] = pieces(
        "X:1\nT:Two voices\nM:4/4\nL:1/8\n%%score (S A)\nK:G\n"
        "V:S\nGABc d2d2|e4 d4|\nV:A\nDEFG A2A2|B4 A4|\n"
    )
    patches = bar_patches(p.music_text)
    assert patches[:6] == ["M:4/4", "L:1/8", "%%score (S A)", "K:G", "V:S", "GABc d2d2|"]
    assert "V:A" in patches


def test_lyrics_and_directives_never_reach_the_encoder() -> None:
    [p] = pieces(
        "X:1\nT:Song\n%%MIDI program 1\nM:3/4\nK:C % key comment\n"
        "C2 D|E2 F|\nw:la la la la\nG3|]\nW:Second verse\n"
    )
    assert p.music_text == "M:3/4\nK:C\nC2 D|E2 F|\nG3|]\n"
    assert p.header.extra["W"] == ["Second verse"]


def test_inline_fields_stay_in_the_bar() -> None:
    [p] = pieces("X:1\nT:Inline\nM:4/4\nK:D\nDEFG|[K:G] GABc|[M:3/4] d2 c|\n")
    assert bar_patches(p.music_text)[2:] == ["DEFG|", "[K:G] GABc|", "[M:3/4] d2 c|"]


def test_continued_lines_join_into_one_body() -> None:
    # The reference concatenates body lines, so the continuation mark stays in the bar text.
    [p] = pieces("X:1\nT:Cont\nM:4/4\nK:C\nCDEF|\\\nGABc|\n")
    assert bar_patches(p.music_text)[2:] == ["CDEF|", "\\GABc|"]


def test_line_endings_bom_and_legacy_encodings_are_recorded() -> None:
    text, enc = decode_abc_bytes(b"\xef\xbb\xbfX:1\r\nT:Bom\r\nK:C\r\nCDEF|\r\n")
    assert (text, enc) == ("X:1\nT:Bom\nK:C\nCDEF|\n", "utf-8-sig")
    text, enc = decode_abc_bytes('X:1\rT:Sí Bheag\rK:D\r"^Fín"DEF|\r'.encode("latin-1"))
    assert enc == "cp1252"
    [p] = pieces(text)
    assert p.header.title == "Sí Bheag"  # kept intact in metadata
    assert bar_patches(p.music_text)[-1] == '"^Fin"DEF|'  # music text is transliterated
