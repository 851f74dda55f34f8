"""Database writes of the pipeline; every one is idempotent (deterministic ids, upserts)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
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
    WorkKind,
    utcnow,
)
from workers import ledger
from workers.abc import ParsedPiece
from workers.database import dialect_insert
from workers.errors import JobNotFoundError

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


def take_over_dead_jobs(session: Session, job_id: int, max_solo_losses: int) -> int:
    """Move the open work of running or interrupted jobs to `job_id`; returns items moved.

    Only for a process that knows no other runs (embedded mode holds the store's lock):
    their claims were held by a process that is gone, so they count as lost leases.
    """
    dead = list(
        session.scalars(
            select(Job.id).where(
                Job.id != job_id, Job.status.in_([JobStatus.RUNNING, JobStatus.INTERRUPTED])
            )
        )
    )
    if not dead:
        return 0
    stopped = "the process running it stopped while holding it"
    lost = ledger.take_back(session, max_solo_losses=max_solo_losses, error=stopped, job_ids=dead)
    record_given_up(session, lost, stopped)
    moved = ledger.adopt(session, dead, job_id)
    session.execute(
        update(Job)
        .where(Job.id.in_(dead), Job.status == JobStatus.RUNNING)
        .values(status=JobStatus.INTERRUPTED, finished_at=utcnow())
    )
    return moved


def tally_job(
    session: Session, job_id: int, *, encoded: int = 0, reused: int = 0, removed: int = 0
) -> None:
    """Add to a job's counts of vectors computed, vectors reused, and pieces removed."""
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(
            pieces_encoded=Job.pieces_encoded + encoded,
            pieces_reused=Job.pieces_reused + reused,
            pieces_removed=Job.pieces_removed + removed,
        )
    )


def finish_job(session: Session, job_id: int, status: str) -> None:
    job = session.get(Job, job_id)
    if job is not None and job.status == JobStatus.RUNNING:
        job.status = status
        job.finished_at = utcnow()


@dataclass(frozen=True)
class FileRecorded:
    file_id: int
    # Same bytes as before and already parsed: only pieces still without a vector need work.
    unchanged: bool
    unindexed_piece_ids: list[str]


