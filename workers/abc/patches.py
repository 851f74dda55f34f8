"""Cut filtered ABC text into CLaMP bar patches and their class ids (reference-exact)."""

from __future__ import annotations

import re

import numpy as np
from unidecode import unidecode

__all__ = [
    "EOP_ID",
    "MASK_ID",
    "PAD_ID",
    "PATCH_CLASSES",
    "PATCH_LENGTH",
    "bar_patches",
    "encode_patches",
    "music_patch_count",
    "patch_ids",
]

PATCH_LENGTH = 64
PATCH_CLASSES = 98
PAD_ID = 0
MASK_ID = 96
EOP_ID = 97

# Longest first, so "|:" or "||" is never read as a plain "|" followed by a stray character.
_BAR_LINES = ("|:", "::", ":|", "[|", "||", "|]", "|")
_BAR_SPLIT = re.compile("(" + "|".join(map(re.escape, _BAR_LINES)) + ")")


def _is_own_patch(line: str) -> bool:
    # str.isalpha is safe here: the text is already ASCII, so it means exactly a-z / A-Z.
    return len(line) > 1 and ((line[0].isalpha() and line[1] == ":") or line.startswith("%%score"))


def _split_bars(body: str) -> list[str]:
    pieces = [piece for piece in _BAR_SPLIT.split(body) if piece]
    if pieces and pieces[0] in _BAR_LINES:
        if len(pieces) == 1:
            # A body that is one bar line has no bar; the reference crashes here (IndexError).
            return []
        pieces = [pieces[0] + pieces[1], *pieces[2:]]
    # The reference pairs neighbours blindly; copying that keeps the patches identical
    # even for odd input such as two bar lines in a row, and drops an unpaired last piece.
    return [pieces[2 * i] + pieces[2 * i + 1] for i in range(len(pieces) // 2)]


def _patch_texts(music_text: str) -> list[tuple[str, bool]]:
    """Patch texts with a flag telling whether each came from music (True) or a field line."""
    lines = unidecode(music_text).split("\n")
    # The reference does list.remove(""): the first empty line, wherever it is.
    if "" in lines:
        lines.remove("")
    patches: list[tuple[str, bool]] = []
    body = ""
    for line in lines:
        if _is_own_patch(line):
            patches.extend((bar, True) for bar in _split_bars(body))
            body = ""
            patches.append((line, False))
        else:
            # Joined without a newline: a bar may run across lines of the source.
            body += line
    patches.extend((bar, True) for bar in _split_bars(body))
    return patches


def bar_patches(music_text: str) -> list[str]:
    """Texts of the patches the encoder sees, in order, without the end patch."""
    return [text for text, _ in _patch_texts(music_text)]


def music_patch_count(music_text: str) -> int:
    """How many of the patches come from the music body rather than from field lines."""
    return sum(1 for _, is_music in _patch_texts(music_text) if is_music)


def patch_ids(patch_text: str) -> list[int]:
    """Class ids of one patch: 64 ints, printable ASCII as ord-31, an end mark, zero padding."""
    ids = [PAD_ID] * PATCH_LENGTH
    head = patch_text[:PATCH_LENGTH]
    for pos, ch in enumerate(head):
        code = ord(ch)
        if 32 <= code < 127:
            ids[pos] = code - 31
    # The end mark goes right after the text and only fits when the text is shorter than 64.
    if len(head) < PATCH_LENGTH:
        ids[len(head)] = EOP_ID
    return ids


def encode_patches(music_text: str, max_patches: int) -> np.ndarray:
    """uint8 array [n, 64]: every bar patch plus the all-97 end patch, cut to max_patches rows."""
    rows = [patch_ids(text) for text in bar_patches(music_text)]
    rows.append([EOP_ID] * PATCH_LENGTH)
    # The reference truncates after adding the end patch, so long pieces lose it.
    rows = rows[: max(max_patches, 0)]
    return np.array(rows, dtype=np.uint8).reshape(len(rows), PATCH_LENGTH)
