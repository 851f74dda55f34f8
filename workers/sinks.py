"""Database writes of the pipeline; every one is idempotent (deterministic ids, upserts)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, true, update
from sqlalchemy.orm import Session

from schemas.db import (
    Failure,
    FileStatus,
    IndexState,
    Job,
    JobStatus,
    Piece,
    PieceStatus,
    SourceFile,
    VectorCollection,
    utcnow,
)
from workers.abc import ParsedPiece
from workers.database import dialect_insert

MAX_MESSAGE_CHARS = 2000


def piece_id_for(uri: str, index_in_file: int) -> str:
    """Stable id of the n-th tune of a file: re-ingesting updates it, never duplicates it."""
    return hashlib.sha256(f"{uri}#{index_in_file}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class FileSeen:
    uri: str
    size: int
    mtime: float
    sha256: str
    format: str = "abc"


@dataclass(frozen=True)
class SourceOrigin:
    """The format a piece was read from and the converter that made its ABC (None for ABC)."""

    source_format: str
    converter: str | None


def create_job(session: Session, kind: str, params: dict[str, Any]) -> Job:
    job = Job(kind=kind, status=JobStatus.RUNNING, params=params)
    session.add(job)
    session.flush()
    return job


def record_file(session: Session, job_id: int, seen: FileSeen) -> tuple[int, bool]:
    """Upsert a scanned file; returns (file id, unchanged-and-fully-indexed)."""
    # The path scans fine now, so earlier "cannot read / not found" failures are over.
    session.execute(
        update(Failure)
        .where(Failure.uri == seen.uri, Failure.stage == "scan", Failure.resolved_at.is_(None))
        .values(resolved_at=utcnow())
    )
    existing = session.scalar(select(SourceFile).where(SourceFile.uri == seen.uri))
    if (
        existing is not None
        and existing.sha256 == seen.sha256
        and _fully_indexed(session, existing)
    ):
        return existing.id, True
    if existing is None:
        existing = SourceFile(uri=seen.uri, size=seen.size, mtime=seen.mtime, sha256=seen.sha256)
        session.add(existing)
    existing.size, existing.mtime, existing.sha256 = seen.size, seen.mtime, seen.sha256
    existing.format = seen.format
    existing.status = FileStatus.PENDING
    existing.last_job_id = job_id
    session.flush()
    return existing.id, False


def _fully_indexed(session: Session, source: SourceFile) -> bool:
    if source.status != FileStatus.PARSED:
        return False
    not_indexed = session.scalar(
        select(func.count())
        .select_from(Piece)
        .where(Piece.file_id == source.id, Piece.status != PieceStatus.INDEXED)
    )
    return not_indexed == 0


def files_under(session: Session, root_prefix: str) -> list[SourceFile]:
    return list(
        session.scalars(
            select(SourceFile).where(
                SourceFile.uri.startswith(root_prefix, autoescape=True),
                SourceFile.status != FileStatus.DELETED,
            )
        )
    )


def tombstone_file(session: Session, source: SourceFile, job_id: int) -> list[str]:
    """Mark a vanished file deleted; returns the ids of pieces whose points must go."""
    piece_ids = list(session.scalars(select(Piece.id).where(Piece.file_id == source.id)))
    session.execute(
        update(Piece).where(Piece.file_id == source.id).values(status=PieceStatus.DELETED)
    )
    source.status = FileStatus.DELETED
    source.last_job_id = job_id
    return piece_ids


def record_failure(
    session: Session,
    *,
    job_id: int | None,
    uri: str,
    stage: str,
    error_class: str,
    message: str,
    file_id: int | None = None,
    piece_id: str | None = None,
) -> None:
    session.add(
        Failure(
            job_id=job_id,
            file_id=file_id,
            piece_id=piece_id,
            uri=uri,
            stage=stage,
            error_class=error_class,
            message=message[:MAX_MESSAGE_CHARS],
        )
    )


def resolve_failures(
    session: Session, *, file_ids: Sequence[int], stage: str | None = None
) -> None:
    """Files that now get further than before close their older failures."""
    if not file_ids:
        return
    stmt = update(Failure).where(Failure.file_id.in_(list(file_ids)), Failure.resolved_at.is_(None))
    if stage is not None:
        stmt = stmt.where(Failure.stage == stage)
    session.execute(stmt.values(resolved_at=utcnow()))


@dataclass(frozen=True)
class FileMark:
    """A file's outcome after parsing; written for a whole task in one statement."""

    file_id: int
    status: str
    encoding: str | None = None
    piece_count: int = 0


def mark_files(session: Session, marks: Sequence[FileMark]) -> None:
    rows: list[dict[str, Any]] = []
    for mark in marks:
        row: dict[str, Any] = {
            "id": mark.file_id,
            "status": mark.status,
            "piece_count": mark.piece_count,
        }
        if mark.encoding is not None:
            row["encoding"] = mark.encoding
        rows.append(row)
    if rows:
        # ORM bulk UPDATE by primary key: executemany, grouped by the keys each row sets.
        session.execute(update(SourceFile), rows)


