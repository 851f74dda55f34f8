"""Spelling-free rhythm features and the supervised dance-type reference built on them."""

from __future__ import annotations

import numpy as np
import pytest

from bench.rhythm_reference import in_book_report, linear_report
from workers.abc.rhythm import FEATURE_NAMES, meter_kind, rhythm_features

REEL_BARS = "ABcd BcdB|A2B2 c2d2|d2B2 A2A2|A>Bc(3def g4|\n"


def feature(tune: str, name: str) -> float:
    return float(rhythm_features(tune)[FEATURE_NAMES.index(name)])


def test_the_same_bars_give_the_same_features_however_the_meter_is_spelled() -> None:
    half_bar = rhythm_features("M:2/4\nL:1/16\nK:D\n" + REEL_BARS)
    cut_time = rhythm_features("M:C|\nL:1/8\nK:D\n" + REEL_BARS)
    assert np.array_equal(half_bar, cut_time)
    # And a unit rewrite (every length doubled, L: halved) is the same music too.
    jig = rhythm_features("M:6/8\nL:1/8\nK:G\nGAB cBA|G3 G2A|\n")
    jig_sixteenths = rhythm_features("M:6/8\nL:1/16\nK:G\nG2A2B2 c2B2A2|G6 G4A2|\n")
    assert np.array_equal(jig, jig_sixteenths)


def test_lengths_are_shares_of_the_bar() -> None:
    tune = "M:2/4\nL:1/16\nK:D\n" + REEL_BARS
    # 23 notes: 14 eighths of the bar (incl. the triplet's), 8 quarters, one half.
    assert feature(tune, "share_1/8") == pytest.approx(14 / 23)
    assert feature(tune, "share_1/4") == pytest.approx(8 / 23)
    assert feature(tune, "share_1/2") == pytest.approx(1 / 23)
    assert feature(tune, "meter_duple") == 1.0
    assert feature(tune, "tuplets_per_bar") == pytest.approx(1 / 4)
    assert feature(tune, "broken_per_note") == pytest.approx(1 / 23)


def test_a_hornpipe_cadence_is_bars_ending_in_three_long_notes() -> None:
    cadence = "M:C|\nL:1/8\nK:G\nGABc dBGB|cBAG F2 D2|G2B2 G2 z2|\n"
    # Bar 2 ends in two long notes; bar 3 ends in three (G2 G2 z2 counting the rest).
    assert feature(cadence, "bars_ending_three_long") == pytest.approx(1 / 3)
    assert feature(cadence, "bars_ending_two_long") == pytest.approx(2 / 3)
    assert feature("M:C|\nL:1/8\nK:D\n" + "ABcd BcdB|" * 4 + "\n", "bars_ending_two_long") == 0


def test_chords_count_once_grace_notes_not_at_all_and_inline_units_apply() -> None:
    plain = rhythm_features("M:6/8\nL:1/8\nK:G\nGAB cBA|\n")
    dressed = rhythm_features('M:6/8\nL:1/8\nK:G\n"G"[GB]AB {d}cBA|\n')
    assert np.array_equal(plain, dressed)
    inline = rhythm_features("M:6/8\nL:1/8\nK:G\nGAB cBA|[L:1/16]G2A2B2 c2B2A2|\n")
    assert inline[FEATURE_NAMES.index("share_1/6")] == 1.0


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("C|", "duple"),
        ("C", "duple"),
        ("2/4", "duple"),
        ("4/4 % common", "duple"),
        ("6/8", "6/8"),
        ("9/8", "9/8"),
        ("3/4", "3/4"),
        ("5/4", "other"),
        ("none", "other"),
    ],
)
def test_meter_kinds(value: str, kind: str) -> None:
    assert meter_kind(value)[0] == kind


@pytest.mark.parametrize(
    "tune",
    ["", "\x00\xff\xfe junk", "K:D\n", "M:none\nK:C\nabc|\n", "no header at all\nabc|"],
)
def test_unreadable_tunes_give_zeros(tune: str) -> None:
    values = rhythm_features(tune)
    assert values.shape == (len(FEATURE_NAMES),)
    assert not values.any()


def test_a_long_tune_is_read() -> None:
    values = rhythm_features("M:C|\nL:1/8\nK:D\n" + "ABcd BcdB|" * 20_000 + "\n")
    assert values[FEATURE_NAMES.index("share_1/8")] == 1.0
    assert values[FEATURE_NAMES.index("notes_per_bar_over_10")] == pytest.approx(0.8)


def two_clusters(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    truth = ["reel" if i % 3 else "hornpipe" for i in range(n)]
    centre = np.array([[2.0, 0.0, 1.0] if t == "reel" else [-2.0, 1.0, 1.0] for t in truth])
    return centre + rng.normal(0, 0.5, (n, 3)), truth


def test_the_reference_classifier_separates_what_is_separable() -> None:
    train_x, train_truth = two_clusters(90, 0)
    test_x, test_truth = two_clusters(60, 1)
    report = linear_report(train_x, train_truth, test_x, test_truth)
    assert report["balanced_accuracy"] == 1.0
    assert report["confusion"]["hornpipe"]["hornpipe"] == 20
    assert (
        in_book_report(test_x, test_truth, [f"{i:04d}" for i in range(60)])["balanced_accuracy"]
        == 1.0
    )


def test_the_reference_classifier_weighs_classes_alike() -> None:
    # 9 reels to 1 hornpipe, overlapping: an unweighted fit answers "reel" for most
    # hornpipes (recall about 0.25), one that weighs both classes alike does not.
    rng = np.random.default_rng(0)
    truth = ["hornpipe" if i % 10 == 0 else "reel" for i in range(2000)]
    x = rng.normal(0, 1, (2000, 3))
    x[:, 0] += np.array([1.5 if t == "hornpipe" else 0.0 for t in truth])
    report = linear_report(x, truth, x, truth)
    assert report["per_class"]["hornpipe"]["recall"] >= 0.6
    assert report["per_class"]["reel"]["recall"] >= 0.6
