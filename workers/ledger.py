"""The work ledger's SQL: enqueue, claim under a lease, renew, complete under the claim token.

Every unit of work is a `work_items` row. A worker claims a batch atomically (Postgres:
`FOR UPDATE SKIP LOCKED`; SQLite: one UPDATE ... RETURNING under its write lock), renews the
lease while it works, and completes the rows only while its token still holds them, inside
the same transaction as the work's own writes: a worker that lost its lease rolls back
instead of overwriting newer work. Leases that run out go back to the pool; an item whose
holder keeps dying is claimed in ever smaller batches until it is alone, then failed.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, select, update
from sqlalchemy.orm import Session

from schemas.db import Piece, WorkItem, WorkKind, WorkState, as_utc, utcnow
from workers.database import dialect_insert

QUEUE_OF_KIND = {
    WorkKind.PARSE: "parse",
    WorkKind.ENCODE: "encode",
    WorkKind.DELETE: "encode",
    WorkKind.TRAIN: "train",  # a GPU node's worker takes it: `worker --queues encode,train`
}
QUEUES = ("parse", "encode")  # the queues of ingest work
MAX_ERROR_CHARS = 2000


class LeaseLostError(RuntimeError):
    """This worker's claim expired and may belong to another worker now: roll back."""


@dataclass(frozen=True)
class NewWork:
    kind: str
    item_key: str
    collection: str | None = None


@dataclass(frozen=True)
class ClaimedItem:
    id: int
    job_id: int
    kind: str
    item_key: str
    collection: str | None
    attempts: int


@dataclass(frozen=True)
class Claim:
    token: str
    queue: str
    holder: str
    items: list[ClaimedItem]


def enqueue(session: Session, job_id: int, work: Sequence[NewWork]) -> None:
    """Add work for a job; the same item twice in one job is one row (idempotent)."""
    if not work:
        return
    now = utcnow()
    rows = [
        {
            "job_id": job_id,
            "queue": QUEUE_OF_KIND[w.kind],
            "kind": w.kind,
            "item_key": w.item_key,
            "collection": w.collection,
            "state": WorkState.PENDING,
            "attempts": 0,
            "batch_size": 0,
            "lost_leases": 0,
            "solo_losses": 0,
            "created_at": now,
        }
        for w in work
    ]
    stmt = dialect_insert(session, WorkItem.__table__).on_conflict_do_nothing(
        index_elements=["job_id", "kind", "item_key"]
    )
    session.execute(stmt, rows)


def reopen(session: Session, job_id: int, work: Sequence[NewWork]) -> None:
    """Add work, or hand finished items of the same keys out again (a catch-up pass)."""
    enqueue(session, job_id, work)
    for kind in {w.kind for w in work}:
        keys = [w.item_key for w in work if w.kind == kind]
        for start in range(0, len(keys), 1000):
            session.execute(
                update(WorkItem)
                .where(
                    WorkItem.job_id == job_id,
                    WorkItem.kind == kind,
                    WorkItem.item_key.in_(keys[start : start + 1000]),
                    WorkItem.state.not_in(WorkState.OPEN),
                )
                .values(
                    state=WorkState.PENDING,
                    holder=None,
                    claim_token=None,
                    lease_until=None,
                    finished_at=None,
                    last_error=None,
                )
            )


def claim(session: Session, queue: str, holder: str, limit: int, lease_s: float) -> Claim | None:
    """Lease up to `limit` pending items of a queue; None when there is nothing to do."""
    open_on_queue = and_(WorkItem.queue == queue, WorkItem.state == WorkState.PENDING)
    # Items whose holder died with them go first, in batches no larger than their limit:
    # halving on every death isolates the one item that kills its worker.
    smallest = session.scalar(
        select(func.min(WorkItem.claim_limit)).where(
            open_on_queue, WorkItem.claim_limit.is_not(None)
        )
    )
    if smallest is not None:
        restricted = _claim_where(
            session, open_on_queue & (WorkItem.claim_limit == smallest), holder, smallest, lease_s
        )
        if restricted is not None:
            return Claim(restricted[0], queue, holder, restricted[1])
        # Another worker holds that group right now: take ordinary work meanwhile.
        open_on_queue = open_on_queue & WorkItem.claim_limit.is_(None)
    taken = _claim_where(session, open_on_queue, holder, limit, lease_s)
    return Claim(taken[0], queue, holder, taken[1]) if taken is not None else None