def upsert_pieces(
    session: Session,
    *,
    job_id: int,
    source: SourceFile,
    pieces: Sequence[ParsedPiece],
    origin: SourceOrigin | None = None,
) -> tuple[list[str], list[str]]:
    """Write a file's parsed pieces; returns (ids that need encoding, ids of removed tunes)."""
    rows: list[dict[str, Any]] = []
    for p in pieces:
        h = p.header
        rows.append(
            {
                "id": piece_id_for(source.uri, p.index),
                "file_id": source.id,
                "index_in_file": p.index,
                "x_number": p.x_number,
                "title": h.title,
                "composer": h.composer,
                "origin": h.origin,
                "rhythm": h.rhythm,
                "meter": h.meter,
                "unit_length": h.unit_length,
                "key": h.key,
                "tempo": h.tempo,
                "extra_fields": h.extra,
                "source_format": origin.source_format if origin else "abc",
                "converter": origin.converter if origin else None,
                "abc_text": p.abc_text,
                "music_text": p.music_text,
                "content_sha256": p.content_sha256,
                "patch_count": p.patch_count,
                "status": PieceStatus.PARSED,
                "job_id": job_id,
                "updated_at": utcnow(),
            }
        )
    ids = [r["id"] for r in rows]
    # Tunes removed from a changed file: their points must not keep answering queries.
    gone = list(
        session.scalars(
            select(Piece.id).where(
                Piece.file_id == source.id,
                Piece.status != PieceStatus.DELETED,
                Piece.id.not_in(ids) if ids else true(),
            )
        )
    )
    if gone:
        session.execute(update(Piece).where(Piece.id.in_(gone)).values(status=PieceStatus.DELETED))
    if not rows:
        return [], gone
    already = _unchanged_indexed(session, rows)
    # One statement shape for every file, so SQLAlchemy compiles it once and executemany
    # batches the rows (a per-call multi-VALUES insert was recompiled every time).
    stmt = dialect_insert(session, Piece.__table__)
    upsert = stmt.on_conflict_do_update(
        index_elements=["id"], set_={c: stmt.excluded[c] for c in rows[0] if c != "id"}
    )
    session.execute(upsert, rows)
    if already:
        session.execute(
            update(Piece).where(Piece.id.in_(already)).values(status=PieceStatus.INDEXED)
        )
    return [i for i in ids if i not in already], gone


def _unchanged_indexed(session: Session, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Pieces whose identical music is already in the index need no new vector."""
    by_id = {r["id"]: r["content_sha256"] for r in rows}
    found = session.execute(
        select(IndexState.piece_id, IndexState.content_sha256).where(
            IndexState.piece_id.in_(list(by_id))
        )
    )
    return {pid for pid, sha in found if by_id.get(pid) == sha}


def load_pieces(session: Session, piece_ids: Sequence[str]) -> list[tuple[Piece, str]]:
    """Pieces still awaiting a vector, with their file's uri, in id order given."""
    rows = session.execute(
        select(Piece, SourceFile.uri)
        .join(SourceFile, SourceFile.id == Piece.file_id)
        .where(Piece.id.in_(list(piece_ids)), Piece.status == PieceStatus.PARSED)
    ).all()
    order = {pid: i for i, pid in enumerate(piece_ids)}
    return sorted(((p, uri) for p, uri in rows), key=lambda t: order[t[0].id])


def mark_indexed(
    session: Session, *, pieces: Iterable[Piece], collection: str, model_version: str
) -> None:
    rows = [
        {
            "piece_id": p.id,
            "collection": collection,
            "model_version": model_version,
            "content_sha256": p.content_sha256,
            "indexed_at": utcnow(),
        }
        for p in pieces
    ]
    if not rows:
        return
    stmt = dialect_insert(session, IndexState.__table__).values(rows)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["piece_id", "collection"],
            set_={
                "model_version": stmt.excluded.model_version,
                "content_sha256": stmt.excluded.content_sha256,
                "indexed_at": stmt.excluded.indexed_at,
            },
        )
    )
    session.execute(
        update(Piece)
        .where(Piece.id.in_([r["piece_id"] for r in rows]))
        .values(status=PieceStatus.INDEXED)
    )


def indexed_pieces_by_content(session: Session, collection: str, shas: set[str]) -> dict[str, str]:
    """One already-indexed piece per music hash: its vector can serve identical music."""
    rows = session.execute(
        select(IndexState.content_sha256, func.min(IndexState.piece_id))
        .where(IndexState.collection == collection, IndexState.content_sha256.in_(list(shas)))
        .group_by(IndexState.content_sha256)
    )
    return {sha: pid for sha, pid in rows}


