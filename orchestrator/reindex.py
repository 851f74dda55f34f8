"""Blue/green reindex jobs: plan, run here or wake the workers, wait; rollback; collections."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator import models
from orchestrator.jobs import JobInterruptedError, wait_for, wake_workers
from schemas.collection import INPUT_PROFILE_META, CollectionSpec, collection_name
from schemas.db import (
    CollectionState,
    Job,
    JobKind,
    JobStatus,
    ModelRecord,
    ModelStatus,
    WorkKind,
)
from schemas.filters import FILTER_PAYLOAD_VERSION, FILTER_VERSION_META
from schemas.settings import Settings
from workers import blue_green, collection_rows, job_state, ledger, registry, sinks
from workers.database import session_factory, session_scope
from workers.errors import UserError

ENQUEUE_BATCH = 5000


@dataclass(frozen=True)
class ReindexResult:
    job_id: int
    status: str
    phase: str
    collection: str
    model: str
    previous: str | None
    pieces: int
    encoded: int
    reused: int
    failed: int
    check: dict[str, Any] | None
    error: str | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ReindexFailedError(UserError):
    """The new collection failed its checks; the old one still serves."""


ProgressCallback = Callable[[job_state.JobCounts], None]


def reindex(
    settings: Settings,
    model: str | None = None,
    *,
    on_progress: ProgressCallback | None = None,
    wait: bool = True,
) -> ReindexResult:
    """Build a new collection for `model` (default: the active one), check it, swap to it.

    Embedded: runs here, owning the store. Distributed: queues the work for the encode
    workers, which also take the check-and-swap step, and waits for the job to end.
    """
    started = time.monotonic()
    sessions = session_factory(settings.resolved_database_url())
    if settings.embedded_queue:
        from workers.runtime import get_context

        ctx = get_context(settings)
        ctx.active_collection()  # the first collection must exist to be replaced
        job_id = _resume_or_plan(sessions, settings, model, embedded=True)
        _run_embedded(settings, job_id, on_progress)
    else:
        from workers.celery_app import CeleryWaker, check_broker, make_celery

        check_broker(settings)
        job_id = _resume_or_plan(sessions, settings, model, embedded=False)
        wake_workers(sessions, job_id, CeleryWaker(make_celery(settings)))
        if wait:
            wait_for(sessions, job_id, on_progress)
    result = reindex_result(sessions, job_id, time.monotonic() - started)
    if result.status == JobStatus.FAILED:
        raise ReindexFailedError(
            f"reindex job {job_id} did not swap: {result.error or 'see its failures'}"
        )
    return result


def _resume_or_plan(sessions: Any, settings: Settings, model: str | None, *, embedded: bool) -> int:
    with session_scope(sessions) as session:
        target = (
            models.resolve(session, settings, model)
            if model
            else registry.active(session) or _configured(session, settings)
        )
        session.flush()
        unfinished = _unfinished_reindex(session)
        if unfinished is not None:
            if model and unfinished.params.get("model_id") != target.id:
                raise UserError(
                    f"reindex job {unfinished.id} (to {unfinished.params.get('collection')}) "
                    "is unfinished: run `clamp-index reindex` without --model to finish it, "
                    "or wait for it"
                )
            if embedded:  # this process holds the store: whoever ran it is gone
                ledger.take_back(
                    session,
                    max_solo_losses=settings.max_solo_attempts,
                    error="the process running it stopped while holding it",
                    job_ids=[unfinished.id],
                )
                unfinished.status = JobStatus.RUNNING
                unfinished.finished_at = None
            return unfinished.id
        return plan_reindex(session, settings, target, create_in_store=embedded)


def _configured(session: Session, settings: Settings) -> ModelRecord:
    from workers.runtime import model_dir_of

    return models.register_dir(
        session, settings, model_dir_of(settings), copy=False, tokenizer_dir=settings.tokenizer_dir
    )


def _unfinished_reindex(session: Session) -> Job | None:
    return session.scalar(
        select(Job)
        .where(
            Job.kind == JobKind.REINDEX,
            Job.status.in_([JobStatus.RUNNING, JobStatus.SCANNING, JobStatus.INTERRUPTED]),
        )
        .order_by(Job.id.desc())
        .limit(1)
    )


def plan_reindex(
    session: Session, settings: Settings, target: ModelRecord, *, create_in_store: bool
) -> int:
    """A reindex job and its building collection, with encode work for every live piece."""
    from workers.clamp.loading import describe_model

    manifest = describe_model(models.model_path(target))
    job = job_state.create_job(
        session, JobKind.REINDEX, {"model_id": target.id}, status=JobStatus.SCANNING
    )
    name = collection_name(settings.collection_alias, target.name, target.version, job.id)
    meta = {
        "model_name": target.name,
        "model_version": target.version,
        "model_kind": target.kind,
        INPUT_PROFILE_META: str(manifest["input_profile"]),
        "dim": str(manifest["dim"]),
        "max_patches": str(manifest["max_patches"]),
        "precision": settings.precision,
        "long_piece": settings.long_piece,
        FILTER_VERSION_META: FILTER_PAYLOAD_VERSION,
    }
    sinks.register_collection(
        session,
        name=name,
        model_name=target.name,
        model_version=target.version,
        dim=int(manifest["dim"]),
        meta=meta,
        model_id=target.id,
        state=CollectionState.BUILDING,
        job_id=job.id,
    )
    if create_in_store:
        from workers.runtime import get_context

        get_context(settings).store.create_collection(
            CollectionSpec(name=name, dim=int(manifest["dim"]), meta=meta)
        )
    piece_ids = collection_rows.live_piece_ids(session)
    for start in range(0, len(piece_ids), ENQUEUE_BATCH):
        ledger.enqueue(
            session,
            job.id,
            [
                ledger.NewWork(WorkKind.ENCODE, pid, name)
                for pid in piece_ids[start : start + ENQUEUE_BATCH]
            ],
        )
    job.params = {
        "model_id": target.id,
        "model": f"{target.name}:{target.version}",
        "collection": name,
        "phase": blue_green.BUILDING,
        "pieces": len(piece_ids),
    }
    job.status = JobStatus.RUNNING
    return job.id


def _run_embedded(settings: Settings, job_id: int, on_progress: ProgressCallback | None) -> None:
    from workers.runner import Interrupted, Runner, holder_name
    from workers.runtime import get_context

    ctx = get_context(settings)
    sessions = ctx.sessions

    def progress(_kind: str, _n: int) -> None:
        if on_progress is not None:
            with session_scope(sessions) as session:
                counts = job_state.refresh_job(session, job_id)
            on_progress(counts)  # outside the transaction: it holds the job's lock

    runner = Runner(ctx, holder_name("embedded"), on_progress=progress)
    try:
        while True:
            runner.drain("encode")
            phase = blue_green.advance(ctx, job_id)
            if phase in (blue_green.DONE, blue_green.FAILED):
                return
    except (KeyboardInterrupt, Interrupted):
        with session_scope(sessions) as session:
            job_state.finish_job(session, job_id, JobStatus.INTERRUPTED)
        raise JobInterruptedError(job_id, "clamp-index reindex") from None
    finally:
        ctx.store.flush()


def reindex_result(sessions: Any, job_id: int, seconds: float = 0.0) -> ReindexResult:
    with session_scope(sessions) as session:
        counts = job_state.refresh_job(session, job_id)
        job = session.get(Job, job_id)
        assert job is not None
        params = dict(job.params)
    return ReindexResult(
        job_id=job_id,
        status=counts.status,
        phase=str(params.get("phase")),
        collection=str(params.get("collection")),
        model=str(params.get("model")),
        previous=params.get("previous"),
        pieces=counts.pieces,
        encoded=counts.encoded,
        reused=counts.reused,
        failed=counts.failed,
        check=params.get("check"),
        error=params.get("error"),
        seconds=round(seconds, 3),
    )


@dataclass(frozen=True)
class RollbackResult:
    previous: str
    active: str
    model: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rollback(settings: Settings, to: str | None = None) -> RollbackResult:
    """Swap the alias back to the collection that served before the current one (or `to`)."""
    from workers.runtime import get_context

    ctx = get_context(settings)
    store = ctx.store
    current = store.resolve_alias(settings.collection_alias)
    with session_scope(ctx.sessions) as session:
        if to is not None:
            target = collection_rows.get(session, to)
            if target is None or target.state != CollectionState.READY or to == current:
                raise UserError(
                    f"{to!r} is not a complete collection other than the active one: "
                    "`clamp-index collections` lists those you can swap to"
                )
        else:
            target = collection_rows.rollback_target(session, current)
        if target is None or not store.collection_exists(target.name):
            raise UserError(
                "no earlier collection to roll back to: `clamp-index collections` lists them "
                f"(collections_keep={settings.collections_keep} keeps that many; "
                "`clamp-index rollback --to NAME` swaps to any complete one)"
            )
        if _unfinished_reindex(session) is not None:
            raise UserError("a reindex is running: wait for it to end, then roll back")
        store.set_alias(settings.collection_alias, target.name)
        if current is not None:
            collection_rows.mark_left(session, current)
            left = collection_rows.get(session, current)
            if left is not None and left.model_id is not None and left.model_id != target.model_id:
                registry.set_status(
                    session, left.model_id, ModelStatus.RETIRED, notes=f"rolled back from {current}"
                )
        collection_rows.mark_activated(session, target.name)
        if target.model_id is not None:
            registry.make_active(session, target.model_id)
        model = f"{target.model_name}:{target.model_version}"
        name = target.name
    return RollbackResult(previous=current or "", active=name, model=model)


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    model: str
    model_id: int | None
    state: str
    points: int | None
    created_at: datetime
    activated_at: datetime | None
    active: bool
    job_id: int | None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["created_at"] = self.created_at.isoformat()
        out["activated_at"] = self.activated_at.isoformat() if self.activated_at else None
        return out


def list_collections(settings: Settings) -> list[CollectionInfo]:
    from workers.runtime import get_context

    ctx = get_context(settings)
    store = ctx.store
    active = store.resolve_alias(settings.collection_alias)
    with session_scope(ctx.sessions) as session:
        rows = collection_rows.list_all(session)
    return [
        CollectionInfo(
            name=row.name,
            model=f"{row.model_name}:{row.model_version}",
            model_id=row.model_id,
            state=row.state,
            points=store.count(row.name) if store.collection_exists(row.name) else None,
            created_at=row.created_at,
            activated_at=row.activated_at,
            active=row.name == active,
            job_id=row.job_id,
        )
        for row in rows
    ]