def _claim_where(
    session: Session, condition: Any, holder: str, limit: int, lease_s: float
) -> tuple[str, list[ClaimedItem]] | None:
    # SKIP LOCKED lets concurrent claimers pass each other's rows (SQLite ignores it and
    # serialises writers instead).
    picked = (
        select(WorkItem.id)
        .where(condition)
        .order_by(WorkItem.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    token = uuid.uuid4().hex
    rows = session.execute(
        update(WorkItem)
        .where(WorkItem.id.in_(picked.scalar_subquery()))
        .values(
            state=WorkState.LEASED,
            holder=holder[:128],
            claim_token=token,
            lease_until=utcnow() + timedelta(seconds=lease_s),
            attempts=WorkItem.attempts + 1,
        )
        .returning(
            WorkItem.id,
            WorkItem.job_id,
            WorkItem.kind,
            WorkItem.item_key,
            WorkItem.collection,
            WorkItem.attempts,
        )
        .execution_options(synchronize_session=False)
    ).all()
    if not rows:
        return None
    session.execute(
        update(WorkItem)
        .where(WorkItem.claim_token == token)
        .values(batch_size=len(rows))
        .execution_options(synchronize_session=False)
    )
    return token, sorted((ClaimedItem(*row) for row in rows), key=lambda item: item.id)


def has_pending(session: Session, queue: str) -> bool:
    return (
        session.scalar(
            select(WorkItem.id)
            .where(WorkItem.queue == queue, WorkItem.state == WorkState.PENDING)
            .limit(1)
        )
        is not None
    )


def pending_count(session: Session, queue: str, cap: int) -> int:
    """Pending items on a queue, counted up to `cap` (enough to know a claim would be full)."""
    capped = (
        select(WorkItem.id)
        .where(WorkItem.queue == queue, WorkItem.state == WorkState.PENDING)
        .limit(cap)
        .subquery()
    )
    return session.scalar(select(func.count()).select_from(capped)) or 0


def has_open(session: Session, queue: str) -> bool:
    """Whether a queue still has pending or leased work (more may follow from it)."""
    return (
        session.scalar(
            select(WorkItem.id)
            .where(WorkItem.queue == queue, WorkItem.state.in_(WorkState.OPEN))
            .limit(1)
        )
        is not None
    )


def renew(session: Session, token: str, lease_s: float) -> bool:
    """Extend a claim's lease; False when the claim is no longer this worker's."""
    result = session.execute(
        update(WorkItem)
        .where(WorkItem.claim_token == token, WorkItem.state == WorkState.LEASED)
        .values(lease_until=utcnow() + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)


def complete(
    session: Session, token: str, item_ids: Sequence[int], state: str = WorkState.DONE
) -> None:
    """Mark claimed items finished; raises LeaseLostError (roll back) if any slipped away."""
    if not item_ids:
        return
    result = session.execute(
        update(WorkItem)
        .where(
            WorkItem.id.in_(list(item_ids)),
            WorkItem.claim_token == token,
            WorkItem.state == WorkState.LEASED,
        )
        .values(state=state, lease_until=None, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != len(item_ids):
        raise LeaseLostError(
            f"{len(item_ids) - result.rowcount} of {len(item_ids)} claimed items were "
            "taken back (lease expired); this worker's results for them are discarded"
        )


def release(session: Session, token: str) -> int:
    """Hand a claim back untouched (shutdown, Ctrl-C): no attempt is held against it."""
    result = session.execute(
        update(WorkItem)
        .where(WorkItem.claim_token == token, WorkItem.state == WorkState.LEASED)
        .values(
            state=WorkState.PENDING,
            holder=None,
            claim_token=None,
            lease_until=None,
            attempts=WorkItem.attempts - 1,
        )
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)


@dataclass(frozen=True)
class LostItem:
    id: int
    job_id: int
    kind: str
    item_key: str
    failed: bool  # lost while alone often enough: a poison item, now failed


def take_back(
    session: Session,
    *,
    max_solo_losses: int,
    error: str,
    token: str | None = None,
    expired_before: datetime | None = None,
    job_ids: Sequence[int] | None = None,
) -> list[LostItem]:
    """Return lost claims to the pool, halving their claim size; fail repeat solo losers.

    Selects by one claim token (its worker raised), by expired lease (its worker died or
    hung), or by job (the embedded process that ran those jobs is gone).
    """
    alone = WorkItem.batch_size <= 1
    stmt = update(WorkItem).where(WorkItem.state == WorkState.LEASED)
    if token is not None:
        stmt = stmt.where(WorkItem.claim_token == token)
    if expired_before is not None:
        stmt = stmt.where(WorkItem.lease_until < expired_before)
    if job_ids is not None:
        stmt = stmt.where(WorkItem.job_id.in_(list(job_ids)))
    rows = session.execute(
        stmt.values(
            state=case(
                (and_(alone, WorkItem.solo_losses + 1 >= max_solo_losses), WorkState.FAILED),
                else_=WorkState.PENDING,
            ),
            lost_leases=WorkItem.lost_leases + 1,
            solo_losses=WorkItem.solo_losses + case((alone, 1), else_=0),
            claim_limit=case((WorkItem.batch_size <= 2, 1), else_=WorkItem.batch_size // 2),
            holder=None,
            claim_token=None,
            lease_until=None,
            last_error=error[:MAX_ERROR_CHARS],
        )
        .returning(WorkItem.id, WorkItem.job_id, WorkItem.kind, WorkItem.item_key, WorkItem.state)
        .execution_options(synchronize_session=False)
    ).all()
    return [LostItem(i, j, k, key, state == WorkState.FAILED) for i, j, k, key, state in rows]


def open_counts(session: Session, job_id: int) -> dict[str, int]:
    """Open (pending or leased) items of a job, by kind."""
    rows = session.execute(
        select(WorkItem.kind, func.count())
        .where(WorkItem.job_id == job_id, WorkItem.state.in_(WorkState.OPEN))
        .group_by(WorkItem.kind)
    )
    return {kind: n for kind, n in rows}


def stage_counts(session: Session, job_id: int) -> dict[str, dict[str, int]]:
    """Items of a job by kind and state, for progress views."""
    counts: dict[str, dict[str, int]] = {}
    rows = session.execute(
        select(WorkItem.kind, WorkItem.state, func.count())
        .where(WorkItem.job_id == job_id)
        .group_by(WorkItem.kind, WorkItem.state)
    )
    for kind, state, n in rows:
        counts.setdefault(kind, {})[state] = n
    return counts


def queues_to_wake(session: Session, stale_after_s: float) -> list[tuple[str, int]]:
    """(queue, job) pairs to wake: pending work on a queue nobody drains, or work that has
    waited longer than stale_after_s (a drainer may be stuck, or more workers could help)."""
    now = utcnow()
    busy = set(
        session.scalars(
            select(WorkItem.queue)
            .where(WorkItem.state == WorkState.LEASED, WorkItem.lease_until >= now)
            .distinct()
        )
    )
    pending = session.execute(
        select(WorkItem.queue, WorkItem.job_id, func.min(WorkItem.created_at))
        .where(WorkItem.state == WorkState.PENDING)
        .group_by(WorkItem.queue, WorkItem.job_id)
    ).all()
    stale = now - timedelta(seconds=stale_after_s)
    return sorted(
        (queue, job_id)
        for queue, job_id, oldest in pending
        if queue not in busy or as_utc(oldest) < stale
    )


def open_piece_keys(session: Session) -> list[str]:
    """Pieces with encode work pending or in progress (their points may not be final)."""
    return list(
        session.scalars(
            select(WorkItem.item_key).where(
                WorkItem.kind == WorkKind.ENCODE, WorkItem.state.in_(WorkState.OPEN)
            )
        )
    )


def adopt(session: Session, from_job_ids: Sequence[int], to_job_id: int) -> int:
    """Move the open items of dead jobs to a new job (a resumed ingest takes them over)."""
    if not from_job_ids:
        return 0
    old = list(from_job_ids)
    taken = set(
        session.execute(
            select(WorkItem.kind, WorkItem.item_key).where(WorkItem.job_id == to_job_id)
        ).all()
    )
    moved = 0
    for item in session.scalars(
        select(WorkItem).where(WorkItem.job_id.in_(old), WorkItem.state == WorkState.PENDING)
    ):
        if (item.kind, item.item_key) in taken:
            item.state = WorkState.SUPERSEDED
            continue
        taken.add((item.kind, item.item_key))
        item.job_id = to_job_id
        moved += 1
    encode_keys = [key for kind, key in taken if kind == WorkKind.ENCODE]
    if encode_keys:
        # Piece counts follow the job that finishes them.
        session.execute(
            update(Piece)
            .where(Piece.id.in_(encode_keys), Piece.job_id.in_(old))
            .values(job_id=to_job_id)
            .execution_options(synchronize_session=False)
        )
    return moved
