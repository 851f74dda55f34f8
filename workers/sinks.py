"""Database writes of the pipeline; every one is idempotent (deterministic ids, upserts)."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from schemas.db import (
    CollectionState,
    Failure,
    FileStatus,
    IndexState,
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


@dataclass(frozen=True)
class FileRecorded:
    file_id: int
    # Same bytes as before and already parsed: only pieces still without a vector need work.
    unchanged: bool
    unindexed_piece_ids: list[str]


def record_files(
    session: Session, job_id: int, seen: Sequence[FileSeen], reparse: bool = False
) -> list[FileRecorded]:
    """Upsert a batch of scanned files; unchanged, parsed files are not parsed again.

    A few statements per batch, not per file: on Postgres the per-file round trips were
    80% of a scan. `reparse` treats unchanged files as changed (a retry).
    """
    if not seen:
        return []
    uris = [s.uri for s in seen]
    # These paths scan fine now, so earlier "cannot read / not found" failures are over.
    session.execute(
        update(Failure)
        .where(Failure.uri.in_(uris), Failure.stage == "scan", Failure.resolved_at.is_(None))
        .values(resolved_at=utcnow())
    )
    # Two ingests of one folder at once both find a file new: the second insert does
    # nothing (waiting for the first to commit), and both then update the same row.
    now = utcnow()
    insert = dialect_insert(session, SourceFile.__table__).on_conflict_do_nothing(
        index_elements=["uri"]
    )
    existing = {
        f.uri: f for f in session.scalars(select(SourceFile).where(SourceFile.uri.in_(uris)))
    }
    new = [s for s in seen if s.uri not in existing]
    if new:
        session.execute(
            insert,
            [
                {
                    "uri": s.uri,
                    "size": s.size,
                    "mtime": s.mtime,
                    "sha256": s.sha256,
                    "format": s.format,
                    "status": FileStatus.PENDING,
                    "piece_count": 0,
                    "last_job_id": job_id,
                    "updated_at": now,
                }
                for s in new
            ],
        )
    rows = {
        f.uri: f
        for f in session.scalars(
            select(SourceFile)
            .where(SourceFile.uri.in_(uris))
            .with_for_update(key_share=True)
            .execution_options(populate_existing=True)
        )
    }
    unchanged = {
        s.uri
        for s in seen
        if not reparse
        and s.uri in existing
        and existing[s.uri].sha256 == s.sha256
        and existing[s.uri].status == FileStatus.PARSED
    }
    waiting: dict[int, list[str]] = {}
    unchanged_ids = [rows[u].id for u in unchanged]
    if unchanged_ids:
        for file_id, piece_id in session.execute(
            select(Piece.file_id, Piece.id)
            .where(Piece.file_id.in_(unchanged_ids), Piece.status == PieceStatus.PARSED)
            .order_by(Piece.id)
        ):
            waiting.setdefault(file_id, []).append(piece_id)
        if waiting:
            # An interrupted ingest parsed these; this job encodes them.
            session.execute(
                update(Piece)
                .where(Piece.id.in_([p for ids in waiting.values() for p in ids]))
                .values(job_id=job_id)
            )
    changed = [
        {
            "id": rows[s.uri].id,
            "size": s.size,
            "mtime": s.mtime,
            "sha256": s.sha256,
            "format": s.format,
            "status": FileStatus.PENDING,
            "last_job_id": job_id,
            "updated_at": now,
        }
        for s in seen
        if s.uri not in unchanged
    ]
    if changed:
        session.execute(update(SourceFile), changed)  # executemany by primary key
    return [
        FileRecorded(rows[s.uri].id, s.uri in unchanged, waiting.get(rows[s.uri].id, []))
        for s in seen
    ]


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


@dataclass(frozen=True)
class ParsedFile:
    """The pieces one file parsed into, and what it was read from."""

    source: SourceFile
    pieces: Sequence[ParsedPiece]
    origin: SourceOrigin | None = None


def upsert_pieces(
    session: Session, *, job_id: int, files: Sequence[ParsedFile]
) -> tuple[list[str], list[str]]:
    """Write files' parsed pieces; returns (ids that need encoding, ids of removed tunes).

    All files of a parse claim in a few statements: per-file round trips were most of the
    parse time on Postgres.
    """
    rows: list[dict[str, Any]] = []
    now = utcnow()
    for parsed in files:
        source, origin = parsed.source, parsed.origin
        for p in parsed.pieces:
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
                    "updated_at": now,
                }
            )
    ids = [r["id"] for r in rows]
    kept = set(ids)
    # Tunes removed from a changed file: their points must not keep answering queries.
    before = session.scalars(
        select(Piece.id).where(
            Piece.file_id.in_([f.source.id for f in files]),
            Piece.status != PieceStatus.DELETED,
        )
    )
    gone = [pid for pid in before if pid not in kept]
    if gone:
        session.execute(update(Piece).where(Piece.id.in_(gone)).values(status=PieceStatus.DELETED))
    if not rows:
        return [], gone
    already = _unchanged_indexed(session, rows)
    session.execute(_piece_upsert(session.get_bind().dialect.name, tuple(rows[0])), rows)
    if already:
        session.execute(
            update(Piece).where(Piece.id.in_(already)).values(status=PieceStatus.INDEXED)
        )
    return [i for i in ids if i not in already], gone


@functools.cache
def _piece_upsert(dialect: str, columns: tuple[str, ...]) -> Any:
    """One statement object per dialect, built once: SQLAlchemy then compiles it once, and
    executemany batches the rows (building `excluded` per call cost 0.6 ms)."""
    stmt = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(Piece.__table__)
    return stmt.on_conflict_do_update(
        index_elements=["id"], set_={c: stmt.excluded[c] for c in columns if c != "id"}
    )


def _unchanged_indexed(session: Session, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Pieces whose identical music is already in the index need no new vector."""
    by_id = {r["id"]: r["content_sha256"] for r in rows}
    found = session.execute(
        select(IndexState.piece_id, IndexState.content_sha256).where(
            IndexState.piece_id.in_(list(by_id))
        )
    )
    return {pid for pid, sha in found if by_id.get(pid) == sha}


