"""Ingest jobs: scan paths -> diff against the database -> ledger work; run, wake, wait."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from schemas.db import Failure, Job, JobStatus, WorkKind
from schemas.messages import Waker
from schemas.settings import Settings
from workers import job_state, ledger, sinks
from workers.convert import SUPPORTED_SUFFIXES
from workers.database import session_factory, session_scope
from workers.errors import BrokerUnavailableError, UserError

if TYPE_CHECKING:
    from workers.runner import Runner

HASH_CHUNK = 1 << 20
SCAN_BATCH = 500


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
    files: int  # files queued for parsing
    skipped: int
    scan_failures: int
    removed: int  # pieces whose points are queued for deletion
    resumed: int  # items taken over from interrupted jobs


def plan_ingest(
    sessions: sessionmaker[Session],
    settings: Settings,
    paths: Sequence[Path],
    kind: str = "ingest",
    *,
    resume_dead_jobs: bool = False,
    reparse: bool = False,
) -> IngestPlan:
    """Record every file seen and put the job's work in the ledger.

    Changed files get parse work, vanished files delete work, and unchanged files whose
    pieces still lack vectors (an interrupted run) get encode work: nothing parsed before is
    parsed again. With `resume_dead_jobs` (embedded mode, where this process owns the
    store, so no other runs), the open work of jobs that died or were interrupted moves to
    this job. `reparse` parses unchanged files again (retrying their failures after a
    limit or the code changed).
    """
    file_ids: list[int] = []
    skipped = scan_failures = removed = resumed = 0
    with session_scope(sessions) as session:
        job_id = job_state.create_job(
            session,
            kind,
            {"paths": [str(Path(p).absolute()) for p in paths]},
            status=JobStatus.SCANNING,
        ).id
    if resume_dead_jobs:
        with session_scope(sessions) as session:
            resumed = job_state.take_over_dead_jobs(session, job_id, settings.max_solo_attempts)
    seen_uris: set[str] = set()
    batch: list[sinks.FileSeen] = []

    def record(session: Session) -> None:
        nonlocal skipped
        work: list[ledger.NewWork] = []
        for recorded in sinks.record_files(session, job_id, batch, reparse):
            if recorded.unchanged:
                skipped += 1
                work += [ledger.NewWork(WorkKind.ENCODE, p) for p in recorded.unindexed_piece_ids]
            else:
                file_ids.append(recorded.file_id)
                work.append(ledger.NewWork(WorkKind.PARSE, str(recorded.file_id)))
        ledger.enqueue(session, job_id, work)
        session.commit()  # one transaction per batch: a commit per file dominated big scans
        batch.clear()

    with sessions() as session:
        for item in iter_candidate_files(paths, settings.file_globs):
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
            if seen.uri in seen_uris:
                continue  # the same file named twice (a folder and a file in it)
            seen_uris.add(seen.uri)
            batch.append(seen)
            if len(batch) >= SCAN_BATCH:
                record(session)
        record(session)
    with session_scope(sessions) as session:
        for raw in paths:
            root = Path(raw)
            if root.is_dir():
                prefix = str(root.absolute()).rstrip(os.sep) + os.sep
                for source in sinks.files_under(session, prefix):
                    if source.uri not in seen_uris:
                        gone = sinks.tombstone_file(session, source, job_id)
                        ledger.enqueue(
                            session, job_id, [ledger.NewWork(WorkKind.DELETE, p) for p in gone]
                        )
                        removed += len(gone)
        job = session.get(Job, job_id)
        assert job is not None
        job.files_total = len(file_ids)
        job.files_skipped = skipped
        job.status = JobStatus.RUNNING  # all its work is in the ledger: it may end now
        job_state.tally_job(session, job_id, removed=removed)
        job_state.refresh_job(session, job_id)
    return IngestPlan(job_id, len(file_ids), skipped, scan_failures, removed, resumed)


def wake_workers(
    sessions: sessionmaker[Session],
    job_id: int,
    waker: Waker,
    queues: Sequence[str] = ledger.QUEUES,
) -> None:
    """Tell the workers the job has work; mark the job failed if the broker refuses."""
    try:
        for queue in queues:
            waker.wake(queue, job_id)
    except Exception as exc:
        with session_scope(sessions) as session:
            job_state.finish_job(session, job_id, JobStatus.FAILED)
        raise BrokerUnavailableError(
            f"job {job_id} could not be queued ({exc}), so it is marked failed; check "
            "that Redis is running and CLAMP_INDEX_BROKER_URL is right, then ingest again"
        ) from None


class JobInterruptedError(UserError):
    """The run was stopped (Ctrl-C, SIGTERM); its job is resumable."""

    exit_code = 130

    def __init__(self, job_id: int, resume: str) -> None:
        super().__init__(
            f"interrupted: job {job_id} stopped with its current batch handed back; run "
            f"`{resume}` to resume (files already parsed are not parsed again)"
        )
        self.job_id = job_id


ProgressCallback = Callable[[job_state.JobCounts], None]


def run_embedded(
    settings: Settings,
    job_id: int,
    on_progress: ProgressCallback | None = None,
    resume: str = "clamp-index ingest PATH...",
) -> None:
    """Drain the job's work in this process: parse, then encode, through the same ledger."""
    from workers.runner import Interrupted, Runner, holder_name
    from workers.runtime import get_context

    ctx = get_context(settings)
    sessions = ctx.sessions

    def progress(_kind: str, _n: int) -> None:
        if on_progress is not None:
            counts = job_counts(sessions, job_id)
            assert counts is not None
            on_progress(counts)

    runner = Runner(ctx, holder_name("embedded"), on_progress=progress)
    try:
        _drain(runner)
    except (KeyboardInterrupt, Interrupted):
        with session_scope(sessions) as session:
            job_state.finish_job(session, job_id, JobStatus.INTERRUPTED)
        raise JobInterruptedError(job_id, resume) from None
    except Exception:
        # Stopped by a setting or service to fix (wrong model, store held...): the work
        # stays in the ledger for the next run, which takes it over.
        with session_scope(sessions) as session:
            job_state.finish_job(session, job_id, JobStatus.INTERRUPTED)
        raise
    finally:
        ctx.store.flush()


