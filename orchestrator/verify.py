"""Database vs vector store: find missing, orphaned and stale points, and repair them."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from schemas.collection import point_id
from schemas.db import WorkKind
from schemas.settings import Settings
from workers import job_state, ledger, sinks
from workers.database import session_scope


@dataclass(frozen=True)
class VerifyReport:
    collection: str | None
    checked: int  # pieces the database says are indexed, plus points it does not know
    missing: int  # indexed in the database, no point in the store
    orphaned: int  # a point no indexed piece owns (deleted tune, lost bookkeeping)
    stale: int  # written by another model version than the collection's
    repaired: int
    repair_job_id: int | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def verify(settings: Settings, repair: bool = False) -> VerifyReport:
    """Compare the active collection with the database; with `repair`, make them agree.

    Missing and stale pieces go back to the ledger as encode work of a new `repair` job
    (run here in embedded mode, by the workers otherwise); orphaned points are deleted.
    """
    from workers.runtime import get_context

    ctx = get_context(settings)
    store = ctx.store
    collection = store.resolve_alias(settings.collection_alias)
    if collection is None:
        return VerifyReport(None, 0, 0, 0, 0, 0, None)
    version = store.collection_meta(collection).get("model_version")
    # Points first, then the database: a worker upserts points before it commits their rows,
    # so a point of an encode in flight is in the store but not yet in the database.
    present = set(store.iter_ids(collection))
    with session_scope(ctx.sessions) as session:
        indexed = sinks.indexed_model_versions(session, collection)
        in_flight = {point_id(pid) for pid in ledger.open_piece_keys(session)}
    by_point = {point_id(pid): pid for pid in indexed}
    missing = [pid for point, pid in by_point.items() if point not in present]
    orphaned = sorted(present - by_point.keys() - in_flight)
    stale = [pid for pid, model in indexed.items() if model != version and pid not in missing]
    report = VerifyReport(
        collection=collection,
        checked=len(indexed) + len(orphaned),
        missing=len(missing),
        orphaned=len(orphaned),
        stale=len(stale),
        repaired=0,
        repair_job_id=None,
    )
    if not repair or not (missing or orphaned or stale):
        return report
    if orphaned:
        store.delete(collection, orphaned)
        store.flush()
    job_id = None
    again = missing + stale
    if again:
        with session_scope(ctx.sessions) as session:
            job_id = job_state.create_job(session, "repair", {"collection": collection}).id
            sinks.forget_for_reencode(session, again, collection, job_id)
            work = [ledger.NewWork(WorkKind.ENCODE, pid, collection) for pid in again]
            ledger.enqueue(session, job_id, work)
        _run_repair(settings, job_id)
    return VerifyReport(
        **{**report.to_dict(), "repaired": len(orphaned) + len(again), "repair_job_id": job_id}
    )


def _run_repair(settings: Settings, job_id: int) -> None:
    from orchestrator import jobs

    if settings.embedded_queue:
        jobs.run_embedded(settings, job_id, resume="clamp-index verify --repair")
    else:
        from workers.celery_app import CeleryWaker, make_celery
        from workers.runtime import get_context

        jobs.wake_workers(
            get_context(settings).sessions, job_id, CeleryWaker(make_celery(settings))
        )