def load_pieces(
    session: Session, piece_ids: Sequence[str], *, any_live: bool = False
) -> list[tuple[Piece, str]]:
    """Pieces still awaiting a vector, with their file's uri, in id order given.

    `any_live`: work for a named collection (a reindex, a repair), which every live piece
    awaits, indexed elsewhere or not.
    """
    waiting = PieceStatus.LIVE if any_live else (PieceStatus.PARSED,)
    rows = session.execute(
        select(Piece, SourceFile.uri)
        .join(SourceFile, SourceFile.id == Piece.file_id)
        .where(Piece.id.in_(list(piece_ids)), Piece.status.in_(waiting))
    ).all()
    order = {pid: i for i, pid in enumerate(piece_ids)}
    return sorted(((p, uri) for p, uri in rows), key=lambda t: order[t[0].id])


def mark_indexed(
    session: Session,
    *,
    pieces: Iterable[Piece],
    collection: str,
    model_version: str,
    any_live: bool = False,
    set_status: bool = True,
) -> tuple[list[str], list[str]]:
    """Mark pieces indexed if they still wait with the music that was encoded.

    Returns (ids marked, ids deleted meanwhile). A piece re-parsed with other music while
    it was encoded keeps waiting for its new encode; one deleted meanwhile stays deleted
    (the caller removes the point it just wrote). `any_live`: work for a named collection,
    which records its row for any live piece with that music. `set_status` is off for a
    collection that does not serve (a reindex building one): a piece's status belongs to
    the serving collection.
    """
    encoded = {p.id: p.content_sha256 for p in pieces}
    if not encoded:
        return [], []
    current = session.execute(
        select(Piece.id, Piece.status, Piece.content_sha256)
        .where(Piece.id.in_(list(encoded)))
        .with_for_update(key_share=True)
    ).all()
    waiting = PieceStatus.LIVE if any_live else (PieceStatus.PARSED,)
    marked = [pid for pid, status, sha in current if status in waiting and sha == encoded[pid]]
    deleted = [pid for pid, status, _ in current if status == PieceStatus.DELETED]
    now = utcnow()
    rows = [
        {
            "piece_id": pid,
            "collection": collection,
            "model_version": model_version,
            "content_sha256": encoded[pid],
            "indexed_at": now,
        }
        for pid in marked
    ]
    if not rows:
        return marked, deleted
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
    if set_status:
        session.execute(
            update(Piece).where(Piece.id.in_(marked)).values(status=PieceStatus.INDEXED)
        )
    return marked, deleted


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


def fail_piece(
    session: Session,
    job_id: int,
    piece: Piece,
    uri: str,
    exc: BaseException,
    message: str,
    *,
    primary: bool = True,
) -> None:
    """A piece that could not be encoded: a failures row, and the piece marked failed.

    A secondary collection's failure (a reindex) leaves the piece as it is: the serving
    collection still holds it, and the reindex refuses to swap while pieces are missing.
    """
    record_failure(
        session,
        job_id=job_id,
        file_id=piece.file_id,
        piece_id=piece.id,
        uri=uri,
        stage="encode" if primary else "reindex",
        error_class=type(exc).__name__,
        message=message,
    )
    if primary:
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


def still_deleted(session: Session, piece_ids: Sequence[str]) -> list[str]:
    """Those of the pieces that are (still) deleted: a tune may come back before its point
    is removed, and then the point must stay."""
    return list(
        session.scalars(
            select(Piece.id)
            .where(Piece.id.in_(list(piece_ids)), Piece.status == PieceStatus.DELETED)
            .with_for_update(key_share=True)
        )
    )


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
    model_id: int | None = None,
    state: str = CollectionState.READY,
    job_id: int | None = None,
) -> None:
    stmt = dialect_insert(session, VectorCollection.__table__).values(
        name=name,
        model_name=model_name,
        model_version=model_version,
        dim=dim,
        meta=meta,
        created_at=utcnow(),
        model_id=model_id,
        state=state,
        job_id=job_id,
    )
    session.execute(stmt.on_conflict_do_nothing(index_elements=["name"]))
