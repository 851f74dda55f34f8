"""Leader election over one `leader_leases` row per role: acquire, renew, check, release.

Every change goes through a conditional UPDATE (or an INSERT that does nothing on conflict),
so it is atomic on Postgres (row lock) and SQLite (the write lock) alike, without advisory
locks. The fencing token grows at every change of holder: a write made under the lease
checks the token in its own transaction (`holds`), so a leader that lost its lease without
noticing (paused, cut off) cannot write as the leader any more.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from schemas.db import LeaderLease, as_utc
from workers.database import dialect_insert

SCHEDULER_ROLE = "scheduler"


@dataclass(frozen=True)
class Lease:
    role: str
    holder: str
    token: int
    until: datetime


def acquire(
    session: Session, role: str, holder: str, lease_s: float, now: datetime
) -> Lease | None:
    """Take the role (or keep it, renewed); None while another holder's lease is live.

    Still ours (even if it ran out, nobody took it since): the token stays. Ran out while
    someone else held it: taken over, token + 1. Never held by anyone: token 1.
    """
    until = now + timedelta(seconds=lease_s)
    kept = session.execute(
        update(LeaderLease)
        .where(LeaderLease.role == role, LeaderLease.holder == holder)
        .values(lease_until=until)
        .returning(LeaderLease.fencing_token)
        .execution_options(synchronize_session=False)
    ).scalar()
    if kept is not None:
        return Lease(role, holder, kept, until)
    taken = session.execute(
        update(LeaderLease)
        .where(LeaderLease.role == role, LeaderLease.lease_until <= now)
        .values(holder=holder, fencing_token=LeaderLease.fencing_token + 1, lease_until=until)
        .returning(LeaderLease.fencing_token)
        .execution_options(synchronize_session=False)
    ).scalar()
    if taken is not None:
        return Lease(role, holder, taken, until)
    first = session.execute(
        dialect_insert(session, LeaderLease.__table__)
        .values(role=role, holder=holder, fencing_token=1, lease_until=until)
        .on_conflict_do_nothing(index_elements=["role"])
        .returning(LeaderLease.fencing_token)
    ).scalar()
    return Lease(role, holder, first, until) if first is not None else None


def renew(session: Session, lease: Lease, lease_s: float, now: datetime) -> Lease | None:
    """Extend a live lease; None when it ran out or passed to another holder (lost)."""
    until = now + timedelta(seconds=lease_s)
    result = session.execute(
        update(LeaderLease)
        .where(*_held(lease, now))
        .values(lease_until=until)
        .execution_options(synchronize_session=False)
    )
    return Lease(lease.role, lease.holder, lease.token, until) if result.rowcount else None


def holds(session: Session, lease: Lease, now: datetime) -> bool:
    """Whether the lease is still held with its token, locking the row for this transaction.

    A no-op UPDATE rather than a SELECT: it takes the row lock (Postgres) or the write lock
    (SQLite) at once, so no takeover can commit between this check and the caller's writes.
    """
    result = session.execute(
        update(LeaderLease)
        .where(*_held(lease, now))
        .values(fencing_token=LeaderLease.fencing_token)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)


def release(session: Session, lease: Lease, now: datetime) -> bool:
    """Give the role up now, so that another process takes it at its next tick."""
    result = session.execute(
        update(LeaderLease)
        .where(
            LeaderLease.role == lease.role,
            LeaderLease.holder == lease.holder,
            LeaderLease.fencing_token == lease.token,
        )
        .values(lease_until=now)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)


def current(session: Session, role: str) -> Lease | None:
    """Who holds (or last held) the role, for status views."""
    row = session.scalar(select(LeaderLease).where(LeaderLease.role == role))
    if row is None:
        return None
    return Lease(row.role, row.holder, row.fencing_token, as_utc(row.lease_until))


def _held(lease: Lease, now: datetime) -> tuple[object, ...]:
    return (
        LeaderLease.role == lease.role,
        LeaderLease.holder == lease.holder,
        LeaderLease.fencing_token == lease.token,
        LeaderLease.lease_until > now,
    )
