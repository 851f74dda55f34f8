"""Rows about vector collections: build states, activations, and the pieces each lacks."""

from __future__ import annotations

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.orm import Session

from schemas.db import (
    CollectionState,
    Failure,
    IndexState,
    Piece,
    PieceStatus,
    VectorCollection,
    utcnow,
)

# Pieces a collection must hold: every tune that is parsed and not failed or deleted.
LIVE_PIECE = Piece.status.in_(PieceStatus.LIVE)


def get(session: Session, name: str) -> VectorCollection | None:
    return session.get(VectorCollection, name)


def list_all(session: Session) -> list[VectorCollection]:
    return list(session.scalars(select(VectorCollection).order_by(VectorCollection.created_at)))


def live_names(session: Session) -> list[str]:
    """Collections that exist in the store and must follow deletions (serving or building)."""
    return list(
        session.scalars(
            select(VectorCollection.name).where(VectorCollection.state.in_(CollectionState.LIVE))
        )
    )


def set_state(session: Session, name: str, state: str) -> None:
    session.execute(
        update(VectorCollection).where(VectorCollection.name == name).values(state=state)
    )


def mark_activated(session: Session, name: str) -> None:
    session.execute(
        update(VectorCollection)
        .where(VectorCollection.name == name)
        .values(state=CollectionState.READY, activated_at=utcnow())
    )


def mark_left(session: Session, name: str) -> None:
    """A collection rolled back from: out of the activation history, kept until retention."""
    session.execute(
        update(VectorCollection).where(VectorCollection.name == name).values(activated_at=None)
    )


def rollback_target(session: Session, current: str | None) -> VectorCollection | None:
    """The collection that served before the current one (the latest activated before it)."""
    stmt = select(VectorCollection).where(
        VectorCollection.state == CollectionState.READY,
        VectorCollection.activated_at.is_not(None),
    )
    if current is not None:
        stmt = stmt.where(VectorCollection.name != current)
    return session.scalar(stmt.order_by(VectorCollection.activated_at.desc()).limit(1))


def retention_victims(session: Session, active: str | None, keep: int) -> list[str]:
    """Collections beyond the newest `keep` (the active one counts), and failed builds."""
    ready = list(
        session.scalars(
            select(VectorCollection.name)
            .where(
                VectorCollection.state == CollectionState.READY,
                VectorCollection.name != (active or ""),
            )
            .order_by(
                VectorCollection.activated_at.desc().nulls_last(),
                VectorCollection.created_at.desc(),
            )
        )
    )
    failed = list(
        session.scalars(
            select(VectorCollection.name).where(VectorCollection.state == CollectionState.FAILED)
        )
    )
    return ready[max(keep - 1, 0) :] + failed


def forget(session: Session, name: str) -> None:
    """The collection is gone from the store: its index rows go, its row stays as history."""
    session.execute(delete(IndexState).where(IndexState.collection == name))
    set_state(session, name, CollectionState.REMOVED)


def live_piece_ids(session: Session) -> list[str]:
    return list(session.scalars(select(Piece.id).where(LIVE_PIECE).order_by(Piece.id)))


def live_piece_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Piece).where(LIVE_PIECE)) or 0


def missing_pieces(
    session: Session, collection: str, failed_in_job: int | None = None
) -> list[str]:
    """Live pieces without this collection's vector of their current music.

    `failed_in_job`: leave out pieces that job recorded as failures (unresolved).
    """
    row = IndexState.__table__.alias("row")
    stmt = (
        select(Piece.id)
        .outerjoin(
            row,
            and_(
                row.c.piece_id == Piece.id,
                row.c.collection == collection,
                row.c.content_sha256 == Piece.content_sha256,
            ),
        )
        .where(LIVE_PIECE, row.c.piece_id.is_(None))
        .order_by(Piece.id)
    )
    if failed_in_job is not None:
        failed = select(Failure.piece_id).where(
            Failure.job_id == failed_in_job,
            Failure.piece_id.is_not(None),
            Failure.resolved_at.is_(None),
        )
        stmt = stmt.where(Piece.id.not_in(failed))
    return list(session.scalars(stmt))


def probe_pieces(session: Session, collection: str, n: int) -> list[tuple[str, str]]:
    """(piece id, music) of up to n indexed pieces whose music no other piece shares.

    Identical music has identical vectors, and a self-query could then rank a twin first.
    """
    unique_sha = (
        select(Piece.content_sha256)
        .where(LIVE_PIECE)
        .group_by(Piece.content_sha256)
        .having(func.count() == 1)
    )
    rows = session.execute(
        select(Piece.id, Piece.music_text)
        .join(IndexState, IndexState.piece_id == Piece.id)
        .where(
            IndexState.collection == collection,
            IndexState.content_sha256 == Piece.content_sha256,
            Piece.content_sha256.in_(unique_sha),
        )
        .order_by(Piece.content_sha256)
        .limit(n)
    ).all()
    return [(pid, music) for pid, music in rows]
