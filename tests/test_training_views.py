"""Training views: converter round trips (cached) and augmented copies of a tune."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest

from orchestrator.training.data import content_key
from orchestrator.training.roundtrip import RoundTripCache, convert_music_text, filled_cache
from orchestrator.training.views import pick_two, tune_views
from tests.test_training import record

REEL = "M:4/4\nL:1/8\nK:D\n|:dA FA dA FA|BAFA D2FA|dA FA dA FA|BAGF E2FE:|\n"
NOTES = "dAFA"
FIELD = re.compile(r"^[A-Za-z]:")


def letters(music_text: str) -> str:
    """Note letters of the body, case-folded: what a conversion must keep."""
    body = "\n".join(line for line in music_text.splitlines() if not FIELD.match(line))
    return "".join(ch for ch in body if ch.isalpha() and ch.lower() in "abcdefg").lower()


@pytest.mark.parametrize("target", ["musicxml", "midi"])
def test_round_trip_keeps_the_notes(target: str) -> None:
    converted = convert_music_text(REEL, target)
    assert converted != REEL
    assert "K:D" in converted
    # MIDI expands the repeat, so the first bars' notes come back at least once.
    assert NOTES.lower() in letters(converted)


# music21, which writes the round trips' MusicXML and MIDI, reads "A>.B" (a broken rhythm
# then a decoration, slur or grace) as two even notes and drops a note marked "H".
DECORATED = "M:C|\nL:1/8\nK:G\nd>.cB>.A G>.AB>.c|Hd2 B>G A2 Hg2|e>uda>{b}g f>(ed)c|B2 G2 G4|]\n"


@pytest.mark.parametrize("target", ["musicxml", "midi"])
def test_round_trip_keeps_decorated_broken_rhythms_and_fermata_notes(target: str) -> None:
    from workers.abc.sounding_rhythm import sounding_notes

    converted = convert_music_text(DECORATED, target)
    assert [n.share for n in sounding_notes(converted)] == [
        n.share for n in sounding_notes(DECORATED)
    ]


def test_a_tune_with_an_over_full_bar_still_makes_a_midi_round_trip() -> None:
    # music21 shares one time signature object between the bars around an over-full bar,
    # and its MIDI writer then refused the tune (StreamException).
    tune = "M:6/8\nL:1/8\nK:D\nABc def|ABc def g|ABc def|ABc dfa|\n"
    assert "dfa" in letters(convert_music_text(tune, "midi"))


def test_music21_spelling_writes_out_broken_rhythms_and_fermatas_only() -> None:
    from orchestrator.training.music21_spelling import for_music21

    head = "M:4/4\nL:1/8\nK:G\n"
    assert for_music21(head + "A2>.B [ce]>>d z<(G c)|\n") == (
        head + "A3.B/2 [c7/4e7/4]d/4 z/2(G3/2 c)|\n"
    )
    assert for_music21(head + "HA2 B>C>D|\n") == head + "!fermata!A2 B3/2C3/4D/2|\n"
    # Across a bar line there is no pair to write out; a U: field may redefine H.
    assert for_music21(head + "A>|B c2|\n") == head + "A>|B c2|\n"
    assert for_music21("U:H=!trill!\n" + head + "HA2|\n") == "U:H=!trill!\n" + head + "HA2|\n"


def test_round_trip_of_junk_says_why() -> None:
    with pytest.raises(ValueError, match=r"\w"):
        convert_music_text("M:4/4\nK:D\n|]|]\n", "midi")


def test_cache_converts_once_and_persists(tmp_path: Path) -> None:
    tunes = [(content_key(REEL), REEL), (content_key("junk"), "M:4/4\nK:D\n|]|]\n")]
    cache = RoundTripCache(tmp_path)
    counts = cache.fill(tunes, workers=1)
    assert counts == {"converted": 2, "failed": 2, "retried": 0, "cached": 0}
    again = RoundTripCache(tmp_path)  # a new process reads the file
    assert again.fill(tunes, workers=1) == {"converted": 0, "failed": 0, "retried": 0, "cached": 4}
    assert again.get(content_key(REEL), "midi") == cache.get(content_key(REEL), "midi")
    assert again.get(content_key("junk"), "musicxml") is None
    assert again.entries[(content_key("junk"), "midi")].error


def test_a_run_from_a_filled_cache_still_says_which_round_trips_it_lacks(
    tmp_path: Path,
) -> None:
    tunes = [(content_key(REEL), REEL), (content_key("junk"), "M:4/4\nK:D\n|]|]\n")]
    _, first = filled_cache(tmp_path, tunes, workers=1)
    assert (first["failed"], first["unavailable"]) == (2, 2)
    # The second run converts nothing, yet the junk tune still trains without its views.
    _, second = filled_cache(tmp_path, tunes, workers=1)
    assert (second["failed"], second["cached"], second["unavailable"]) == (0, 4, 2)


def test_a_slow_conversion_gets_a_second_longer_try_before_its_failure_is_cached(
    tmp_path: Path,
) -> None:
    tunes = [(content_key(REEL), REEL)]
    # 10 ms is less than music21 takes to start: both formats run out of time at first,
    # as a tune does on a loaded machine, and convert on the longer second try.
    cache = RoundTripCache(tmp_path)
    counts = cache.fill(tunes, workers=1, timeouts_s=(0.01, 120.0))
    assert counts == {"converted": 2, "failed": 0, "retried": 2, "cached": 0}
    assert cache.get(content_key(REEL), "midi") == convert_music_text(REEL, "midi")
    # Out of time on both tries: cached as failed, with the limit in the reason.
    other = tmp_path / "other"
    slow = RoundTripCache(other)
    assert slow.fill(tunes, workers=1, timeouts_s=(0.01, 0.01))["failed"] == 2
    assert RoundTripCache(other).entries[(content_key(REEL), "musicxml")].error == (
        "the conversion took over 0.01 s"
    )


def test_cache_takes_what_another_process_wrote_meanwhile(tmp_path: Path) -> None:
    tunes = [(content_key(REEL), REEL)]
    late = RoundTripCache(tmp_path)  # opened before the other process filled the file
    assert RoundTripCache(tmp_path).fill(tunes, workers=1)["converted"] == 2
    assert late.fill(tunes, workers=1) == {"converted": 0, "failed": 0, "retried": 0, "cached": 2}
    assert len(late.path.read_text().splitlines()) == 2  # nothing converted twice


def test_cache_redoes_a_line_cut_short(tmp_path: Path) -> None:
    tunes = [(content_key(REEL), REEL)]
    RoundTripCache(tmp_path).fill(tunes, workers=1)
    path = RoundTripCache(tmp_path).path
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1][:40])  # a writer killed mid-line
    reopened = RoundTripCache(tmp_path)
    assert reopened.fill(tunes, workers=1)["cached"] == 1
    assert all(reopened.get(content_key(REEL), f) for f in ("musicxml", "midi"))
    assert RoundTripCache(tmp_path).fill(tunes, workers=1)["cached"] == 2  # and kept it


def test_views_are_deterministic_and_start_with_the_original() -> None:
    tune = record(music_text=REEL, key_hash=content_key(REEL))
    first = tune_views(tune, 4, seed=0, p=0.5, roundtrips=lambda key: ["M:4/4\nK:D\nd4|\n"])
    assert first == tune_views(tune, 4, 0, 0.5, lambda key: ["M:4/4\nK:D\nd4|\n"])
    assert first[0] == REEL and first[-1] == "M:4/4\nK:D\nd4|\n"
    assert len(set(first)) == len(first) >= 3  # augmentations changed the text
    assert tune_views(tune, 4, seed=1, p=0.5, roundtrips=None) != first[:-1]


def test_pick_two_gives_two_different_views() -> None:
    rng = random.Random(0)
    assert pick_two(1, rng) == (0, 0)
    picks = [pick_two(5, rng) for _ in range(200)]
    assert all(a != b for a, b in picks)
    assert {a for a, _ in picks} == set(range(5))


def test_meter_spelling_is_opt_in_and_gives_views_in_the_other_spelling() -> None:
    from orchestrator.training.augment import BASE_OPS

    half_bars = "M:2/4\nL:1/16\nK:D\n|:dAFA dAFA|BAFA D2FA|dAFA dAFA|BAGF E2FE:|\n"
    tune = record(music_text=half_bars, key_hash=content_key(half_bars))
    meters = {
        ops: {
            line
            for seed in range(4)
            for view in tune_views(tune, 4, seed, 0.5, None, ops)
            for line in view.splitlines()
            if line.startswith("M:")
        }
        for ops in (BASE_OPS, (*BASE_OPS, "meter_spelling"))
    }
    assert meters[BASE_OPS] == {"M:2/4"}  # the shipped recipe never respells the meter
    assert meters[(*BASE_OPS, "meter_spelling")] - {"M:2/4"}
    # Opting in leaves the recipe's own copies alone wherever the new op was not drawn.
    with_op = tune_views(tune, 4, 0, 0.5, None, (*BASE_OPS, "meter_spelling"))
    base = tune_views(tune, 4, 0, 0.5, None, BASE_OPS)
    assert any(view in base[1:] for view in with_op[1:])


def test_auto_converter_processes_follow_the_cpus_this_process_may_use() -> None:
    import subprocess
    import sys

    from orchestrator.training.roundtrip import MAX_AUTO_WORKERS, converter_processes

    assert converter_processes(3) == 3
    usable = len(os.sched_getaffinity(0))
    assert converter_processes("auto") == min(usable, MAX_AUTO_WORKERS)
    # A worker pinned to one CPU (taskset, a container or Slurm limit) converts with one.
    pinned = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from orchestrator.training.roundtrip import converter_processes; "
            "print(converter_processes('auto'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert pinned.stdout.strip() == "1"


@pytest.mark.parametrize(("given", "expected"), [("auto", "auto"), ("3", 3)])
def test_the_converter_process_setting_is_auto_or_a_count(given: str, expected: object) -> None:
    from pydantic import ValidationError

    from orchestrator.training.cli import parse_args
    from schemas.settings import Settings

    assert parse_args(["--out", "m", "--convert-workers", given]).convert_workers == expected
    assert parse_args(["--out", "m"]).convert_workers == "auto"
    assert Settings(train_convert_workers=given).train_convert_workers == expected
    assert Settings().train_convert_workers == "auto"
    for bad in ("0", "many"):
        with pytest.raises(SystemExit):
            parse_args(["--out", "m", "--convert-workers", bad])
        with pytest.raises(ValidationError):
            Settings(train_convert_workers=bad)
