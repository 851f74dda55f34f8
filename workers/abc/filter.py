"""Strip an ABC tune down to what the CLaMP music encoder was trained to read."""

from __future__ import annotations

__all__ = ["cut_comment", "music_text_for_encoder"]

# Information fields the reference removes before encoding (titles, composers, lyrics...).
# "G:" (group) is here because the reference's list has "G" without its colon: the intent
# was to drop the field, the typo only ever matched a line consisting of the single letter G.
_DROPPED_FIELDS = frozenset(f"{letter}:" for letter in "ABCDFGHNORrSTWwXZ")
_SCORE = "%%score"


def cut_comment(line: str) -> tuple[str, bool]:
    """Cut ``line`` at its first ``%`` that is not escaped as ``\\%``; say if anything was cut.

    ABC 2.1 lets ``\\%`` stand for a literal percent sign in text strings, so it
    does not start a comment; it is kept as written (backslash included).
    """
    pos = line.find("%")
    while pos > 0 and line[pos - 1] == "\\":
        pos = line.find("%", pos + 1)
    if pos < 0:
        return line, False
    return line[:pos], True


def music_text_for_encoder(tune_text: str) -> str:
    """Return the tune without metadata and comments, one kept line per line, "\\n"-terminated.

    Follows the reference filter with its two bugs fixed:

    * only real field lines are dropped (the reference's ``'G'`` entry lacks its colon);
    * an inline comment is cut at the first unescaped ``%`` and only trailing blanks are
      removed; the reference cut at the *last* ``%`` and then dropped one more character,
      meant to be the space before the ``%`` but often a bar line.

    Kept: ``L: M: K: Q: V: I: P:`` (and other musical fields such as ``U:`` or ``m:``),
    ``%%score`` lines untouched, and music lines.  Other ``%`` lines (comments and
    ``%%`` directives) go.  A ``+:`` continuation of a dropped field is dropped with it.
    Empty lines are dropped: the encoder ignores them, and leaving them out keeps the
    text (and its hash) stable across cosmetic blank lines.  Non-ASCII text is left as
    is; the encoder transliterates it.
    """
    kept: list[str] = []
    previous_dropped = False
    for raw_line in tune_text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = raw_line
        if line.startswith(_SCORE):
            kept.append(line)
            previous_dropped = False
            continue
        head = line[:2]
        if head in _DROPPED_FIELDS or (head == "+:" and previous_dropped):
            previous_dropped = True
            continue
        previous_dropped = False
        if line.startswith("%"):
            continue
        line, was_cut = cut_comment(line)
        if was_cut:
            line = line.rstrip(" \t")
        if line:
            kept.append(line)
    return "".join(f"{line}\n" for line in kept)