def _drain(runner: Runner) -> None:
    """Parse, then encode, until the ledger holds no open work (or the runner stops)."""
    while not runner.stop.is_set():
        if not runner.drain("parse").claims + runner.drain("encode").claims:
            return


def drain_embedded(settings: Settings, stop: threading.Event) -> None:
    """Run every job's open work in this process (the HTTP server's job thread)."""
    from workers.runner import Runner, holder_name
    from workers.runtime import get_context

    ctx = get_context(settings)
    try:
        _drain(Runner(ctx, holder_name("serve"), stop=stop))
    finally:
        ctx.store.flush()


def wait_for(
    sessions: sessionmaker[Session],
    job_id: int,
    on_update: ProgressCallback | None = None,
    poll_s: float = 1.0,
) -> job_state.JobCounts:
    """Poll a job until it ends (done, failed or interrupted)."""
    while True:
        counts = job_counts(sessions, job_id)
        assert counts is not None
        if on_update is not None:
            on_update(counts)
        if counts.status in JobStatus.ENDED:
            return counts
        time.sleep(poll_s)


def require_paths(paths: Sequence[Path]) -> None:
    """Refuse a job naming a path that does not exist (a dangling symlink does)."""
    missing = [p for p in paths if not (Path(p).exists() or Path(p).is_symlink())]
    if missing:
        raise UserError(f"no such file or directory: {missing[0]}")


def ingest(
    settings: Settings,
    paths: Sequence[Path],
    *,
    wait: bool = False,
    on_progress: ProgressCallback | None = None,
    resume: str = "clamp-index ingest PATH...",
    reparse: bool = False,
) -> job_state.JobCounts:
    """Plan an ingest and run it here (embedded) or wake the workers (distributed)."""
    require_paths(paths)
    sessions = session_factory(settings.resolved_database_url())
    if settings.embedded_queue:
        from workers.runtime import get_context

        # Own the store before looking at the ledger: with its lock held no other process
        # can be running, so unfinished jobs are dead and this run takes their work over.
        get_context(settings).store  # noqa: B018
        plan = plan_ingest(sessions, settings, paths, resume_dead_jobs=True, reparse=reparse)
        run_embedded(settings, plan.job_id, on_progress, resume)
    else:
        from workers.celery_app import CeleryWaker, check_broker, make_celery

        check_broker(settings)  # before a job exists that nothing could run
        plan = plan_ingest(sessions, settings, paths, reparse=reparse)
        wake_workers(sessions, plan.job_id, CeleryWaker(make_celery(settings)))
        if wait:
            wait_for(sessions, plan.job_id, on_progress)
    counts = job_counts(sessions, plan.job_id)
    assert counts is not None
    return counts


def retry_targets(sessions: sessionmaker[Session]) -> tuple[list[Path], list[Path]]:
    """(paths behind unresolved failures that exist, those that are gone)."""
    failed = sorted({Path(f.uri) for f in list_failures(sessions)})
    present = [p for p in failed if p.exists() or p.is_symlink()]
    return present, [p for p in failed if p not in present]


def job_counts(
    sessions: sessionmaker[Session], job_id: int | None = None
) -> job_state.JobCounts | None:
    """Live counts of a job (the latest when none is named)."""
    with session_scope(sessions) as session:
        if job_id is None:
            job_id = session.scalar(select(Job.id).order_by(Job.id.desc()).limit(1))
            if job_id is None:
                return None
        return job_state.refresh_job(session, job_id)


def list_failures(
    sessions: sessionmaker[Session],
    job_id: int | None = None,
    include_resolved: bool = False,
    limit: int | None = None,
) -> list[Failure]:
    with session_scope(sessions) as session:
        stmt = select(Failure).order_by(Failure.id)
        if job_id is not None:
            stmt = stmt.where(Failure.job_id == job_id)
        if not include_resolved:
            stmt = stmt.where(Failure.resolved_at.is_(None))
        return list(session.scalars(stmt.limit(limit)))
