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
    line and before the next ``X:`` is free text and is ignored.

    The file header (everything before the first ``X:``) is ignored too: ABC 2.1
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

    tunes: list[RawTune] = []
    for index, start in enumerate(starts):
        stop = starts[index + 1] if index + 1 < len(starts) else len(lines)
        end = start + 1
        while end < stop and not _is_blank(lines[end]):
            end += 1
        tunes.append(
            RawTune(
                index=index,
                x_number=_x_value(lines[start]),
                text="\n".join(lines[start:end]),
                start_line=start + 1,
            )
        )
    return tunes
