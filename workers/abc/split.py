"""Split the text of an ABC file into its tunes."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["RawTune", "split_tunes"]

_X_LINE = re.compile(r"X:(.*)")
_K_LINE = re.compile(r"K:")


@dataclass(frozen=True)
class RawTune:
    """One tune as written in the file, before any interpretation."""

    index: int  # 0-based position among the tunes of the file
    x_number: str | None  # value of the X: field, None when absent or empty
    text: str  # the tune's lines, starting with its X: line
    start_line: int  # 1-based line number of the tune's first line in the file


def _x_value(line: str) -> str | None:
    match = _X_LINE.match(line)
    if match is None:
        return None
    value = match.group(1).split("%", 1)[0].strip()
    return value or None


def _is_blank(line: str) -> bool:
    return not line.strip()


def split_tunes(text: str) -> list[RawTune]:
    """Return the tunes of an ABC file, in file order; never raises.

    A tune starts at a line beginning with ``X:`` and, as ABC 2.1 says, ends at
    the first blank line (or at the next ``X:`` line).  Text after that blank
    line and before the next ``X:`` is free text and is ignored, except blocks
    that start with ``T:`` and hold a ``K:`` line: those are tunes whose ``X:``
    was left out (``x_number`` None).

    The file header (the block before the first ``X:``) is not a tune: ABC 2.1
    lets its field lines (``M:``, ``L:``, ``%%`` directives...) apply to every
    tune, but inheriting them would make a tune's music depend on text outside
    it, so for now nothing is inherited and each tune must be complete on its own.

    A text without any ``X:`` line that still has a ``K:`` line is taken as a
    single tune (a snippet pasted without its reference number), with
    ``x_number`` None; it runs over the whole text minus leading/trailing blank
    lines, because there is no X: line to anchor a blank-line ending on.
    """
    # Callers normally pass decode_abc_bytes output; stray CRs would otherwise hide "X:".
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith("X:")]

    if not starts:
        if not any(_K_LINE.match(line) for line in lines):
            return []
        first = next(i for i, line in enumerate(lines) if not _is_blank(line))
        last = max(i for i, line in enumerate(lines) if not _is_blank(line))
        body = "\n".join(lines[first : last + 1])
        return [RawTune(index=0, x_number=None, text=body, start_line=first + 1)]

    # (start, stop, x_number) of every tune; X: tunes end at their first blank line.
    spans: list[tuple[int, int, str | None]] = []
    covered_until = 0
    for index, start in enumerate(starts):
        spans += _untagged_tunes(lines, covered_until, start)
        stop = starts[index + 1] if index + 1 < len(starts) else len(lines)
        end = start + 1
        while end < stop and not _is_blank(lines[end]):
            end += 1
        spans.append((start, end, _x_value(lines[start])))
        covered_until = end
    spans += _untagged_tunes(lines, covered_until, len(lines))
    return [
        RawTune(index=i, x_number=x, text="\n".join(lines[a:b]), start_line=a + 1)
        for i, (a, b, x) in enumerate(spans)
    ]


def _untagged_tunes(lines: list[str], begin: int, end: int) -> list[tuple[int, int, str | None]]:
    """Blocks between X: tunes that are tunes all the same: a T: line first and a K: line.

    Collections in the wild drop X: on some tunes; such a block is not free text, and
    treating it as free text would silently lose the tune.
    """
    found: list[tuple[int, int, str | None]] = []
    i = begin
    while i < end:
        if _is_blank(lines[i]):
            i += 1
            continue
        j = i
        while j < end and not _is_blank(lines[j]):
            j += 1
        block = lines[i:j]
        if block[0].startswith("T:") and any(_K_LINE.match(line) for line in block):
            found.append((i, j, None))
        i = j
    return found