def record_file(
    session: Session, job_id: int, seen: FileSeen, reparse: bool = False
) -> FileRecorded:
    """Upsert a scanned file; an unchanged, parsed file is not parsed again unless asked."""
    # The path scans fine now, so earlier "cannot read / not found" failures are over.
    session.execute(
        update(Failure)
        .where(Failure.uri == seen.uri, Failure.stage == "scan", Failure.resolved_at.is_(None))
        .values(resolved_at=utcnow())
    )
    existing = session.scalar(select(SourceFile).where(SourceFile.uri == seen.uri))
    if (
        not reparse
        and existing is not None
        and existing.sha256 == seen.sha256
        and existing.status == FileStatus.PARSED
    ):
        waiting = sorted(
            session.scalars(
                select(Piece.id).where(
                    Piece.file_id == existing.id, Piece.status == PieceStatus.PARSED
                )
            )
        )
        if waiting:
            # An interrupted ingest parsed these; this job encodes them.
            session.execute(update(Piece).where(Piece.id.in_(waiting)).values(job_id=job_id))
        return FileRecorded(existing.id, True, waiting)
    if existing is None:
        # Two ingests of one folder at once both find the file new: the second insert does
        # nothing (waiting for the first to commit), and both then update the same row.
        session.execute(
            dialect_insert(session, SourceFile.__table__)
            .values(
                uri=seen.uri,
                size=seen.size,
                mtime=seen.mtime,
                sha256=seen.sha256,
                format=seen.format,
                status=FileStatus.PENDING,
                piece_count=0,
                last_job_id=job_id,
                updated_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["uri"])
        )
        existing = session.scalars(
            select(SourceFile).where(SourceFile.uri == seen.uri).with_for_update()
        ).one()
    existing.size, existing.mtime, existing.sha256 = seen.size, seen.mtime, seen.sha256
    existing.format = seen.format
    existing.status = FileStatus.PENDING
    existing.last_job_id = job_id
    session.flush()
    return FileRecorded(existing.id, False, [])


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
    message = message[:MAX_MESSAGE_CHARS]
    # The same problem seen again (a retry of an unfixed file) reopens its row under the
    # new job instead of piling up identical rows.
    same = session.scalar(
        select(Failure)
        .where(
            Failure.uri == uri,
            Failure.stage == stage,
            Failure.error_class == error_class,
            Failure.message == message,
            Failure.piece_id.is_(None) if piece_id is None else Failure.piece_id == piece_id,
        )
        .order_by(Failure.id.desc())
        .limit(1)
    )
    if same is not None:
        same.job_id, same.resolved_at = job_id, None
        return
    session.add(
        Failure(
            job_id=job_id,
            file_id=file_id,
            piece_id=piece_id,
            uri=uri,
            stage=stage,
            error_class=error_class,
            message=message,
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


def indexed_model_versions(session: Session, collection: str) -> dict[str, str]:
    """piece id -> model version of every live piece the database says is in a collection."""
    rows = session.execute(
        select(IndexState.piece_id, IndexState.model_version)
        .join(Piece, Piece.id == IndexState.piece_id)
        .where(IndexState.collection == collection, Piece.status == PieceStatus.INDEXED)
    )
    return {pid: version for pid, version in rows}


def forget_for_reencode(
    session: Session, piece_ids: Sequence[str], collection: str, job_id: int
) -> None:
    """Pieces whose point is missing or stale: not indexed any more, owned by `job_id`."""
    ids = list(piece_ids)
    session.execute(
        delete(IndexState).where(IndexState.piece_id.in_(ids), IndexState.collection == collection)
    )
    session.execute(
        update(Piece).where(Piece.id.in_(ids)).values(status=PieceStatus.PARSED, job_id=job_id)
    )


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
    deletes_pending: int
    skipped: int
    pieces: int
    indexed: int
    pieces_pending: int
    failed: int
    encoded: int
    reused: int
    removed: int
    created_at: datetime
    finished_at: datetime | None
    # Ledger items by kind (parse / encode / delete) and state (pending, leased, done...).
    stages: dict[str, dict[str, int]]

    def rate_and_eta(self) -> tuple[float, float | None]:
        """Pieces finished per second since the job began, and seconds left at that rate."""
        created = self.created_at if self.created_at.tzinfo else self.created_at.replace(tzinfo=UTC)
        end = self.finished_at or utcnow()
        end = end if end.tzinfo else end.replace(tzinfo=UTC)
        seconds = max((end - created).total_seconds(), 1e-6)
        done = self.pieces - self.pieces_pending
        rate = done / seconds
        left = self.pieces_pending + self.files_pending
        if not left:
            return rate, 0.0
        return rate, (left / rate if rate > 0 else None)

    @property
    def finished(self) -> bool:
        return self.files_pending == 0 and self.pieces_pending == 0 and self.deletes_pending == 0


def refresh_job(session: Session, job_id: int) -> JobCounts:
    """Recount a job from its rows (safe under concurrent workers) and close it when done."""
    job = session.get(Job, job_id, with_for_update=session.get_bind().dialect.name != "sqlite")
    if job is None:
        raise JobNotFoundError(
            f"no job with id {job_id}: `clamp-index status` shows the latest job"
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
    files_failed = (
        session.scalar(
            select(func.count())
            .select_from(SourceFile)
            .where(SourceFile.last_job_id == job_id, SourceFile.status == FileStatus.FAILED)
        )
        or 0
    )
    # What is left is what the ledger still holds open, not what rows look like.
    open_work = ledger.open_counts(session, job_id)
    files_pending = open_work.get(WorkKind.PARSE, 0)
    pieces_pending = open_work.get(WorkKind.ENCODE, 0)
    deletes_pending = open_work.get(WorkKind.DELETE, 0)
    indexed = piece_counts.get(PieceStatus.INDEXED, 0)
    piece_failed = piece_counts.get(PieceStatus.FAILED, 0)
    job.files_failed = files_failed
    job.pieces_total = indexed + piece_failed + pieces_pending
    job.pieces_indexed = indexed
    job.pieces_failed = piece_failed
    if job.status == JobStatus.RUNNING and not open_work:
        job.status = JobStatus.DONE
        job.finished_at = utcnow()
    return JobCounts(
        job_id=job.id,
        kind=job.kind,
        status=job.status,
        files=job.files_total,
        files_pending=files_pending,
        files_failed=files_failed,
        deletes_pending=deletes_pending,
        skipped=job.files_skipped,
        pieces=job.pieces_total,
        indexed=indexed,
        pieces_pending=pieces_pending,
        failed=failures,
        encoded=job.pieces_encoded,
        reused=job.pieces_reused,
        removed=job.pieces_removed,
        created_at=job.created_at,
        finished_at=job.finished_at,
        stages=ledger.stage_counts(session, job_id),
    )


class PoisonItemError(RuntimeError):
    """An item whose worker kept dying (or failing) while it was claimed alone."""


def record_given_up(session: Session, lost: Sequence[ledger.LostItem], last_error: str) -> None:
    """Failure rows for the items the ledger gave up on; everything else was only returned."""
    failed = [item for item in lost if item.failed]
    for item in failed:
        reason = (
            "gave up on it: its worker died or failed every time it handled it alone "
            f"(last error: {last_error})"
        )
        error = PoisonItemError(reason)
        if item.kind == WorkKind.PARSE:
            fail_pending_files(session, item.job_id, [int(item.item_key)], error)
        elif item.kind == WorkKind.ENCODE:
            for piece, uri in load_pieces(session, [item.item_key]):
                fail_piece(session, item.job_id, piece, uri, error, reason)
        else:
            record_failure(
                session,
                job_id=item.job_id,
                uri=f"piece:{item.item_key}",
                piece_id=item.item_key,
                stage="delete",
                error_class=type(error).__name__,
                message=f"its point could not be deleted; {reason}",
            )
    for job_id in sorted({item.job_id for item in failed}):
        refresh_job(session, job_id)