def fail_pending_files(
    session: Session, job_id: int, file_ids: Sequence[int], exc: BaseException
) -> None:
    sources = session.scalars(
        select(SourceFile).where(
            SourceFile.id.in_(list(file_ids)), SourceFile.status == FileStatus.PENDING
        )
    )
    for source in sources:
        record_failure(
            session,
            job_id=job_id,
            file_id=source.id,
            uri=source.uri,
            stage="parse",
            error_class=type(exc).__name__,
            message=f"parse task failed: {exc}",
        )
        source.status = FileStatus.FAILED


def fail_unindexed_pieces(
    session: Session, job_id: int, piece_ids: Sequence[str], exc: BaseException
) -> None:
    for piece, uri in load_pieces(session, piece_ids):
        fail_piece(session, job_id, piece, uri, exc, f"encode task failed: {exc}")


def fail_piece(
    session: Session, job_id: int, piece: Piece, uri: str, exc: BaseException, message: str
) -> None:
    """A piece that could not be encoded: a failures row, and the piece marked failed."""
    record_failure(
        session,
        job_id=job_id,
        file_id=piece.file_id,
        piece_id=piece.id,
        uri=uri,
        stage="encode",
        error_class=type(exc).__name__,
        message=message,
    )
    mark_piece_failed(session, piece.id)


def indexed_piece_rows(session: Session, collection: str) -> list[tuple[str, str, int, str | None]]:
    """(piece id, source uri, index in file, title) of every piece indexed in a collection."""
    rows = session.execute(
        select(Piece.id, SourceFile.uri, Piece.index_in_file, Piece.title)
        .join(IndexState, IndexState.piece_id == Piece.id)
        .join(SourceFile, SourceFile.id == Piece.file_id)
        .where(IndexState.collection == collection, Piece.status == PieceStatus.INDEXED)
        .order_by(SourceFile.uri, Piece.index_in_file)
    )
    return [(pid, uri, index, title) for pid, uri, index, title in rows]


def mark_piece_failed(session: Session, piece_id: str) -> None:
    session.execute(update(Piece).where(Piece.id == piece_id).values(status=PieceStatus.FAILED))


def forget_index_state(session: Session, piece_ids: Sequence[str]) -> None:
    if piece_ids:
        session.execute(delete(IndexState).where(IndexState.piece_id.in_(list(piece_ids))))


def register_collection(
    session: Session,
    *,
    name: str,
    model_name: str,
    model_version: str,
    dim: int,
    meta: dict[str, Any],
) -> None:
    stmt = dialect_insert(session, VectorCollection.__table__).values(
        name=name,
        model_name=model_name,
        model_version=model_version,
        dim=dim,
        meta=meta,
        created_at=utcnow(),
    )
    session.execute(stmt.on_conflict_do_nothing(index_elements=["name"]))


@dataclass(frozen=True)
class JobCounts:
    job_id: int
    kind: str
    status: str
    files: int
    files_pending: int
    files_failed: int
    skipped: int
    pieces: int
    indexed: int
    pieces_pending: int
    failed: int
    created_at: datetime
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.files_pending == 0 and self.pieces_pending == 0


def refresh_job(session: Session, job_id: int) -> JobCounts:
    """Recount a job from its rows (safe under concurrent workers) and close it when done."""
    job = session.get(Job, job_id, with_for_update=session.get_bind().dialect.name != "sqlite")
    if job is None:
        raise LookupError(f"no job with id {job_id}")

    def count_files(status: str) -> int:
        return (
            session.scalar(
                select(func.count())
                .select_from(SourceFile)
                .where(SourceFile.last_job_id == job_id, SourceFile.status == status)
            )
            or 0
        )

    piece_counts = dict(
        session.execute(
            select(Piece.status, func.count()).where(Piece.job_id == job_id).group_by(Piece.status)
        ).all()
    )
    failures = (
        session.scalar(select(func.count()).select_from(Failure).where(Failure.job_id == job_id))
        or 0
    )
    files_pending = count_files(FileStatus.PENDING)
    files_failed = count_files(FileStatus.FAILED)
    pieces_pending = piece_counts.get(PieceStatus.PARSED, 0)
    indexed = piece_counts.get(PieceStatus.INDEXED, 0)
    piece_failed = piece_counts.get(PieceStatus.FAILED, 0)
    job.files_failed = files_failed
    job.pieces_total = indexed + piece_failed + pieces_pending
    job.pieces_indexed = indexed
    job.pieces_failed = piece_failed
    if job.status == JobStatus.RUNNING and files_pending == 0 and pieces_pending == 0:
        job.status = JobStatus.DONE
        job.finished_at = utcnow()
    return JobCounts(
        job_id=job.id,
        kind=job.kind,
        status=job.status,
        files=job.files_total,
        files_pending=files_pending,
        files_failed=files_failed,
        skipped=job.files_skipped,
        pieces=job.pieces_total,
        indexed=indexed,
        pieces_pending=pieces_pending,
        failed=failures,
        created_at=job.created_at,
        finished_at=job.finished_at,
    )
