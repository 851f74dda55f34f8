"""Words for how a tune's rhythm goes, read from its spelling-free rhythm features.

Training texts name a dance ("a hornpipe") but never what makes one, so a model is free to
learn a book's way of writing hornpipes instead of their rhythm. These words tie the texts
to rhythms that look the same in every book (workers.abc.rhythm): a text saying "dotted
rhythms" goes with dotted tunes whatever their meter line says.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from workers.abc.rhythm import FEATURE_NAMES, rhythm_features

__all__ = ["DOTTED", "EVEN", "LONG_CADENCES", "rhythm_word_offer", "rhythm_words"]

# Surface forms of each rhythm trait; a text draws one of them (data.sample_text).
DOTTED = ("dotted rhythms", "with dotted rhythms", "a dotted, lilting rhythm")
LONG_CADENCES = ("phrases ending on three long notes", "with strains ending in three long notes")
EVEN = ("even running notes", "with even running notes", "smooth, even notes")

# Thresholds sit between the books' reels and hornpipes (bench.rhythm_reference's data): a
# dotted hornpipe marks over 8% of its notes, a reel almost none; three long notes close
# at least one bar in 12 of about half the hornpipes and almost no reel.
_DOTTED_SHARE = 0.08
_LONG_CADENCE_SHARE = 0.08
_EVEN_SHARE = 0.8  # notes that are an eighth of their duple bar


def rhythm_words(music_text: str) -> list[str]:
    """Surface forms of the rhythm traits the tune has; [] when none is clear."""
    values = dict(zip(FEATURE_NAMES, rhythm_features(music_text).tolist(), strict=True))
    words: list[str] = []
    if values["broken_per_note"] >= _DOTTED_SHARE:
        words += DOTTED
    if values["bars_ending_three_long"] >= _LONG_CADENCE_SHARE:
        words += LONG_CADENCES
    if (
        not words
        and values["meter_duple"]
        and values["share_1/8"] >= _EVEN_SHARE
        and values["broken_per_note"] < _DOTTED_SHARE / 4
    ):
        words += EVEN
    return words


def rhythm_word_offer(p: float, seed: int) -> Callable[[Sequence[str]], Sequence[str]]:
    """Hands each text draw its tune's rhythm words with probability p, else none.

    At p >= 1 no random number is drawn: runs from before p existed draw the same texts.
    """
    rng = random.Random(seed)

    def offer(words: Sequence[str]) -> Sequence[str]:
        if p >= 1.0 or not words:
            return words
        return words if rng.random() < p else ()

    return offer
