"""Note-length spelling augmentations: another L: unit, or another duple meter spelling."""

from __future__ import annotations

import random
from fractions import Fraction

from orchestrator.training.augment_pitch import read_note
from workers.abc.rhythm import DUPLE_METERS, default_unit, unit_text, unit_value
from workers.abc.spelling import duple_spelling
from workers.abc.tokens import (
    Token,
    format_length,
    join_tokens,
    line_kind,
    parse_length,
    space_field_lookalikes,
    split_lines,
    tokenize,
)

__all__ = ["respell_meter", "rewrite_unit_length", "scale_unit_length", "scaled_token"]


def _chord_closes(tokens: list[Token]) -> dict[int, int]:
    """Index of each chord's "[" -> index of its "]"."""
    closes: dict[int, int] = {}
    opened: int | None = None
    for j, token in enumerate(tokens):
        if token.kind == "chord_open":
            opened = j
        elif token.kind == "chord_close" and opened is not None:
            closes[opened] = j
            opened = None
    return closes


def scaled_token(token: Token, factor: Fraction, *, short_halves: bool = False) -> Token:
    """A note, rest or chord close (``]2``) with its length multiplied by ``factor``."""
    head = len(token.text) - len(read_note(token.text)[2]) if token.kind == "note" else 1
    value = parse_length(token.text[head:]) * factor
    return Token(token.kind, token.text[:head] + format_length(value, short_halves=short_halves))


def _scale_lengths(tokens: list[Token], factor: Fraction, short: bool) -> list[Token]:
    closes = _chord_closes(tokens)
    out: list[Token] = []
    in_grace = False
    # A chord lasts its inner length times the length after "]", so exactly one of the two
    # is scaled: the outer one when written, else every inner note.
    outer_close: int | None = None
    for j, token in enumerate(tokens):
        if token.kind == "grace_open":
            in_grace = True
        elif token.kind == "grace_close":
            in_grace = False
        elif token.kind == "chord_open":
            close = closes.get(j)
            outer_close = close if close is not None and tokens[close].text != "]" else None
        elif token.kind == "chord_close":
            if j == outer_close:
                token = scaled_token(token, factor, short_halves=short)
            outer_close = None
        elif (token.kind == "note" and not in_grace and outer_close is None) or (
            token.kind == "rest"
        ):
            token = scaled_token(token, factor, short_halves=short)
        out.append(token)
    return out


def scale_unit_length(tune_text: str, factor: Fraction, *, short_halves: bool = False) -> str:
    """The same music with every note length multiplied by ``factor`` and L: divided by it
    (factor 2: L:1/8 -> L:1/16, ``A`` -> ``A2``, ``A/2`` -> ``A``); ``short_halves`` writes
    a half as ``/``.

    Grace notes keep their lengths (ABC leaves their unit to the reader); multi-bar rests
    (``Z4``) count bars, not units; broken rhythms and tuplets are ratios and stay. A tune
    without L: gets one, from ABC's default for its meter. Unchanged when an L: value
    cannot be read.
    """
    lines = split_lines(tune_text)
    if lines is None:
        return tune_text
    header = list(lines.header)
    units: dict[int, Fraction] = {}
    for i, line in enumerate(header):
        if line.startswith("L:"):
            value = unit_value(line[2:])
            if value is None:
                return tune_text
            units[i] = value
    for i, value in units.items():
        header[i] = f"L:{unit_text(value / factor)}"
    if not units:
        header.insert(len(header) - 1, f"L:{unit_text(default_unit(header) / factor)}")
    body: list[str] = []
    for line in lines.body:
        kind = line_kind(line)
        if kind == "music":
            tokens = []
            for token in tokenize(line):
                if token.kind == "field" and token.text.startswith("[L:"):
                    value = unit_value(token.text[3:-1])
                    if value is not None:
                        token = Token("field", f"[L:{unit_text(value / factor)}]")
                tokens.append(token)
            scaled = _scale_lengths(tokens, factor, short_halves)
            line = join_tokens(space_field_lookalikes(scaled))
        elif kind == "field" and line.startswith("L:"):
            value = unit_value(line[2:])
            if value is not None:
                line = f"L:{unit_text(value / factor)}"
        body.append(line)
    return "\n".join(header + body)


def rewrite_unit_length(tune_text: str, rng: random.Random) -> str:
    """:func:`scale_unit_length` by 2 or 1/2, whichever keeps L: between 1/64 and 1."""
    lines = split_lines(tune_text)
    if lines is None:
        return tune_text
    first = next((line for line in lines.header if line.startswith("L:")), None)
    unit = unit_value(first[2:]) if first is not None else default_unit(lines.header)
    if unit is None:
        return tune_text
    factor = rng.choice((Fraction(2), Fraction(1, 2)))
    if not Fraction(1, 64) <= unit / factor <= 1:
        factor = 1 / factor
    return scale_unit_length(tune_text, factor, short_halves=rng.random() < 0.5)


_PLAUSIBLE_UNITS = {Fraction(1, 2**k) for k in range(2, 6)}  # 1/4 .. 1/32


def respell_meter(tune_text: str, rng: random.Random) -> str:
    """The same bars under another duple meter spelling (workers.abc.spelling): M: and L:
    change together so that every bar keeps its text (``M:2/4 L:1/16`` <-> ``M:C| L:1/8``
    <-> ``M:4/4 L:1/8``...).

    Unchanged for other meters, for tunes that change meter or unit in the body, and where
    no other spelling keeps L: between 1/4 and 1/32.
    """
    spelling = duple_spelling(tune_text)
    if spelling is None:
        return tune_text
    choices = [
        other
        for other in DUPLE_METERS
        if other != spelling.meter and spelling.unit_for(other) in _PLAUSIBLE_UNITS
    ]
    if not choices:
        return tune_text
    # Half bar or whole bar first, then a spelling of it: otherwise a whole-bar tune would
    # move to 2/4 only one time in four, and that split is the one that misleads.
    bar = rng.choice(sorted({DUPLE_METERS[other] for other in choices}))
    return spelling.written_as(rng.choice([c for c in choices if DUPLE_METERS[c] == bar]))
