"""Note lengths as shares of the bar: the meter and unit a tune declares, and spelling-free
rhythm statistics read from them.

Every note length is measured as a share of its bar, so a reel bar written `ABcd BcdB`
under `M:2/4 L:1/16` and the same bar under `M:C| L:1/8` give the same numbers, and the
meter is reduced to its kind (duple, 3/4, 6/8, ...). A classifier on these numbers can
only tell dances apart by their rhythms, not by how a book spells them. They are the
supervised reference of `bench.rhythm_reference` and what the `rhythm-summary` input
profile (workers.abc.profiles) shows a model.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from workers.abc.tokens import (
    FIELD_LINE,
    NOTE_RE,
    line_kind,
    parse_length,
    split_lines,
    tokenize,
)

__all__ = [
    "DANCE_SHARES",
    "DUPLE_METERS",
    "FEATURE_NAMES",
    "LONG_SHARE",
    "default_unit",
    "meter_kind",
    "note_length",
    "rhythm_features",
    "unit_text",
    "unit_value",
]

_METER = re.compile(r"(\d+(?:\+\d+)*)\s*/\s*(\d+)")


# Duple and quadruple meters, as written in M:, with what one bar lasts in whole notes.
# Tune books write the same reel or hornpipe bar as 2/4 with L:1/16 or as C| with L:1/8
# (O'Neill's writes its reels one way and many hornpipes the other; Ryan's mixes both for
# both), so the meter line alone told a model trained on one book the dance type.
DUPLE_METERS: dict[str, Fraction] = {
    "2/4": Fraction(1, 2),
    "2/2": Fraction(1),
    "C|": Fraction(1),
    "4/4": Fraction(1),
    "C": Fraction(1),
}


def default_unit(header: list[str]) -> Fraction:
    """ABC's unit when L: is absent: 1/16 for meters under 3/4, else 1/8 (also M:none)."""
    for line in header:
        match = FIELD_LINE.match(line)
        if match is None or match.group(1) != "M":
            continue
        value = match.group(2).split("%", 1)[0].strip()
        if value in ("C", "C|"):
            return Fraction(1, 8)
        meter = _METER.search(value)
        if meter is None:
            return Fraction(1, 8)
        numerator = sum(int(part) for part in meter.group(1).split("+"))
        denominator = int(meter.group(2))
        if denominator and Fraction(numerator, denominator) < Fraction(3, 4):
            return Fraction(1, 16)
        return Fraction(1, 8)
    return Fraction(1, 8)


def unit_value(text: str) -> Fraction | None:
    """An L: value ("1/8") as a fraction; None when it is not one."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text.split("%", 1)[0])
    if match is None or int(match.group(2)) == 0:
        return None
    return Fraction(int(match.group(1)), int(match.group(2)))


def unit_text(value: Fraction) -> str:
    """An L: value as written: Fraction(1, 8) -> "1/8"."""
    return f"{value.numerator}/{value.denominator}"


# Meter kinds; any duple spelling (2/4, 2/2, C|, 4/4, C) is one kind on purpose.
METER_KINDS: tuple[str, ...] = ("duple", "3/4", "6/8", "9/8", "12/8", "3/2", "other")
# Note lengths as a share of the bar, the ones dance tunes are made of.
DANCE_SHARES: tuple[Fraction, ...] = tuple(
    map(Fraction, ("1/16", "1/12", "1/9", "1/8", "1/6", "3/16", "2/9", "1/4", "1/3", "3/8", "1/2"))
)
LONG_SHARE = Fraction(1, 4)  # a beat or more in duple time: hornpipe cadences are made of these
FEATURE_NAMES: tuple[str, ...] = (
    *(f"share_{s.numerator}/{s.denominator}" for s in DANCE_SHARES),
    "share_other",
    *(f"meter_{kind}" for kind in METER_KINDS),
    "bars_ending_three_long",
    "bars_ending_two_long",
    "tuplets_per_bar",
    "broken_per_note",
    "notes_per_bar_over_10",
)


def meter_kind(value: str) -> tuple[str, Fraction | None]:
    """(kind, bar length in whole notes) of an M: value; no bar length for free meter."""
    value = value.split("%", 1)[0].strip()
    if value in DUPLE_METERS:
        return "duple", DUPLE_METERS[value]
    try:
        numerator, denominator = (int(part) for part in value.split("/"))
        bar = Fraction(numerator, denominator)
    except (ValueError, ZeroDivisionError):
        return "other", None
    kind = f"{numerator}/{denominator}"
    return (kind if kind in METER_KINDS else "other"), bar


@dataclass
class _Bar:
    kind: str
    shares: list[Fraction] = field(default_factory=list)  # each note's length / the bar's
    tuplets: int = 0
    broken: int = 0


def note_length(token_text: str) -> Fraction:
    """A note or rest token's length in units of L: ("A3/2" -> 3/2, "z" -> 1)."""
    match = NOTE_RE.search(token_text)
    return parse_length(match.group("length") if match else token_text[1:])


