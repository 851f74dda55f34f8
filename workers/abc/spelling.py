"""Duple meter spellings: the same bars written under `M:2/4 L:1/16`, `M:C| L:1/8`, ...

Tune books write one reel or hornpipe bar in several spellings whose bar text is identical:
only the M: and L: lines differ. Rewriting the two together keeps every bar's text and
changes only how long its notes are said to be.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from workers.abc.rhythm import DUPLE_METERS, default_unit, unit_text, unit_value
from workers.abc.tokens import split_lines

__all__ = ["CANONICAL_DUPLE_METER", "DupleSpelling", "canonical_duple_spelling", "duple_spelling"]

# The spelling canonical_duple_spelling writes; any of DUPLE_METERS would do, as long as it
# never changes for a profile that uses it.
CANONICAL_DUPLE_METER = "2/4"
_INLINE_METER_OR_UNIT = re.compile(r"^[ML]:|\[[ML]:")


@dataclass(frozen=True)
class DupleSpelling:
    """A tune in one duple meter spelling, and what another spelling of it must keep."""

    header: tuple[str, ...]
    body: tuple[str, ...]
    meter_line: int  # index in header
    unit_line: int | None  # index in header; None: ABC's default unit
    meter: str
    units_per_whole: Fraction  # the L: unit over the bar length: fixed across spellings

    def unit_for(self, meter: str) -> Fraction:
        """The L: unit that keeps every bar's text under `meter` (one of DUPLE_METERS)."""
        return self.units_per_whole * DUPLE_METERS[meter]

    def written_as(self, meter: str) -> str:
        """The tune under `meter`, with its unit to match; the body is untouched."""
        header = list(self.header)
        header[self.meter_line] = f"M:{meter}"
        unit_line = f"L:{unit_text(self.unit_for(meter))}"
        if self.unit_line is not None:
            header[self.unit_line] = unit_line
        else:
            header.insert(len(header) - 1, unit_line)
        return "\n".join([*header, *self.body])


def duple_spelling(tune_text: str) -> DupleSpelling | None:
    """The tune's duple spelling; None for other meters, for tunes that change meter or unit
    in the body, and for headers with several M: or L: lines or an unreadable L:."""
    lines = split_lines(tune_text)
    if lines is None:
        return None
    meters = [i for i, line in enumerate(lines.header) if line.startswith("M:")]
    units = [i for i, line in enumerate(lines.header) if line.startswith("L:")]
    if len(meters) != 1 or len(units) > 1:
        return None
    meter = lines.header[meters[0]][2:].split("%", 1)[0].strip()
    if meter not in DUPLE_METERS:
        return None
    if any(_INLINE_METER_OR_UNIT.search(line) for line in lines.body):
        return None
    unit = unit_value(lines.header[units[0]][2:]) if units else default_unit(lines.header)
    if unit is None:
        return None
    return DupleSpelling(
        header=tuple(lines.header),
        body=tuple(lines.body),
        meter_line=meters[0],
        unit_line=units[0] if units else None,
        meter=meter,
        units_per_whole=unit / DUPLE_METERS[meter],
    )


def canonical_duple_spelling(tune_text: str) -> str:
    """The tune under CANONICAL_DUPLE_METER when it is in a duple spelling; else unchanged.

    Two books that write the same reel as `M:C| L:1/8` and as `M:2/4 L:1/16` then give the
    same text, so the spelling can no longer stand in for the dance.
    """
    spelling = duple_spelling(tune_text)
    # Rewritten even when already in 2/4: an implicit or oddly written unit becomes the
    # one L: line every other spelling gets.
    return tune_text if spelling is None else spelling.written_as(CANONICAL_DUPLE_METER)
