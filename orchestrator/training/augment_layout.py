"""Augmentations of layout: music line breaks, header field order, header field dropout.

None of them changes the music. The line-break one also keeps the encoder's bar patches
(workers.abc.patches joins music lines without a separator before cutting at bar lines):
it only breaks right after bar lines and never lets two bar lines meet that were apart.
"""

from __future__ import annotations

import random
import re

from workers.abc.tokens import (
    FIELD_LINE,
    Token,
    join_tokens,
    line_kind,
    space_field_lookalikes,
    split_lines,
    tokenize,
)

__all__ = ["DROPPABLE_FIELDS", "drop_header_fields", "regroup_lines", "shuffle_header"]

# Information fields a collection may or may not write; the music never depends on them.
DROPPABLE_FIELDS = frozenset("ABCDFGHNOQRSTZr")
_VOLTA = re.compile(r"\d")
_BARLIKE = ("bar", "volta")


def _strip(tokens: list[Token], *, lead: bool, trail: bool) -> tuple[list[Token], bool]:
    """Tokens without leading/trailing spaces (and a trailing ``\\``); whether any went."""
    start, stop = 0, len(tokens)
    if trail:
        while stop > start and tokens[stop - 1].kind in ("space", "continuation"):
            stop -= 1
    if lead:
        while start < stop and tokens[start].kind == "space":
            start += 1
    return tokens[start:stop], (start, stop) != (0, len(tokens))


def _joined(lines: list[list[Token]]) -> list[Token]:
    """One token stream from several music lines, as one line of ABC would say them."""
    stream: list[Token] = []
    cut_before = False  # the previous line lost trailing spaces or its "\"
    for n, raw in enumerate(lines):
        tokens, cut_lead = _strip(raw, lead=n > 0, trail=False)
        tokens, cut_trail = _strip(tokens, lead=False, trail=n < len(lines) - 1)
        if stream and tokens:
            prev_bar, next_bar = stream[-1].kind == "bar", tokens[0].kind in _BARLIKE
            # Between notes a space keeps them apart as the line end did; between two bar
            # lines that had something between them, a space keeps that a patch of its own.
            cut = cut_before or cut_lead
            if (not prev_bar and not next_bar) or (prev_bar and next_bar and cut):
                stream.append(Token("space", " "))
        stream += tokens
        cut_before = cut_trail or (cut_before and not tokens)
    return stream


def _break_points(stream: list[Token]) -> list[int]:
    """Indices where a new line may start: after a plain bar line, before music."""
    points = []
    for i, token in enumerate(stream[:-1]):
        if token.kind != "bar" or _VOLTA.search(token.text):
            continue
        following = next((t for t in stream[i + 1 :] if t.kind != "space"), None)
        if following is not None and following.kind not in _BARLIKE:
            points.append(i + 1)
    return points


def _runs(body: list[str]) -> list[tuple[int, int]]:
    """[start, stop) of each run of music lines that may be regrouped.

    A run ends after a line with a % comment (nothing can follow it on its line), and a
    run followed by w: lyrics is left alone because the lyrics align with its last line.
    """
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(body):
        if line_kind(body[i]) != "music":
            i += 1
            continue
        j = i
        while j < len(body) and line_kind(body[j]) == "music":
            j += 1
            if "%" in body[j - 1] and any(t.kind == "comment" for t in tokenize(body[j - 1])):
                break
        if not (j < len(body) and body[j].startswith("w:")):
            runs.append((i, j))
        i = j
    return runs


def regroup_lines(tune_text: str, rng: random.Random) -> str:
    """The music re-cut into lines at bar lines: one line, n bars a line, or at random;
    sometimes with ``\\`` continuations. Bars are never split."""
    lines = split_lines(tune_text)
    if lines is None:
        return tune_text
    style = rng.choice(("one", "every", "every", "random"))
    every = rng.choice((1, 2, 3, 4, 4, 6, 8))
    chance = rng.uniform(0.1, 0.6)
    continuation = rng.random() < 0.2
    body = list(lines.body)
    for start, stop in reversed(_runs(body)):
        stream = _joined([tokenize(line) for line in body[start:stop]])
        points = _break_points(stream)
        if style == "one":
            chosen: list[int] = []
        elif style == "every":
            chosen = points[every - 1 :: every]
        else:
            chosen = [point for point in points if rng.random() < chance]
        new_lines: list[str] = []
        begin = 0
        for point in [*chosen, len(stream)]:
            piece = stream[begin:point]
            if begin:
                piece, _ = _strip(piece, lead=True, trail=False)
            text = join_tokens(space_field_lookalikes(piece))
            new_lines.append(text + "\\" if continuation and point != len(stream) else text)
            begin = point
        body[start:stop] = new_lines
    return "\n".join(lines.header + body)


def _header_units(middle: list[str]) -> list[list[str]]:
    """Header lines between the first line and K:, grouped: a field with its ``+:`` lines;
    any other line (comment, directive) on its own."""
    units: list[list[str]] = []
    for line in middle:
        if line.startswith("+:") and units and FIELD_LINE.match(units[-1][0]):
            units[-1].append(line)
        else:
            units.append([line])
    return units


def _movable(unit: list[str]) -> bool:
    # Comments stay where the writer put them; V: lines define the score's voice order.
    return line_kind(unit[0]) == "field" and not unit[0].startswith("V:")


def shuffle_header(tune_text: str, rng: random.Random) -> str:
    """The header fields between X: (or the first line) and K: in a random order."""
    lines = split_lines(tune_text)
    if lines is None or len(lines.header) < 4:
        return tune_text
    units = _header_units(lines.header[1:-1])
    slots = [i for i, unit in enumerate(units) if _movable(unit)]
    moved = [units[i] for i in slots]
    rng.shuffle(moved)
    for slot, unit in zip(slots, moved, strict=True):
        units[slot] = unit
    middle = [line for unit in units for line in unit]
    return "\n".join([lines.header[0], *middle, lines.header[-1], *lines.body])


def drop_header_fields(tune_text: str, rng: random.Random) -> str:
    """Some information fields (title, composer, origin, rhythm, tempo, notes...) dropped;
    X:, M:, L:, K: and anything the music needs (U:, V:, I:, P:) always stay."""
    lines = split_lines(tune_text)
    if lines is None:
        return tune_text
    chance = rng.uniform(0.2, 0.8)
    kept: list[str] = []
    for unit in _header_units(lines.header[1:-1]):
        match = FIELD_LINE.match(unit[0])
        if match and match.group(1) in DROPPABLE_FIELDS and rng.random() < chance:
            continue
        kept += unit
    return "\n".join([lines.header[0], *kept, lines.header[-1], *lines.body])