def _bars(tune_text: str) -> Iterator[_Bar]:
    """The tune's bars, with the length of every note or rest (a chord counts once; grace
    notes not at all) as a share of its bar."""
    lines = split_lines(tune_text)
    if lines is None:
        return
    kind, bar, unit = "other", None, default_unit(lines.header)
    for line in lines.header:
        match = FIELD_LINE.match(line)
        if match and match.group(1) == "M":
            kind, bar = meter_kind(match.group(2))
        elif match and match.group(1) == "L":
            unit = unit_value(match.group(2)) or unit
    current = _Bar(kind)
    chord_state = None  # None outside a chord; False before its first note, True after
    in_grace = False
    for line in (line for line in lines.body if line_kind(line) == "music"):
        for token in tokenize(line):
            if token.kind == "field" and token.text[1] in "ML":  # inline [M:...], [L:...]
                value = token.text[3:-1]
                if token.text[1] == "M":
                    kind, bar = meter_kind(value)
                    current.kind = kind
                else:
                    unit = unit_value(value) or unit
            elif token.kind == "bar":
                if current.shares:
                    yield current
                current = _Bar(kind)
            elif token.kind in ("grace_open", "grace_close"):
                in_grace = token.kind == "grace_open"
            elif token.kind in ("chord_open", "chord_close"):
                chord_state = False if token.kind == "chord_open" else None
            elif token.kind in ("note", "rest") and bar and not in_grace and not chord_state:
                current.shares.append(note_length(token.text) * unit / bar)
                if chord_state is False:
                    chord_state = True
            elif token.kind == "tuplet":
                current.tuplets += 1
            elif token.kind == "broken":
                current.broken += 1
    if current.shares:
        yield current


def rhythm_features(tune_text: str) -> np.ndarray:
    """FEATURE_NAMES' values for one tune's encoder text; zeros where nothing can be read."""
    counts = dict.fromkeys(DANCE_SHARES, 0)
    other = notes = tuplets = broken = three_long = two_long = 0
    kinds: dict[str, int] = {}
    bars = 0
    for bar in _bars(tune_text):
        bars += 1
        kinds[bar.kind] = kinds.get(bar.kind, 0) + 1
        for share in bar.shares:
            if share in counts:
                counts[share] += 1
            else:
                other += 1
        notes += len(bar.shares)
        tuplets += bar.tuplets
        broken += bar.broken
        three_long += len(bar.shares) >= 3 and all(s >= LONG_SHARE for s in bar.shares[-3:])
        two_long += len(bar.shares) >= 2 and all(s >= LONG_SHARE for s in bar.shares[-2:])
    values = np.zeros(len(FEATURE_NAMES), dtype=np.float32)
    if not bars:
        return values
    main_kind = max(kinds, key=kinds.__getitem__)
    per_note = max(notes, 1)
    values[:] = [
        *(counts[s] / per_note for s in DANCE_SHARES),
        other / per_note,
        *(float(kind == main_kind) for kind in METER_KINDS),
        three_long / bars,
        two_long / bars,
        tuplets / bars,
        broken / per_note,
        notes / bars / 10,
    ]
    return values
