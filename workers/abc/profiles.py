"""Input profiles: how a model's encoder music text is rewritten before it is cut into patches.

Published CLaMP checkpoints read the reference text: profile `clamp` changes nothing, and
the parity tests hold that byte for byte. A model trained under another profile must be
fed the same way wherever its vectors are made (ingest, search, training, evaluation), so
its manifest names the profile (`input_profile`) and the encoder applies it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from workers.abc.rhythm import rhythm_features
from workers.abc.sounding_rhythm import sounding_rhythm_features
from workers.abc.spelling import canonical_duple_spelling

__all__ = [
    "CANONICAL_DUPLE_PROFILE",
    "CANONICAL_DUPLE_SOUNDING_PROFILE",
    "INPUT_PROFILES",
    "REFERENCE_PROFILE",
    "RHYTHM_SUMMARY_PROFILE",
    "SOUNDING_SUMMARY_PROFILE",
    "input_profile",
    "rhythm_summary_line",
    "summary_digits",
    "with_rhythm_summary",
]

REFERENCE_PROFILE = "clamp"
RHYTHM_SUMMARY_PROFILE = "rhythm-summary-v1"
CANONICAL_DUPLE_PROFILE = "rhythm-summary-duple-v1"
SOUNDING_SUMMARY_PROFILE = "rhythm-summary-v2"
CANONICAL_DUPLE_SOUNDING_PROFILE = "rhythm-summary-duple-v2"
_SUMMARY_FIELD = "I:rhythm "


def rhythm_summary_line(
    music_text: str, features: Callable[[str], np.ndarray] = rhythm_features
) -> str:
    """One field line of digits, each rhythm feature (0..1) in tenths of nine.

    A patch is read character by character at fixed positions, so each digit's place names
    its feature and a model learns what each value means with no parser of its own.
    """
    return _SUMMARY_FIELD + "".join(map(str, summary_digits(features(music_text))))


def summary_digits(values: np.ndarray) -> np.ndarray:
    """Features in 0..1 as the summary line's digits 0-9 (out-of-range values clipped)."""
    return np.rint(np.clip(values, 0, 1) * 9).astype(int)


def with_rhythm_summary(
    music_text: str, features: Callable[[str], np.ndarray] = rhythm_features
) -> str:
    """The text with its rhythm summary line just before the K: line (a patch of its own,
    always among the first patches however long the tune); unchanged without a K: line."""
    lines = music_text.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("K:"):
            summary = rhythm_summary_line(music_text, features)
            return "\n".join([*lines[:i], summary, *lines[i:]])
    return music_text


def with_sounding_summary(music_text: str) -> str:
    """The text with the summary line of what its notes sound, not how they are written
    (workers.abc.sounding_rhythm): a converter round trip keeps those digits."""
    return with_rhythm_summary(music_text, sounding_rhythm_features)


def with_canonical_duple_rhythm(music_text: str) -> str:
    """The rhythm summary of a tune whose duple meter spelling is made canonical: a bar of
    eight notes reads the same under `M:2/4 L:1/16` and `M:C| L:1/8`."""
    return with_rhythm_summary(canonical_duple_spelling(music_text))


def with_canonical_duple_sounding(music_text: str) -> str:
    """The sounding summary of a tune whose duple meter spelling is made canonical."""
    return with_sounding_summary(canonical_duple_spelling(music_text))


def _reference(music_text: str) -> str:
    return music_text


INPUT_PROFILES: dict[str, Callable[[str], str]] = {
    REFERENCE_PROFILE: _reference,
    # Dance-type cues that do not depend on how a book spells its meter and note lengths:
    # bench.rhythm_reference measures that they carry from one book to another.
    RHYTHM_SUMMARY_PROFILE: with_rhythm_summary,
    # Also hides the one spelling that told a model a book's reels from its hornpipes.
    CANONICAL_DUPLE_PROFILE: with_canonical_duple_rhythm,
    # The same cues read from sounding note lengths without bar lines: round trips through
    # MusicXML and MIDI keep them (v1's digits changed in half of MusicXML round trips).
    SOUNDING_SUMMARY_PROFILE: with_sounding_summary,
    # v2's line over v1's canonical duple spelling: Ryan's writes most reels in 2/4, the
    # spelling O'Neill's keeps for a third of its hornpipes.
    CANONICAL_DUPLE_SOUNDING_PROFILE: with_canonical_duple_sounding,
}


def input_profile(name: str) -> Callable[[str], str]:
    """The rewrite named `name`; ValueError listing the known ones otherwise."""
    try:
        return INPUT_PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown input profile {name!r}; known: {sorted(INPUT_PROFILES)}. A newer "
            "clamp-index may know it: upgrade, or use a model made for this version"
        ) from None
