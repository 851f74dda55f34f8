"""ABC respelled for music21's reader, which the round trips use to write MusicXML and MIDI.

music21 (9.x) misreads two common spellings and loses music without a warning:

- a broken rhythm followed by anything but the note itself (``A>.B``, ``A>uB``, ``A>(B``,
  ``A>{g}B``) is read as two even notes;
- ``H`` (fermata) drops the note it decorates.

On Ryan's Mammoth Collection that is 541 staccato pairs in 96 tunes and 97 fermatas in 97
tunes. A user's notation program would export those tunes whole, so the round trips must
too: broken rhythms are written out as note lengths (``A3/2.B/``) and ``H`` as
``!fermata!``, which music21 reads right. Everything else is left as written.
"""

from __future__ import annotations

from fractions import Fraction

from orchestrator.training.augment_unit import scaled_token
from workers.abc.tokens import (
    Token,
    broken_factors,
    join_tokens,
    line_kind,
    split_lines,
    tokenize,
)

__all__ = ["for_music21"]

# Between a broken rhythm and the note it shortens: decorations, slurs, chord symbols and
# grace groups, none of which takes time.
_SKIPPED = frozenset({"deco", "string", "slur", "space", "grace_open", "grace_close"})


class _Line:
    """One music line's tokens, with which of them carry a duration."""

    def __init__(self, line: str) -> None:
        self.tokens = tokenize(line)
        # token index -> indices whose lengths give that event's duration: a note or rest is
        # itself; a chord is its "]" when a length follows it, else every note inside.
        self.events: dict[int, list[int]] = {}
        in_grace = False
        chord_notes: list[int] | None = None
        for j, token in enumerate(self.tokens):
            kind = token.kind
            if kind in ("grace_open", "grace_close"):
                in_grace = kind == "grace_open"
            elif in_grace:
                continue
            elif kind == "chord_open":
                chord_notes = []
            elif kind == "chord_close" and chord_notes is not None:
                self.events[j] = [j] if len(token.text) > 1 else chord_notes
                chord_notes = None
            elif kind == "note" and chord_notes is not None:
                chord_notes.append(j)
            elif kind in ("note", "rest"):
                self.events[j] = [j]

    def _scale(self, event: int, factor: Fraction) -> None:
        for j in self.events[event]:
            self.tokens[j] = scaled_token(self.tokens[j], factor)

    def _event_after(self, j: int) -> int | None:
        for k in range(j + 1, len(self.tokens)):
            if k in self.events:
                return k
            kind = self.tokens[k].kind
            if kind not in _SKIPPED and kind not in ("chord_open", "note"):
                return None
        return None

    def _event_before(self, j: int) -> int | None:
        for k in range(j - 1, -1, -1):
            if k in self.events:
                return k
            if self.tokens[k].kind != "space":
                return None
        return None

    def written_out(self, fermata: bool) -> str:
        for j, token in enumerate(self.tokens):
            if token.kind == "broken":
                before, after = self._event_before(j), self._event_after(j)
                if before is None or after is None:
                    continue
                first, second = broken_factors(token.text)
                self._scale(before, first)
                self._scale(after, second)
                self.tokens[j] = Token("broken", "")
            elif fermata and token.kind == "deco" and token.text == "H":
                self.tokens[j] = Token("deco", "!fermata!")
        return join_tokens(self.tokens)


def for_music21(music_text: str) -> str:
    """``music_text`` with broken rhythms written out as lengths and ``H`` as ``!fermata!``.

    A broken rhythm whose two notes cannot both be found on its line is left as written;
    so is ``H`` in a tune whose ``U:`` fields may give it another meaning.
    """
    lines = split_lines(music_text)
    if lines is None:
        return music_text
    fermata = not any(line.startswith("U:") for line in lines.header + lines.body)
    body = [
        _Line(line).written_out(fermata) if line_kind(line) == "music" else line
        for line in lines.body
    ]
    return "\n".join(lines.header + body)
