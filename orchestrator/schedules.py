"""Schedule specs (every / cron / after N pieces): parse, validate, and compute due times.

Pure: no I/O, and time only ever comes in as an argument, so tests drive it with a fake
clock. Times are aware UTC datetimes; cron lines are read in UTC.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cronsim import CronSim, CronSimError

from workers.errors import BadArgumentError

Clock = Callable[[], datetime]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_EVERY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
MIN_EVERY_S = 0.1  # below this a schedule only floods the runs table


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ScheduleSpec:
    """When a schedule fires: exactly one of the three is set."""

    every_s: float | None = None
    cron: str | None = None
    after_pieces: int | None = None

    def describe(self) -> str:
        if self.every_s is not None:
            return f"every {format_seconds(self.every_s)}"
        if self.cron is not None:
            return f"cron {self.cron} (UTC)"
        return f"after {self.after_pieces} new or changed pieces"


def parse_every(text: str) -> float:
    """'30s', '15m', '1h', '1d' or a plain number of seconds -> seconds."""
    match = _EVERY.match(text)
    if match is None:
        raise BadArgumentError(
            f"bad interval {text!r}: give a number with an optional unit s, m, h or d "
            "(e.g. 30s, 15m, 1h, 1d)"
        )
    seconds = float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()]
    if not math.isfinite(seconds) or seconds < MIN_EVERY_S:
        raise BadArgumentError(f"bad interval {text!r}: it must be at least {MIN_EVERY_S}s")
    return seconds


def format_seconds(seconds: float) -> str:
    """The shortest exact spelling of an interval: 3600 -> '1h', 90 -> '90s'."""
    for unit in ("d", "h", "m"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    return f"{seconds:g}s"


def parse_cron(line: str) -> str:
    """A five-field cron line, normalised to single spaces; bad lines are bad arguments."""
    fields = line.split()
    if len(fields) != 5:
        raise BadArgumentError(
            f"bad cron line {line!r}: it needs 5 fields (minute hour day month weekday), "
            'e.g. "0 3 * * *" for 03:00 UTC every day'
        )
    normalised = " ".join(fields)
    try:
        CronSim(normalised, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise BadArgumentError(f"bad cron line {line!r}: {exc}") from None
    return normalised


def make_spec(
    every: str | float | None = None, cron: str | None = None, after_pieces: int | None = None
) -> ScheduleSpec:
    """The spec from command-line style options; exactly one must be given."""
    given = [name for name, v in (("--every", every), ("--cron", cron)) if v is not None]
    if after_pieces is not None:
        given.append("--after-pieces")
    if len(given) != 1:
        raise BadArgumentError(
            "give exactly one of --every, --cron or --after-pieces"
            + (f" (got {', '.join(given)})" if given else "")
        )
    if every is not None:
        seconds = parse_every(every) if isinstance(every, str) else parse_every(str(every))
        return ScheduleSpec(every_s=seconds)
    if cron is not None:
        return ScheduleSpec(cron=parse_cron(cron))
    assert after_pieces is not None
    if after_pieces < 1:
        raise BadArgumentError(f"bad --after-pieces {after_pieces}: it must be at least 1")
    return ScheduleSpec(after_pieces=after_pieces)


def next_slot_after(spec: ScheduleSpec, anchor: datetime, now: datetime) -> datetime:
    """The first slot strictly after `now`.

    Interval slots sit on a fixed grid, anchor + k * every, so runs never drift by the time
    each one took. Piece-count schedules have no slots: they may be checked at once.
    """
    if spec.every_s is not None:
        every = timedelta(seconds=spec.every_s)
        if now < anchor:
            return anchor
        return anchor + every * (math.floor((now - anchor) / every) + 1)
    if spec.cron is not None:
        return next(iter(CronSim(spec.cron, now.astimezone(UTC)))).astimezone(UTC)
    return now


@dataclass(frozen=True)
class Firing:
    """One claimed slot: which slot it runs and when the schedule is due next."""

    slot_at: datetime
    next_run_at: datetime


def firing(
    spec: ScheduleSpec, anchor: datetime, next_run_at: datetime, now: datetime
) -> Firing | None:
    """The firing of a schedule due at `next_run_at`, or None when it is not due yet.

    However many slots were missed (the scheduler was down across them), they fire once,
    as the earliest missed slot; the next one is the first slot after now. Piece-count
    schedules fire at `now` (the caller checks the count) and may fire again at once.
    """
    if next_run_at > now:
        return None
    if spec.after_pieces is not None:
        return Firing(slot_at=now, next_run_at=now)
    return Firing(slot_at=next_run_at, next_run_at=next_slot_after(spec, anchor, now))


def enough_pieces(spec: ScheduleSpec, changed_pieces: int) -> bool:
    """Whether a piece-count schedule has seen enough new or changed pieces to fire."""
    return spec.after_pieces is None or changed_pieces >= spec.after_pieces
