"""Rhythm statistics of sounding note lengths: the same music gives the same numbers however
it is written and wherever a converter puts the bar lines."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from workers.abc.profiles import (
    CANONICAL_DUPLE_SOUNDING_PROFILE,
    SOUNDING_SUMMARY_PROFILE,
    input_profile,
    rhythm_summary_line,
)
from workers.abc.rhythm import rhythm_features
from workers.abc.sounding_rhythm import (
    SOUNDING_FEATURE_NAMES,
    sounding_notes,
    sounding_rhythm_features,
)

HORNPIPE = "M:C|\nL:1/8\nK:G\nD>E|G>AB>c d>BG>B|c>AF>A G2 G>A|B>dc>e d>BG>B|A>GF>E D2:|\n"
JIG = "M:6/8\nL:1/8\nK:D\nA|dAF dAF|d2e f2e|dAF GFE|D3 D2:|\n"
REEL = "M:C|\nL:1/8\nK:D\nFA|d2 fd edcB|ABAF D2 FA|d2 fd edcB|AFEF D2:|\n"


def shares(tune: str) -> list[Fraction]:
    return [note.share for note in sounding_notes(tune)]


def feature(tune: str, name: str) -> float:
    return float(sounding_rhythm_features(tune)[SOUNDING_FEATURE_NAMES.index(name)])


def test_a_broken_rhythm_sounds_as_its_dotted_spelling() -> None:
    broken = "M:C|\nL:1/8\nK:D\nA>B c>d e<f g>>a|\n"
    dotted = "M:C|\nL:1/8\nK:D\nA3/2B/ c3/2d/ e/f3/2 g7/4a/4|\n"
    assert shares(broken) == shares(dotted)
    assert shares(broken)[:2] == [Fraction(3, 16), Fraction(1, 16)]
    assert np.array_equal(sounding_rhythm_features(broken), sounding_rhythm_features(dotted))
    # The written statistics tell the two spellings apart: why this reading exists.
    assert not np.array_equal(rhythm_features(broken), rhythm_features(dotted))
    # Long-short and short-long neighbours both count: 4 of the 7 pairs, over 8 notes.
    assert feature(broken, "dotted_pairs_per_note") == pytest.approx(4 / 8)


def test_where_the_bar_lines_fall_does_not_matter() -> None:
    # The jig with its pickup, and as a MIDI round trip writes it: no pickup, every bar
    # line an eighth later, a long note tied across one.
    shifted = "M:6/8\nL:1/8\nK:D\nAdA FdA|Fd2 ef2|edA FGF|ED2-|D D2|\n"
    assert shares(shifted) == shares(JIG)
    assert np.array_equal(sounding_rhythm_features(shifted), sounding_rhythm_features(JIG))
    assert not np.array_equal(rhythm_features(shifted), rhythm_features(JIG))


def test_tuplets_chords_grace_notes_and_padding() -> None:
    assert shares("M:2/4\nL:1/8\nK:D\n(3ABc d2|\n") == [Fraction(1, 6)] * 3 + [Fraction(1, 2)]
    assert shares("M:6/8\nL:1/8\nK:D\n(2AB c|\n") == [Fraction(1, 4)] * 2 + [Fraction(1, 6)]
    # A chord counts once, with its first note's length times its own; grace notes and
    # quoted chord symbols not at all.
    assert shares('M:6/8\nL:1/8\nK:G\n"G"[GB]2A {d}[c/e/]2BA|\n') == shares(
        "M:6/8\nL:1/8\nK:G\nG2A cBA|\n"
    )
    # xml2abc pads a short last bar with invisible rests; a second voice is not the melody.
    plain = "M:6/8\nL:1/8\nK:D\ndAF D3|\n"
    padded = "M:6/8\nL:1/8\nK:D\nV:1\ndAF D3| x6 |\nV:2\nD6|D6|\nV:1\n[V:2]D6|\n"
    assert shares(padded) == shares(plain)


def test_per_bar_numbers_are_per_bars_worth_of_time() -> None:
    # 14 notes over four bars' worth of time, however the lines are cut.
    assert feature(REEL, "notes_per_bar_over_10") == pytest.approx(
        len(shares(REEL)) / float(sum(shares(REEL))) / 10
    )
    cadence = "M:C|\nL:1/8\nK:G\nGABc dBGB|cBAG F2 D2|G2B2 G2 z2|\n"
    assert feature(cadence, "runs_of_three_long_per_bar") == pytest.approx(1 / 3)
    # F2 D2 then G2 B2 G2 z2 is one run of six long notes.
    assert feature(cadence, "runs_of_two_long_per_bar") == pytest.approx(1 / 3)


@pytest.mark.parametrize("text", ["", "junk\x00", "K:D\nABc|", "M:none\nK:D\nABc|", "M:6/8\nK:D\n"])
def test_nothing_readable_gives_zeros(text: str) -> None:
    assert not sounding_rhythm_features(text).any()


def test_the_sounding_summary_line_is_frozen() -> None:
    # Models trained under rhythm-summary-v2 read exactly these characters.
    line = rhythm_summary_line(HORNPIPE, sounding_rhythm_features)
    assert line == "I:rhythm 40000401000090000000087"
    profiled = input_profile(SOUNDING_SUMMARY_PROFILE)(HORNPIPE)
    assert profiled.split("\n")[2:4] == [line, "K:G"]


@pytest.mark.parametrize("spelling", ["M:C|\nL:1/8", "M:2/4\nL:1/16", "M:C\nL:1/8"])
def test_duple_v2_writes_every_duple_spelling_one_way_with_the_same_line(spelling: str) -> None:
    tune = HORNPIPE.replace("M:C|\nL:1/8", spelling)
    profiled = input_profile(CANONICAL_DUPLE_SOUNDING_PROFILE)(tune)
    # Frozen like v2's: models trained under rhythm-summary-duple-v2 read exactly this.
    assert profiled.split("\n")[:4] == [
        "M:2/4",
        "L:1/16",
        "I:rhythm 40000401000090000000087",
        "K:G",
    ]
    assert profiled.split("\n")[4] == HORNPIPE.split("\n")[3]  # the bars are untouched


@pytest.mark.parametrize("target", ["musicxml", "midi"])
@pytest.mark.parametrize("tune", [HORNPIPE, JIG, REEL], ids=["hornpipe", "jig", "reel"])
def test_a_converter_round_trip_keeps_the_sounding_summary(tune: str, target: str) -> None:
    from orchestrator.training.roundtrip import convert_music_text

    trip = convert_music_text(tune, target)
    assert rhythm_summary_line(trip, sounding_rhythm_features) == (
        rhythm_summary_line(tune, sounding_rhythm_features)
    )
    # The written summary (rhythm-summary-v1) changes on each of these round trips.
    assert rhythm_summary_line(trip) != rhythm_summary_line(tune)
