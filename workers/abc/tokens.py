"""Lexical view of one ABC tune: header/body lines, music tokens, lengths.

Only as much ABC as the training augmentations and the rhythm reading need: each music
line becomes a list of tokens whose texts join back to the line exactly, so an
augmentation edits the tokens it cares about and leaves the rest of the writer's spelling
(spaces, beaming, odd symbols) as it was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "FIELD_LINE",
    "NOTE_RE",
    "Token",
    "TuneLines",
    "broken_factors",
    "format_length",
    "is_chord_symbol",
    "join_tokens",
    "line_kind",
    "parse_length",
    "space_field_lookalikes",
    "split_lines",
    "tokenize",
]

# A field line: one letter (or "+" for a continuation) and a colon at the start of the line.
FIELD_LINE = re.compile(r"([A-Za-z+]):(.*)")

NOTE_RE = re.compile(
    r"(?P<acc>\^\^|\^|__|_|=)?(?P<letter>[A-Ga-g])(?P<octave>[,']*)(?P<length>\d*(?:/\d*)*)"
)
_LENGTH = r"\d*(?:/\d*)*"

# Tried in this order at each position; the first that matches gives the token's kind.
# A bar token swallows a volta number written against it ("|1", ":|2") because the number
# belongs to that bar line: cutting a line between them would leave a bare "1".
_TOKEN_PATTERNS: tuple[tuple[str, str], ...] = (
    ("comment", r"%.*"),
    ("string", r'"[^"]*"?'),
    ("field", r"\[[A-Za-z]:[^\]\n]*\]"),
    # Long decorations; no spaces or bar lines inside, so abc 1.6's "!" line breaks
    # around a bar of notes are never read as one decoration.
    ("deco", r"![^!\s|]{1,40}!|\+[^+\s|]{1,40}\+"),
    ("bar", r"\.?(?:\[\|\]|:*\|[|\]]*:*|:*\[\|:*|::+)(?:\[?\d+(?:[-,]\d+)*)?"),
    ("volta", r"\[\d+(?:[-,]\d+)*"),
    ("chord_open", r"\["),
    ("chord_close", r"\]" + _LENGTH),
    ("grace_open", r"\{/?"),
    ("grace_close", r"\}"),
    ("tuplet", r"\(\d+(?::\d*){0,2}"),
    ("slur", r"\.?\(|\)"),
    ("note", NOTE_RE.pattern),
    ("rest", r"[zx]" + _LENGTH),
    ("measure_rest", r"[ZX]\d*"),
    ("broken", r"[<>]+"),
    ("tie", r"\.?-"),
    # Single-character decorations, including the H-W / h-w letters U: may redefine.
    ("deco", r"[.~H-Wh-w]"),
    ("space", r"[ \t]+"),
    ("continuation", r"\\"),
)
_TOKEN_RE = re.compile(
    "|".join(f"(?P<k{i}>{pattern})" for i, (_, pattern) in enumerate(_TOKEN_PATTERNS))
)
_KINDS = {f"k{i}": kind for i, (kind, _) in enumerate(_TOKEN_PATTERNS)}


@dataclass(frozen=True)
class Token:
    """A piece of a music line; ``kind`` is one of the pattern names above or ``other``."""

    kind: str
    text: str


def tokenize(line: str) -> list[Token]:
    """Cut a music line into tokens whose texts join back to ``line`` exactly."""
    tokens: list[Token] = []
    pos = 0
    while pos < len(line):
        match = _TOKEN_RE.match(line, pos)
        if match is None or match.end() == pos:
            tokens.append(Token("other", line[pos]))
            pos += 1
            continue
        assert match.lastgroup is not None
        tokens.append(Token(_KINDS[match.lastgroup], match.group()))
        pos = match.end()
    return tokens


def join_tokens(tokens: list[Token]) -> str:
    return "".join(token.text for token in tokens)


def _is_fingering(token: Token) -> bool:
    """A quoted fingering ("4"): some collections (Ryan's, 448 tunes) write them where chord
    symbols go, but no chord symbol is all digits."""
    return token.kind == "string" and token.text[1:-1].strip().isdigit()


def is_chord_symbol(token: Token) -> bool:
    """A quoted chord symbol ("Am7"); quoted text starting with ^ _ < > @ is an annotation,
    and quoted digits are a fingering."""
    return (
        token.kind == "string"
        and token.text[1:2] not in ("^", "_", "<", ">", "@", '"', "")
        and not _is_fingering(token)
    )


@dataclass
class TuneLines:
    """A tune cut at its first K: line; ``header`` ends with that line."""

    header: list[str]
    body: list[str]


def split_lines(tune_text: str) -> TuneLines | None:
    """Header and body lines of one tune; None when it has no K: line to end the header."""
    lines = tune_text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for i, line in enumerate(lines):
        if line.startswith("K:"):
            return TuneLines(header=lines[: i + 1], body=lines[i + 1 :])
    return None


def line_kind(line: str) -> str:
    """``field``, ``comment`` (also ``%%`` directives) or ``music``, as the patcher sees it."""
    if line.startswith("%"):
        return "comment"
    if FIELD_LINE.match(line):
        return "field"
    return "music"


def parse_length(text: str) -> Fraction:
    """A note length suffix ("", "2", "/", "//", "3/2", "/4") as a multiple of the unit."""
    if not text:
        return Fraction(1)
    head, *slashes = text.split("/")
    value = Fraction(int(head) if head else 1)
    for part in slashes:
        value /= int(part) if part else 2
    return value


def broken_factors(text: str) -> tuple[Fraction, Fraction]:
    """Factors of the notes before and after `>`, `>>`, `<`...: `A>B` is A dotted, B halved."""
    short = Fraction(1, 2 ** len(text))
    long = 2 - short
    return (long, short) if text[0] == ">" else (short, long)


def format_length(value: Fraction, *, short_halves: bool = False) -> str:
    """The suffix for ``value``; ``short_halves`` writes 1/2 as "/" like many tune books."""
    if value.denominator == 1:
        return "" if value.numerator == 1 else str(value.numerator)
    if value.numerator == 1 and value.denominator == 2 and short_halves:
        return "/"
    numerator = "" if value.numerator == 1 else str(value.numerator)
    return f"{numerator}/{value.denominator}"


def space_field_lookalikes(tokens: list[Token]) -> list[Token]:
    """A space between an upper-case note and a following ``::`` (or ``:`` + not ``|``).

    music21 reads "B::" as the start of a B: field and drops the note; our converters go
    through music21, so text that an augmentation newly writes that way is kept apart.
    """
    out: list[Token] = []
    for token in tokens:
        if (
            out
            and out[-1].kind in ("note", "measure_rest")
            and out[-1].text[-1:].isupper()
            and token.text.startswith(":")
            and token.text[1:2] != "|"
        ):
            out.append(Token("space", " "))
        out.append(token)
    return out
