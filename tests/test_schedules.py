"""Schedule specs: parsing, next due times, missed slots firing once (pure, fake times)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.schedules import (
    ScheduleSpec,
    enough_pieces,
    firing,
    format_seconds,
    make_spec,
    next_slot_after,
    parse_cron,
    parse_every,
)
from workers.errors import BadArgumentError

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("1h", 3600), ("1d", 86400), ("90", 90), ("1.5H", 5400)],
)
def test_intervals_parse(text: str, seconds: float) -> None:
    assert parse_every(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1x", "-5m", "1h30m", "0s", "0.01"])
def test_bad_intervals_are_bad_arguments(text: str) -> None:
    with pytest.raises(BadArgumentError):
        parse_every(text)


def test_intervals_print_back_in_their_unit() -> None:
    assert [format_seconds(s) for s in (30, 900, 3600, 86400, 90, 0.5)] == [
        "30s",
        "15m",
        "1h",
        "1d",
        "90s",
        "0.5s",
    ]


def test_cron_lines_are_checked_and_normalised() -> None:
    assert parse_cron("  0  3 * * *") == "0 3 * * *"
    for bad in ("0 3 * *", "61 3 * * *", "0 3 * * * *", "a b c d e"):
        with pytest.raises(BadArgumentError, match="cron"):
            parse_cron(bad)


def test_exactly_one_kind_of_spec() -> None:
    assert make_spec(every="1h") == ScheduleSpec(every_s=3600)
    assert make_spec(cron="0 3 * * *") == ScheduleSpec(cron="0 3 * * *")
    assert make_spec(after_pieces=500) == ScheduleSpec(after_pieces=500)
    with pytest.raises(BadArgumentError, match="exactly one"):
        make_spec()
    with pytest.raises(BadArgumentError, match="--every, --cron"):
        make_spec(every="1h", cron="0 3 * * *")
    with pytest.raises(BadArgumentError, match="at least 1"):
        make_spec(after_pieces=0)


def test_interval_slots_sit_on_a_grid_strictly_after_now() -> None:
    hourly = ScheduleSpec(every_s=3600)
    assert next_slot_after(hourly, T0, T0) == T0 + timedelta(hours=1)
    assert next_slot_after(hourly, T0, T0 + timedelta(minutes=30)) == T0 + timedelta(hours=1)
    # Exactly on a slot: that slot is not "after now".
    assert next_slot_after(hourly, T0, T0 + timedelta(hours=1)) == T0 + timedelta(hours=2)
    # A run that took 7 minutes does not push later slots by 7 minutes.
    late = T0 + timedelta(hours=3, minutes=7)
    assert next_slot_after(hourly, T0, late) == T0 + timedelta(hours=4)


def test_cron_next_times() -> None:
    nightly = ScheduleSpec(cron="0 3 * * *")
    assert next_slot_after(nightly, T0, T0) == datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
    at_three = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
    assert next_slot_after(nightly, T0, at_three) == datetime(2026, 3, 3, 3, 0, tzinfo=UTC)
    just_before = at_three - timedelta(microseconds=500)
    assert next_slot_after(nightly, T0, just_before) == at_three
    quarter = ScheduleSpec(cron="*/15 * * * 1-5")  # weekdays only: 2026-03-01 is a Sunday
    assert next_slot_after(quarter, T0, T0) == datetime(2026, 3, 2, 0, 0, tzinfo=UTC)


def test_not_due_before_its_time() -> None:
    spec = ScheduleSpec(every_s=60)
    assert firing(spec, T0, T0 + timedelta(seconds=60), T0 + timedelta(seconds=59)) is None
    due = firing(spec, T0, T0 + timedelta(seconds=60), T0 + timedelta(seconds=60))
    assert due is not None and due.slot_at == T0 + timedelta(seconds=60)
    assert due.next_run_at == T0 + timedelta(seconds=120)


def test_missed_interval_slots_fire_once() -> None:
    spec = ScheduleSpec(every_s=60)
    # The scheduler was down from 12:00:30 to 12:10:05: ten slots passed.
    now = T0 + timedelta(minutes=10, seconds=5)
    first = firing(spec, T0, T0 + timedelta(seconds=60), now)
    assert first is not None
    assert first.slot_at == T0 + timedelta(seconds=60)  # the earliest missed slot, once
    assert first.next_run_at == T0 + timedelta(minutes=11)  # the first slot after now
    assert firing(spec, T0, first.next_run_at, now) is None  # nothing else is due now


def test_missed_cron_slots_fire_once() -> None:
    nightly = ScheduleSpec(cron="0 3 * * *")
    missed = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
    now = datetime(2026, 3, 5, 10, 0, tzinfo=UTC)  # down for three nights
    due = firing(nightly, T0, missed, now)
    assert due is not None and due.slot_at == missed
    assert due.next_run_at == datetime(2026, 3, 6, 3, 0, tzinfo=UTC)
    assert firing(nightly, T0, due.next_run_at, now) is None


def test_piece_count_schedules_fire_when_enough_changed() -> None:
    spec = ScheduleSpec(after_pieces=100)
    assert not enough_pieces(spec, 99)
    assert enough_pieces(spec, 100)
    now = T0 + timedelta(days=3)
    due = firing(spec, T0, T0, now)
    assert due is not None and due.slot_at == now and due.next_run_at == now
    assert enough_pieces(ScheduleSpec(every_s=60), 0)  # time schedules ignore counts
