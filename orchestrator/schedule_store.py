"""The SQL of sources, schedules and schedule runs: edit them, find what is due, claim slots.

Reads return frozen views, never ORM rows, so callers hold no session. A slot is claimed
in one transaction that (1) checks the scheduler's lease is still held with its fencing
token, (2) moves the schedule's next_run_at on only if nobody moved it first, and (3)
inserts the run row, unique per (schedule, slot): two processes that both believe they
lead can never both run a slot.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import leader
from orchestrator.schedules import ScheduleSpec, next_slot_after
from schemas.db import (
    Job,
    Piece,
    RunStatus,
    Schedule,
    ScheduleAction,
    ScheduleRun,
    Source,
    as_utc,
)
from workers.database import dialect_insert, session_scope
from workers.errors import BadArgumentError, UserError

MAX_NAME_CHARS = 128
MAX_ERROR_CHARS = 4000


class NameTakenError(UserError):
    pass


class NotFoundError(UserError, LookupError):
    pass


@dataclass(frozen=True)
class RunView:
    id: int
    schedule_id: int
    slot_at: datetime
    leader: str
    fencing_token: int
    status: str
    job_id: int | None
    error: str | None
    started_at: datetime
    finished_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "schedule_id": self.schedule_id,
            "slot_at": self.slot_at.isoformat(),
            "leader": self.leader,
            "fencing_token": self.fencing_token,
            "status": self.status,
            "job_id": self.job_id,
            "error": self.error,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }


@dataclass(frozen=True)
class ScheduleView:
    id: int
    name: str
    action: str
    spec: ScheduleSpec
    params: dict[str, Any]
    paused: bool
    next_run_at: datetime | None
    last_run_at: datetime | None
    created_at: datetime
    source_id: int | None = None
    source_name: str | None = None
    source_path: str | None = None
    last_run: RunView | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "action": self.action,
            "when": self.spec.describe(),
            "every_s": self.spec.every_s,
            "cron": self.spec.cron,
            "after_pieces": self.spec.after_pieces,
            "params": self.params,
            "paused": self.paused,
            "source": self.source_name,
            "path": self.source_path,
            "next_run_at": self.next_run_at.isoformat() if self.next_run_at else None,
            "last_run_at": self.last_run_at.isoformat() if self.last_run_at else None,
            "created_at": self.created_at.isoformat(),
            "last_run": self.last_run.to_dict() if self.last_run else None,
        }


@dataclass(frozen=True)
class SourceView:
    id: int
    name: str
    path: str
    created_at: datetime
    schedule: ScheduleView | None

    @property
    def paused(self) -> bool:
        return self.schedule is not None and self.schedule.paused

    def to_dict(self) -> dict[str, Any]:
        sched = self.schedule
        return {
            "id": self.id,
            "name": self.name,
            "path": self.path,
            "created_at": self.created_at.isoformat(),
            "paused": self.paused,
            "when": sched.spec.describe() if sched else None,
            "next_run_at": sched.next_run_at.isoformat() if sched and sched.next_run_at else None,
            "last_run": sched.last_run.to_dict() if sched and sched.last_run else None,
        }


# ---- editing (the CLI) ----


def add_source(
    sessions: sessionmaker[Session], name: str, path: Path, spec: ScheduleSpec, now: datetime
) -> SourceView:
    """A catalogue root and its rescan schedule, both named `name`."""
    _check_name(name)
    root = path.expanduser().absolute()
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise UserError(f"cannot add source {name!r}: {root} {what}; give an existing directory")
    with _unique_names(name), session_scope(sessions) as session:
        _refuse_taken(session, name)
        source = Source(name=name, path=str(root), created_at=now)
        session.add(source)
        session.flush()
        rescan = _new_schedule(name, ScheduleAction.RESCAN, spec, now, {}, source.id)
        rescan.next_run_at = now  # a new catalogue root is scanned at once, then on its grid
        session.add(rescan)
    return get_source(sessions, name)


def add_schedule(
    sessions: sessionmaker[Session],
    name: str,
    action: str,
    spec: ScheduleSpec,
    now: datetime,
    params: dict[str, Any] | None = None,
) -> ScheduleView:
    """A schedule for an action that needs no source (reindex, train, noop)."""
    _check_name(name)
    if action == ScheduleAction.RESCAN:
        raise BadArgumentError(
            "rescans belong to a source: add one with `clamp-index sources add NAME PATH`"
        )
    if action not in ScheduleAction.ALL:
        choices = ", ".join(a for a in ScheduleAction.ALL if a != ScheduleAction.RESCAN)
        raise BadArgumentError(f"unknown action {action!r}: choose one of {choices}")
    with _unique_names(name), session_scope(sessions) as session:
        _refuse_taken(session, name)
        session.add(_new_schedule(name, action, spec, now, params or {}, None))
    return get_schedule(sessions, name)


def remove_source(sessions: sessionmaker[Session], name: str) -> None:
    """The source, its schedule and their run history."""
    with session_scope(sessions) as session:
        source_id = session.scalar(select(Source.id).where(Source.name == name))
        if source_id is None:
            raise _unknown("source", name, "sources")
        # Deleted explicitly rather than left to ON DELETE CASCADE: SQLite enforces foreign
        # keys only on connections that enabled them.
        schedule_ids = select(Schedule.id).where(Schedule.source_id == source_id)
        session.execute(delete(ScheduleRun).where(ScheduleRun.schedule_id.in_(schedule_ids)))
        session.execute(delete(Schedule).where(Schedule.source_id == source_id))
        session.execute(delete(Source).where(Source.id == source_id))


def remove_schedule(sessions: sessionmaker[Session], name: str) -> None:
    with session_scope(sessions) as session:
        row = session.scalar(select(Schedule).where(Schedule.name == name))
        if row is None:
            raise _unknown("schedule", name, "schedules")
        if row.source_id is not None:
            raise UserError(
                f"schedule {name!r} rescans a source: remove it with "
                f"`clamp-index sources remove {name}`"
            )
        session.execute(delete(ScheduleRun).where(ScheduleRun.schedule_id == row.id))
        session.execute(delete(Schedule).where(Schedule.id == row.id))


def set_source_paused(
    sessions: sessionmaker[Session], name: str, paused: bool, now: datetime
) -> SourceView:
    with session_scope(sessions) as session:
        source_id = session.scalar(select(Source.id).where(Source.name == name))
        if source_id is None:
            raise _unknown("source", name, "sources")
        for row in session.scalars(select(Schedule).where(Schedule.source_id == source_id)):
            _set_paused(row, paused, now)
    return get_source(sessions, name)


def set_schedule_paused(
    sessions: sessionmaker[Session], name: str, paused: bool, now: datetime
) -> ScheduleView:
    with session_scope(sessions) as session:
        row = session.scalar(select(Schedule).where(Schedule.name == name))
        if row is None:
            raise _unknown("schedule", name, "schedules")
        _set_paused(row, paused, now)
    return get_schedule(sessions, name)


def list_sources(sessions: sessionmaker[Session]) -> list[SourceView]:
    schedules = {s.source_id: s for s in list_schedules(sessions) if s.source_id is not None}
    with session_scope(sessions) as session:
        return [
            SourceView(s.id, s.name, s.path, as_utc(s.created_at), schedules.get(s.id))
            for s in session.scalars(select(Source).order_by(Source.name))
        ]


def list_schedules(sessions: sessionmaker[Session]) -> list[ScheduleView]:
    with session_scope(sessions) as session:
        return _schedule_views(session, select(Schedule).order_by(Schedule.name))


def get_source(sessions: sessionmaker[Session], name: str) -> SourceView:
    for source in list_sources(sessions):
        if source.name == name:
            return source
    raise _unknown("source", name, "sources")


def get_schedule(sessions: sessionmaker[Session], name: str) -> ScheduleView:
    with session_scope(sessions) as session:
        views = _schedule_views(session, select(Schedule).where(Schedule.name == name))
    if not views:
        raise _unknown("schedule", name, "schedules")
    return views[0]


def list_runs(
    sessions: sessionmaker[Session], schedule_name: str | None = None, limit: int = 20
) -> list[RunView]:
    """The latest runs, newest first (of one schedule when named)."""
    with session_scope(sessions) as session:
        stmt = select(ScheduleRun).order_by(ScheduleRun.id.desc()).limit(limit)
        if schedule_name is not None:
            schedule_id = session.scalar(select(Schedule.id).where(Schedule.name == schedule_name))
            if schedule_id is None:
                raise _unknown("schedule", schedule_name, "schedules")
            stmt = stmt.where(ScheduleRun.schedule_id == schedule_id)
        return [_run_view(r) for r in session.scalars(stmt)]


# ---- the scheduler ----


def due_schedules(sessions: sessionmaker[Session], now: datetime) -> list[ScheduleView]:
    """Unpaused schedules whose next run is at or before `now`, earliest first."""
    with session_scope(sessions) as session:
        return _schedule_views(
            session,
            select(Schedule)
            .where(Schedule.paused.is_(False), Schedule.next_run_at <= now)
            .order_by(Schedule.next_run_at, Schedule.id),
        )


def pieces_changed_since(sessions: sessionmaker[Session], since: datetime) -> int:
    """Pieces added or changed (deletions included: the catalogue changed) after `since`."""
    with session_scope(sessions) as session:
        return session.scalar(select(func.count()).where(Piece.updated_at > since)) or 0


def running_schedule_ids(sessions: sessionmaker[Session]) -> set[int]:
    with session_scope(sessions) as session:
        return set(
            session.scalars(
                select(ScheduleRun.schedule_id).where(ScheduleRun.status == RunStatus.RUNNING)
            )
        )


class _NotClaimed(Exception):
    """Rolls a claim's transaction back."""


