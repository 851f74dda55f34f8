"""Ingest planning: scan paths -> diff against the database -> enqueue parse work."""

from __future__ import annotations

import fnmatch
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from schemas.db import Failure, Job
from schemas.messages import (
    DeletePointsMessage,
    Dispatcher,
    ParseFilesMessage,
)
from schemas.settings import Settings
from workers import sinks
from workers.convert import SUPPORTED_SUFFIXES
from workers.database import session_scope

HASH_CHUNK = 1 << 20
SCAN_COMMIT_EVERY = 500


@dataclass(frozen=True)
class ScanError:
    path: str
    error_class: str
    message: str


def iter_candidate_files(paths: Sequence[Path], globs: Sequence[str]) -> Iterator[Path | ScanError]:
    """Files named directly, and files matching the globs below named directories.

    Directory symlinks are not followed, so a symlink loop cannot trap the scan.
    """
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path, followlinks=False, onerror=None):
                dirs.sort()
                for name in sorted(files):
                    if _matches(name, globs):
                        yield Path(root) / name
                # A directory named like a source file is a mistake worth reporting.
                for name in dirs:
                    if _matches(name, globs):
                        yield ScanError(
                            str((Path(root) / name).absolute()),
                            "IsADirectoryError",
                            "is a directory, not a file",
                        )
        elif path.exists() or path.is_symlink():
            yield path
        else:
            yield ScanError(str(path.absolute()), "FileNotFoundError", "no such file or directory")


def _matches(name: str, globs: Sequence[str]) -> bool:
    # Catalogs exported on Windows/macOS mix ".ABC", ".Mid", ".XML" freely.
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, g.lower()) for g in globs)


def fingerprint(path: Path) -> sinks.FileSeen:
    st = path.stat()
    if not path.is_file():
        raise IsADirectoryError(f"{path} is not a regular file")
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return sinks.FileSeen(
        uri=str(path.absolute()),
        size=st.st_size,
        mtime=st.st_mtime,
        sha256=digest.hexdigest(),
        format=SUPPORTED_SUFFIXES.get(path.suffix.lower(), "abc"),
    )


@dataclass(frozen=True)
class IngestPlan:
    job_id: int
    file_ids: list[int]
    skipped: int
    scan_failures: int
    removed_piece_ids: list[str]


def plan_ingest(
    sessions: sessionmaker[Session], settings: Settings, paths: Sequence[Path], kind: str = "ingest"
) -> IngestPlan:
    """Record every file seen; skip unchanged indexed files, tombstone vanished ones."""
    file_ids: list[int] = []
    skipped = scan_failures = 0
    removed: list[str] = []
    with session_scope(sessions) as session:
        job = sinks.create_job(session, kind, {"paths": [str(Path(p).absolute()) for p in paths]})
        job_id = job.id
    seen_uris: set[str] = set()
    # One transaction per batch of files: a commit per file dominated scans of big catalogs.
    with sessions() as session:
        for n_seen, item in enumerate(iter_candidate_files(paths, settings.file_globs), 1):
            if n_seen % SCAN_COMMIT_EVERY == 0:
                session.commit()
            if isinstance(item, ScanError):
                sinks.record_failure(
                    session,
                    job_id=job_id,
                    uri=item.path,
                    stage="scan",
                    error_class=item.error_class,
                    message=item.message,
                )
                scan_failures += 1
                continue
            try:
                seen = fingerprint(item)
            except OSError as exc:
                sinks.record_failure(
                    session,
                    job_id=job_id,
                    uri=str(item.absolute()),
                    stage="scan",
                    error_class=type(exc).__name__,
                    message=f"cannot read file: {exc.strerror or exc}",
                )
                scan_failures += 1
                continue
            seen_uris.add(seen.uri)
            file_id, unchanged = sinks.record_file(session, job_id, seen)
            if unchanged:
                skipped += 1
            else:
                file_ids.append(file_id)
        session.commit()
    with session_scope(sessions) as session:
        for raw in paths:
            root = Path(raw)
            if root.is_dir():
                prefix = str(root.absolute()).rstrip(os.sep) + os.sep
                for source in sinks.files_under(session, prefix):
                    if source.uri not in seen_uris:
                        removed += sinks.tombstone_file(session, source, job_id)
        job = session.get(Job, job_id)
        assert job is not None
        job.files_total = len(file_ids)
        job.files_skipped = skipped
    return IngestPlan(job_id, file_ids, skipped, scan_failures, removed)


def dispatch_plan(plan: IngestPlan, settings: Settings, dispatcher: Dispatcher) -> int:
    """Queue the plan's work; returns the number of parse messages sent."""
    if plan.removed_piece_ids:
        dispatcher.delete(DeletePointsMessage(piece_ids=plan.removed_piece_ids))
    step = settings.files_per_parse_task
    sent = 0
    for start in range(0, len(plan.file_ids), step):
        dispatcher.parse(
            ParseFilesMessage(job_id=plan.job_id, file_ids=plan.file_ids[start : start + step])
        )
        sent += 1
    return sent


def job_counts(
    sessions: sessionmaker[Session], job_id: int | None = None
) -> sinks.JobCounts | None:
    """Live counts of a job (the latest when none is named)."""
    with session_scope(sessions) as session:
        if job_id is None:
            job_id = session.scalar(select(Job.id).order_by(Job.id.desc()).limit(1))
            if job_id is None:
                return None
        return sinks.refresh_job(session, job_id)


def list_failures(
    sessions: sessionmaker[Session], job_id: int | None = None, include_resolved: bool = False
) -> list[Failure]:
    with session_scope(sessions) as session:
        stmt = select(Failure).order_by(Failure.id)
        if job_id is not None:
            stmt = stmt.where(Failure.job_id == job_id)
        if not include_resolved:
            stmt = stmt.where(Failure.resolved_at.is_(None))
        return list(session.scalars(stmt))
