"""A reindex's steps after its bulk work: catch up, check, swap the alias, retire old builds."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas.collection import point_id
from schemas.db import CollectionState, Job, JobKind, JobStatus, WorkKind
from workers import collection_rows, job_state, ledger, registry
from workers.database import session_scope
from workers.runtime import WorkerContext

log = logging.getLogger(__name__)

BUILDING = "building"  # bulk work and catch-up passes into the new collection
SWAPPING = "swapping"  # checked and stamped; the alias switch is next
SWAPPED = "swapped"  # the alias names it; catching up what the old one took meanwhile
DONE = "done"
FAILED = "failed"

# Each pass queues what changed during the last; a catalogue that never settles must end.
MAX_CATCH_UP_ROUNDS = 50


@dataclass
class SwapCheck:
    """What the new collection looked like just before the swap."""

    points: int
    live_pieces: int
    probes: int
    probe_misses: list[str] = field(default_factory=list)
    strays_removed: int = 0
    failures: int = 0

    @property
    def passed(self) -> bool:
        # Pieces that failed with the new model are the only ones allowed to be missing.
        return self.points + self.failures == self.live_pieces and not self.probe_misses

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ReindexCheckError(RuntimeError):
    """The new collection is not complete or not answering: it is never swapped in."""


def reindex_target(job: Job) -> str:
    return str(job.params["collection"])


def catch_up(session: Session, job_id: int, collection: str) -> int:
    """Queue the live pieces the collection still lacks (new, changed, or missed).

    Pieces this reindex already failed to encode are not tried again: they are counted.
    """
    missing = collection_rows.missing_pieces(session, collection, failed_in_job=job_id)
    ledger.reopen(
        session, job_id, [ledger.NewWork(WorkKind.ENCODE, pid, collection) for pid in missing]
    )
    return len(missing)


def check_collection(ctx: WorkerContext, collection: str) -> SwapCheck:
    """Count equals live pieces (strays removed first), and probe pieces find themselves."""
    store = ctx.store
    store.flush()
    with session_scope(ctx.sessions) as session:
        live = set(collection_rows.live_piece_ids(session))
        probes = collection_rows.probe_pieces(session, collection, ctx.settings.reindex_probes)
    wanted = {point_id(pid) for pid in live}
    strays = [pid for pid in store.iter_ids(collection) if pid not in wanted]
    if strays:  # points of tunes deleted before their delete could reach this collection
        store.delete(collection, strays)
    check = SwapCheck(
        points=store.count(collection),
        live_pieces=len(live),
        probes=len(probes),
        strays_removed=len(strays),
    )
    if probes:
        encoder = ctx.encoder_for(collection)
        vectors = encoder.encode_music([encoder.music_patches(music) for _, music in probes])
        for (pid, _), vector in zip(probes, vectors, strict=True):
            if not _finds_itself(ctx, collection, pid, vector):
                check.probe_misses.append(pid)
    return check


def _finds_itself(ctx: WorkerContext, collection: str, piece_id: str, vector: np.ndarray) -> bool:
    hits = ctx.store.query(collection, vector, 3)
    if not hits:
        return False
    own = [h for h in hits if h.point_id == point_id(piece_id)]
    # A different tune with the very same vector may share first place.
    return bool(own) and own[0].score >= hits[0].score - 1e-5


def advance(ctx: WorkerContext, job_id: int) -> str:
    """Move a reindex whose queued work is finished one step on; returns its phase.

    Called by whoever drained its last batch (the embedded loop, or a worker) and by the
    reconciler. Each step locks the job row; the alias switch itself sits between two
    transactions (the embedded store writes its alias row in a transaction of its own), and
    a step interrupted there is finished by the next call: switching twice is harmless.
    """
    with session_scope(ctx.sessions) as session:
        job = job_state.lock_job(session, job_id)
        if job is None or job.kind != JobKind.REINDEX:
            return DONE
        phase = str(job.params.get("phase", BUILDING))
        if job.status in JobStatus.ENDED or ledger.open_counts(session, job_id):
            return phase  # over, or still working
        collection = reindex_target(job)
        if phase == BUILDING:
            phase = _catch_up_or_check(ctx, session, job, collection)
            if phase != SWAPPING:
                return phase
    if phase == SWAPPING:
        ctx.store.set_alias(ctx.settings.collection_alias, collection)
    with session_scope(ctx.sessions) as session:
        job = job_state.lock_job(session, job_id)
        assert job is not None
        if job.status in JobStatus.ENDED:
            return str(job.params.get("phase"))
        if job.params.get("phase") == SWAPPING:
            model_id = job.params.get("model_id")
            if model_id is not None:
                registry.make_active(session, int(model_id))
            job_state.record_params(session, job.id, phase=SWAPPED)
            log.info("reindex job %s swapped %s -> %s", job_id, job.params["previous"], collection)
        # Encodes that reached the old collection while the check ran come over too.
        if catch_up(session, job_id, collection):
            return SWAPPED
        job_state.record_params(session, job.id, phase=DONE)
        job_state.finish_job(session, job_id, JobStatus.DONE)
        job_state.refresh_job(session, job_id)
        log.info("reindex job %s done: %s serves", job_id, collection)
    apply_retention(ctx)
    return DONE


def _catch_up_or_check(ctx: WorkerContext, session: Session, job: Job, collection: str) -> str:
    """Queue what the new collection still lacks, or check it and mark it for the switch."""
    settings = ctx.settings
    rounds = int(job.params.get("catch_up_rounds", 0))
    if rounds >= MAX_CATCH_UP_ROUNDS:
        reason = (
            f"still missing pieces after {rounds} catch-up passes: the catalogue changes "
            "faster than the reindex encodes; retry when ingests are quieter"
        )
        return _fail(session, job, collection, reason, None)
    if catch_up(session, job.id, collection):
        job_state.record_params(session, job.id, catch_up_rounds=rounds + 1)
        return BUILDING  # more to encode first; its finisher calls again
    failures = job_state.refresh_job(session, job.id).failed
    check = check_collection(ctx, collection)
    check.failures = failures
    if failures > settings.reindex_max_failures:
        reason = (
            f"{failures} pieces failed to encode with the new model (limit "
            f"{settings.reindex_max_failures}); `clamp-index failures --job {job.id}` lists them"
        )
        return _fail(session, job, collection, reason, check)
    if not check.passed:
        return _fail(session, job, collection, _describe_failed_check(check), check)
    previous = ctx.store.resolve_alias(settings.collection_alias)
    # Stamped before the switch: no query can reach it earlier than its stamp says.
    collection_rows.mark_activated(session, collection)
    job_state.record_params(
        session, job.id, phase=SWAPPING, check=check.to_dict(), previous=previous
    )
    return SWAPPING


def _fail(session: Session, job: Job, collection: str, reason: str, check: SwapCheck | None) -> str:
    job_state.record_params(
        session, job.id, phase=FAILED, check=check.to_dict() if check else None, error=reason
    )
    collection_rows.set_state(session, collection, CollectionState.FAILED)
    job_state.finish_job(session, job.id, JobStatus.FAILED)
    log.error("reindex job %s not swapped: %s", job.id, reason)
    return FAILED


def _describe_failed_check(check: SwapCheck) -> str:
    parts = []
    if check.points != check.live_pieces:
        parts.append(f"it holds {check.points} points for {check.live_pieces} live pieces")
    if check.probe_misses:
        parts.append(
            f"{len(check.probe_misses)} of {check.probes} probe pieces did not come back first "
            f"for their own music (e.g. {check.probe_misses[0]})"
        )
    return "; ".join(parts) + "; the old collection keeps serving"


def idle_reindexes(session: Session) -> list[int]:
    """Running reindex jobs with no open work: a step is due (their finisher may have died)."""
    running = session.scalars(
        select(Job.id).where(Job.kind == JobKind.REINDEX, Job.status == JobStatus.RUNNING)
    )
    return [job_id for job_id in running if not ledger.open_counts(session, job_id)]


def apply_retention(ctx: WorkerContext) -> list[str]:
    """Delete collections beyond `collections_keep` (and failed builds); returns their names."""
    active = ctx.store.resolve_alias(ctx.settings.collection_alias)
    with session_scope(ctx.sessions) as session:
        victims = collection_rows.retention_victims(session, active, ctx.settings.collections_keep)
    for name in victims:
        ctx.store.delete_collection(name)
        with session_scope(ctx.sessions) as session:
            collection_rows.forget(session, name)
        log.info("retention removed collection %s", name)
    return victims
