"""Job rows: create, tally, finish, recount from the ledger, and take over dead jobs' work."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from schemas.db import (
    Failure,
    FileStatus,
    Job,
    JobKind,
    JobStatus,
    Piece,
    PieceStatus,
    SourceFile,
    WorkKind,
    WorkState,
    as_utc,
    utcnow,
)
from workers import ledger
from workers.errors import JobNotFoundError
from workers.sinks import fail_pending_files, fail_piece, load_pieces, record_failure


def create_job(
    session: Session, kind: str, params: dict[str, Any], status: str = JobStatus.RUNNING
) -> Job:
    job = Job(kind=kind, status=status, params=params)
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
                Job.id != job_id,
                Job.status.not_in([JobStatus.DONE, JobStatus.FAILED]),
                # A reindex's work targets its own collection (`clamp-index reindex` resumes
                # it) and a train job's work needs the trainer: neither is an ingest's.
                Job.kind.not_in(JobKind.CLOSED_BY_HANDLER),
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
        .where(Job.id.in_(dead), Job.status != JobStatus.INTERRUPTED)
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


def record_params(session: Session, job_id: int, **values: Any) -> None:
    """Merge values into a job's params (a new dict, so the JSON column is written)."""
    job = session.get(Job, job_id)
    if job is not None:
        job.params = {**job.params, **values}


def finish_job(session: Session, job_id: int, status: str) -> None:
    job = session.get(Job, job_id)
    if job is not None and job.status not in JobStatus.ENDED:
        job.status = status
        job.finished_at = utcnow()


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
    # What a job made of one long item (training) says of itself: phase, done, total...
    progress: dict[str, Any] = dataclasses.field(default_factory=dict)

    def rate_and_eta(self) -> tuple[float, float | None]:
        """Pieces finished per second since the job began, and seconds left at that rate."""
        end = as_utc(self.finished_at or utcnow())
        seconds = max((end - as_utc(self.created_at)).total_seconds(), 1e-6)
        done = self.pieces - self.pieces_pending
        rate = done / seconds
        left = self.pieces_pending + self.files_pending
        if not left:
            return rate, 0.0
        return rate, (left / rate if rate > 0 else None)

    @property
    def finished(self) -> bool:
        return self.files_pending == 0 and self.pieces_pending == 0 and self.deletes_pending == 0

    def to_dict(self) -> dict[str, Any]:
        """The report `status --json`, `ingest --json` and HTTP GET /jobs/{id} print."""
        rate, eta = self.rate_and_eta()
        return {
            "job_id": self.job_id,
            "kind": self.kind,
            "status": self.status,
            "files": self.files,
            "pieces": self.pieces,
            "indexed": self.indexed,
            "failed": self.failed,
            "skipped": self.skipped,
            "encoded": self.encoded,
            "reused": self.reused,
            "removed": self.removed,
            "files_pending": self.files_pending,
            "files_failed": self.files_failed,
            "deletes_pending": self.deletes_pending,
            "pieces_pending": self.pieces_pending,
            "created_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "pieces_per_s": round(rate, 2),
            "eta_s": round(eta, 1) if eta is not None else None,
            "stages": self.stages,
            "progress": self.progress,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobCounts:
        """Back from to_dict (the CLI following a job that a server runs)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["created_at"] = datetime.fromisoformat(data["created_at"])
        finished = data.get("finished_at")
        values["finished_at"] = datetime.fromisoformat(finished) if finished else None
        return cls(**values)


def close_if_done(session: Session, job_id: int) -> bool:
    """Close the job when the ledger holds no open work for it; True when it is finished.

    Cheap while work remains (one count of the job's open items), so every batch can call
    it; the full recount runs once, at the end.
    """
    # Lock the job row first: two workers finishing its last two batches at once must not
    # each see the other's work still open and both leave the job running.
    lock_job(session, job_id)
    if ledger.open_counts(session, job_id):
        return False
    return refresh_job(session, job_id).finished


def lock_job(session: Session, job_id: int) -> Job | None:
    """Read a job holding its lock to the end of the transaction, so that what the
    transaction reads next is one view that no worker's batch commits into."""
    if session.get_bind().dialect.name == "sqlite":
        # SQLite has no row locks, and pysqlite opens no transaction before a write: each
        # read would see its own moment, and a poll counted a job's pieces before its last
        # batch committed and its open work after, closing it with that batch uncounted.
        # A write that changes nothing takes the database's write lock now instead.
        session.execute(update(Job).where(Job.id == job_id).values(status=Job.status))
        return session.get(Job, job_id)
    # FOR NO KEY UPDATE: rows that reference the job (pieces, work items) take KEY SHARE
    # locks on it, which a plain FOR UPDATE would wait on, deadlocking two workers.
    return session.get(Job, job_id, with_for_update={"key_share": True})


def refresh_job(session: Session, job_id: int) -> JobCounts:
    """Recount a job from its rows (safe under concurrent workers) and close it when done."""
    job = lock_job(session, job_id)
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
    stages = ledger.stage_counts(session, job_id)
    if job.kind == JobKind.REINDEX:
        # Its pieces belong to the ingests that made them: count its own ledger rows.
        encode = stages.get(WorkKind.ENCODE, {})
        indexed = encode.get(WorkState.DONE, 0) - failures
        piece_failed = failures + encode.get(WorkState.FAILED, 0)
    else:
        indexed = piece_counts.get(PieceStatus.INDEXED, 0)
        piece_failed = piece_counts.get(PieceStatus.FAILED, 0)
    job.files_failed = files_failed
    job.pieces_total = indexed + piece_failed + pieces_pending
    job.pieces_indexed = indexed
    job.pieces_failed = piece_failed
    closes_itself = job.kind not in JobKind.CLOSED_BY_HANDLER  # e.g. a reindex: at its swap
    if job.status == JobStatus.RUNNING and not open_work and closes_itself:
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
        stages=stages,
        progress=dict(job.params.get("progress") or {}),
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
            job = session.get(Job, item.job_id)
            # A reindex's poison piece still serves from the old collection: keep it live.
            primary = job is None or job.kind != JobKind.REINDEX
            for piece, uri in load_pieces(session, [item.item_key], any_live=not primary):
                fail_piece(session, item.job_id, piece, uri, error, reason, primary=primary)
        elif item.kind == WorkKind.TRAIN:
            finish_job(session, item.job_id, JobStatus.FAILED)
            record_params(session, item.job_id, error=reason)
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
