"""Read the metadata fields of one ABC tune's header."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from workers.abc.filter import cut_comment

__all__ = ["AbcHeader", "read_header"]

_FIELD_LINE = re.compile(r"([A-Za-z+]):(.*)")

# Field letter -> AbcHeader attribute; these keep their first value, extra ones go to `extra`.
_NAMED = {
    "X": "x_number",
    "T": "title",
    "C": "composer",
    "O": "origin",
    "R": "rhythm",
    "M": "meter",
    "L": "unit_length",
    "K": "key",
    "Q": "tempo",
}


@dataclass
class AbcHeader:
    """Metadata of one tune; None means the field is absent from the header."""

    x_number: str | None = None
    title: str | None = None
    composer: str | None = None
    origin: str | None = None
    rhythm: str | None = None
    meter: str | None = None
    unit_length: str | None = None
    key: str | None = None
    tempo: str | None = None
    # Every other field letter (and repeats of the named ones, e.g. extra "T" titles).
    extra: dict[str, list[str]] = field(default_factory=dict)


def read_header(tune_text: str) -> AbcHeader:
    """Collect the header fields of a tune: everything up to and including its first K: line.

    Values are stripped of whitespace and trailing ``%`` comments; non-ASCII text is kept.
    A named field's first non-empty value fills its attribute and later ones land in
    ``extra`` under the same letter (a second ``T:`` is an alternative title, a second
    ``C:`` often the arranger).  Empty values are skipped, except ``K:``, whose bare
    presence ends the header, so an empty ``K:`` gives ``key == ""``.  ``+:`` lines
    continue the previous field with a space, as ABC 2.1 says.  ``W:`` lyrics normally
    follow the music, so they are collected from the whole tune into ``extra["W"]``.
    """
    header = AbcHeader()
    # Each entry is [letter, value]; kept mutable so a "+:" line can extend the last one.
    fields: list[list[str]] = []
    in_header = True
    # Whether the last field line seen was recorded, so a "+:" knows if it has a field to extend.
    last_recorded = False
    for raw_line in tune_text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        match = _FIELD_LINE.match(raw_line)
        if match is None:
            continue
        letter = match.group(1)
        value = cut_comment(match.group(2))[0].strip()
        if letter == "+":
            if last_recorded and value:
                fields[-1][1] = f"{fields[-1][1]} {value}".strip()
            continue
        # After K: only lyrics are metadata; other field lines belong to the music.
        last_recorded = in_header or letter == "W"
        if not last_recorded:
            continue
        fields.append([letter, value])
        if letter == "K":
            in_header = False

    for letter, value in fields:
        if not value and letter != "K":
            continue
        attr = _NAMED.get(letter)
        if attr is not None and getattr(header, attr) is None:
            setattr(header, attr, value)
        else:
            header.extra.setdefault(letter, []).append(value)
    return header