def claim_slot(
    sessions: sessionmaker[Session],
    lease: leader.Lease,
    schedule: ScheduleView,
    slot_at: datetime,
    next_run_at: datetime,
    now: datetime,
    *,
    skipped_because: str | None = None,
) -> int | None:
    """Record the run of one slot and move the schedule on; None when not ours to run.

    Not ours: the lease is gone (or its token changed), the schedule was edited, paused or
    already moved on by someone else, or the slot already has a run. With
    `skipped_because`, the slot is recorded as skipped instead of running.
    """
    try:
        with session_scope(sessions) as session:
            if not leader.holds(session, lease, now):
                raise _NotClaimed
            moved = session.execute(
                update(Schedule)
                .where(
                    Schedule.id == schedule.id,
                    Schedule.paused.is_(False),
                    Schedule.next_run_at == schedule.next_run_at,
                )
                .values(next_run_at=next_run_at, last_run_at=slot_at, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            if not moved.rowcount:
                raise _NotClaimed
            skipped = skipped_because is not None
            run_id = session.execute(
                dialect_insert(session, ScheduleRun.__table__)
                .values(
                    schedule_id=schedule.id,
                    slot_at=slot_at,
                    leader=lease.holder[:MAX_NAME_CHARS],
                    fencing_token=lease.token,
                    status=RunStatus.SKIPPED if skipped else RunStatus.RUNNING,
                    error=skipped_because,
                    started_at=now,
                    finished_at=now if skipped else None,
                )
                .on_conflict_do_nothing(index_elements=["schedule_id", "slot_at"])
                .returning(ScheduleRun.id)
            ).scalar()
            if run_id is None:
                raise _NotClaimed
            return int(run_id)
    except _NotClaimed:
        return None


def finish_run(
    sessions: sessionmaker[Session],
    run_id: int,
    status: str,
    now: datetime,
    job_id: int | None = None,
    error: str | None = None,
) -> None:
    with session_scope(sessions) as session:
        if job_id is not None and session.get(Job, job_id) is None:
            job_id = None  # an action's id that names no job must not fail the record
        session.execute(
            update(ScheduleRun)
            .where(ScheduleRun.id == run_id)
            .values(
                status=status,
                job_id=job_id,
                error=error[:MAX_ERROR_CHARS] if error else None,
                finished_at=now,
            )
            .execution_options(synchronize_session=False)
        )


def abandon_others_runs(sessions: sessionmaker[Session], lease: leader.Lease, now: datetime) -> int:
    """Runs left `running` by earlier leaders (dead, or cut off past their lease) end as
    abandoned, so they no longer hold their schedules back; returns how many."""
    with session_scope(sessions) as session:
        if not leader.holds(session, lease, now):
            return 0
        result = session.execute(
            update(ScheduleRun)
            .where(ScheduleRun.status == RunStatus.RUNNING, ScheduleRun.leader != lease.holder)
            .values(
                status=RunStatus.ABANDONED,
                error="the scheduler running it lost its lease before it ended",
                finished_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount)


def acquire_lease(
    sessions: sessionmaker[Session], role: str, holder: str, lease_s: float, now: datetime
) -> leader.Lease | None:
    with session_scope(sessions) as session:
        return leader.acquire(session, role, holder, lease_s, now)


def renew_lease(
    sessions: sessionmaker[Session], lease: leader.Lease, lease_s: float, now: datetime
) -> leader.Lease | None:
    with session_scope(sessions) as session:
        return leader.renew(session, lease, lease_s, now)


def release_lease(sessions: sessionmaker[Session], lease: leader.Lease, now: datetime) -> bool:
    with session_scope(sessions) as session:
        return leader.release(session, lease, now)


def current_lease(sessions: sessionmaker[Session], role: str) -> leader.Lease | None:
    with session_scope(sessions) as session:
        return leader.current(session, role)


# ---- helpers ----


def _check_name(name: str) -> None:
    if not name.strip() or len(name) > MAX_NAME_CHARS or name != name.strip():
        raise BadArgumentError(
            f"bad name {name!r}: use 1 to {MAX_NAME_CHARS} characters, no surrounding spaces"
        )


@contextmanager
def _unique_names(name: str) -> Iterator[None]:
    """Turns a unique-name violation that raced past the check into the same clear error."""
    try:
        yield
    except IntegrityError:
        raise _taken(name) from None


def _refuse_taken(session: Session, name: str) -> None:
    taken = session.scalar(select(Schedule.id).where(Schedule.name == name)) or session.scalar(
        select(Source.id).where(Source.name == name)
    )
    if taken is not None:
        raise _taken(name)


def _taken(name: str) -> NameTakenError:
    return NameTakenError(
        f"the name {name!r} is already used by a source or schedule: pick another, or "
        f"remove the old one first"
    )


def _unknown(kind: str, name: str, group: str) -> NotFoundError:
    return NotFoundError(f"no {kind} named {name!r}: see `clamp-index {group} list`")


def _new_schedule(
    name: str,
    action: str,
    spec: ScheduleSpec,
    now: datetime,
    params: dict[str, Any],
    source_id: int | None,
) -> Schedule:
    return Schedule(
        name=name,
        action=action,
        source_id=source_id,
        every_s=spec.every_s,
        cron=spec.cron,
        after_pieces=spec.after_pieces,
        params=params,
        paused=False,
        next_run_at=next_slot_after(spec, now, now),
        created_at=now,
        updated_at=now,
    )


def _set_paused(row: Schedule, paused: bool, now: datetime) -> None:
    if row.paused == paused:
        return
    row.paused = paused
    row.updated_at = now
    if not paused:
        # Slots that passed while paused were declined, not missed: the next is after now.
        spec = _spec_of(row)
        row.next_run_at = next_slot_after(spec, as_utc(row.created_at), now)


def _spec_of(row: Schedule) -> ScheduleSpec:
    return ScheduleSpec(every_s=row.every_s, cron=row.cron, after_pieces=row.after_pieces)


def _run_view(r: ScheduleRun) -> RunView:
    return RunView(
        id=r.id,
        schedule_id=r.schedule_id,
        slot_at=as_utc(r.slot_at),
        leader=r.leader,
        fencing_token=r.fencing_token,
        status=r.status,
        job_id=r.job_id,
        error=r.error,
        started_at=as_utc(r.started_at),
        finished_at=as_utc(r.finished_at) if r.finished_at else None,
    )


def _schedule_views(session: Session, stmt: Any) -> list[ScheduleView]:
    rows = list(session.scalars(stmt))
    if not rows:
        return []
    ids = [r.id for r in rows]
    latest = (
        select(func.max(ScheduleRun.id))
        .where(ScheduleRun.schedule_id.in_(ids))
        .group_by(ScheduleRun.schedule_id)
    )
    last_runs = {
        r.schedule_id: _run_view(r)
        for r in session.scalars(select(ScheduleRun).where(ScheduleRun.id.in_(latest)))
    }
    source_ids = [r.source_id for r in rows if r.source_id is not None]
    sources = {s.id: s for s in session.scalars(select(Source).where(Source.id.in_(source_ids)))}
    views = []
    for r in rows:
        source = sources.get(r.source_id) if r.source_id is not None else None
        views.append(
            ScheduleView(
                id=r.id,
                name=r.name,
                action=r.action,
                spec=_spec_of(r),
                params=dict(r.params or {}),
                paused=r.paused,
                next_run_at=as_utc(r.next_run_at) if r.next_run_at else None,
                last_run_at=as_utc(r.last_run_at) if r.last_run_at else None,
                created_at=as_utc(r.created_at),
                source_id=r.source_id,
                source_name=source.name if source else None,
                source_path=source.path if source else None,
                last_run=last_runs.get(r.id),
            )
        )
    return views
