"""Music views of a training tune: its own text, augmented copies, converter round trips."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np

from orchestrator.training.augment import BASE_OPS, augment
from orchestrator.training.data import TuneRecord
from workers.abc import ParsedPiece, encode_patches, parse_abc_text
from workers.abc.profiles import REFERENCE_PROFILE, input_profile

# key_hash -> the tune's music texts after converter round trips (may be empty).
RoundTrips = Callable[[str], list[str]]


def encoder_text(tune_text: str) -> str | None:
    """The encoder's music text of one tune's full ABC, or None when it does not parse."""
    results = parse_abc_text(tune_text)
    if len(results) == 1 and isinstance(results[0], ParsedPiece):
        return results[0].music_text
    return None


def augmented_texts(
    record: TuneRecord, count: int, seed: int, p: float, ops: Sequence[str] = BASE_OPS
) -> list[str]:
    """`count` augmented copies (distinct from the original and each other), deterministic
    for a record and seed; fewer when the ops leave the tune unchanged."""
    tune = "X:1\n" + record.music_text
    texts: list[str] = []
    for variant in range(count):
        # One augment seed per (run seed, variant): the same tune gets the same copies
        # in every run with this seed, whatever else is in the corpus.
        text = encoder_text(augment(tune, seed * 1000 + variant, ops=ops, p=p))
        if text and text != record.music_text and text not in texts:
            texts.append(text)
    return texts


def tune_views(
    record: TuneRecord,
    count: int,
    seed: int,
    p: float,
    roundtrips: RoundTrips | None,
    ops: Sequence[str] = BASE_OPS,
) -> list[str]:
    """The original first, then augmented copies, then round trips; no duplicates."""
    views = [record.music_text, *augmented_texts(record, count, seed, p, ops)]
    for text in roundtrips(record.key_hash) if roundtrips is not None else []:
        if text not in views:
            views.append(text)
    return views


def view_patches(
    records: Sequence[TuneRecord],
    count: int,
    seed: int,
    p: float,
    max_patches: int,
    roundtrips: RoundTrips | None = None,
    view_max_patches: int | None = None,
    ops: Sequence[str] = BASE_OPS,
    profile: str = REFERENCE_PROFILE,
) -> list[list[np.ndarray]]:
    """Per record, the patch arrays of its views (original first, up to max_patches; the
    others up to view_max_patches when given), each read under the input `profile`."""
    prepare = input_profile(profile)
    rows: list[list[np.ndarray]] = []
    for record in records:
        original, *others = tune_views(record, count, seed, p, roundtrips, ops)
        limit = min(max_patches, view_max_patches or max_patches)
        rows.append(
            [encode_patches(prepare(original), max_patches)]
            + [encode_patches(prepare(text), limit) for text in others]
        )
    return rows


def pick_two(count: int, rng: random.Random) -> tuple[int, int]:
    """Two different view indices (the same one when a tune has a single view)."""
    if count == 1:
        return 0, 0
    first, second = rng.sample(range(count), 2)
    return first, second
