"""Retraining behind an evaluation gate: train a candidate, compare, register, promote."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select

from orchestrator import models
from orchestrator.job_progress import JobProgress
from orchestrator.jobs import ProgressCallback, wait_for, wake_workers
from schemas.db import Job, JobKind, JobStatus, ModelRecord, ModelStatus, WorkKind
from schemas.settings import Settings
from workers import job_state, ledger, registry
from workers.database import session_factory, session_scope
from workers.errors import UserError


@dataclass(frozen=True)
class GateDecision:
    accepted: bool
    reason: str
    candidate: dict[str, float]
    active: dict[str, float]
    heldout: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Each check's metric and the count of pieces it was measured on (MRR: every held-out tune).
_CHECKS = (
    ("text_to_music_mrr", None, "text->music MRR"),
    ("zero_shot_accuracy", "zero_shot_pieces", "zero-shot accuracy"),
    ("musicxml_top10", "musicxml_queries", "MusicXML->ABC top 10"),
    ("midi_top10", "midi_queries", "MIDI->ABC top 10"),
)


def gate(
    candidate: dict[str, float],
    active: dict[str, float],
    *,
    mrr_margin: float,
    zero_shot_margin: float,
    cross_format_margin: float,
    heldout: int,
    min_pieces: int,
) -> GateDecision:
    """Accept only a candidate that beats the active model on the same held-out tunes.

    Below `min_pieces` held-out tunes nothing is accepted: one tune's rank would decide. A
    check measured on fewer pieces than that is left out, and the reason says so.
    """
    if heldout < min_pieces:
        return GateDecision(
            False,
            f"not judged: {heldout} held-out tunes, and the gate needs {min_pieces} "
            "(CLAMP_INDEX_GATE_MIN_HELDOUT); `clamp-index models promote` promotes the "
            "candidate by hand",
            candidate,
            active,
            heldout,
        )
    # MRR is always measured; the others only where both models could be.
    gain = candidate["text_to_music_mrr"] - active["text_to_music_mrr"]
    margins = {
        "text_to_music_mrr": mrr_margin,
        "zero_shot_accuracy": zero_shot_margin,
        "musicxml_top10": cross_format_margin,
        "midi_top10": cross_format_margin,
    }
    reasons = []
    too_few = []
    for name, count, label in _CHECKS:
        if name not in candidate or name not in active:
            continue
        pieces = heldout if count is None else int(candidate.get(count, heldout))
        if pieces < min_pieces:
            too_few.append(f"{label} ({pieces})")
            continue
        change = candidate[name] - active[name]
        if change < margins[name]:
            reasons.append(
                f"{label} {candidate[name]:.4f} vs active {active[name]:.4f} "
                f"(gain {change:+.4f}, needs {margins[name]:+.4f})"
            )
    left_out = f"; left out, measured on fewer than {min_pieces}: {', '.join(too_few)}"
    note = left_out if too_few else ""
    if reasons:
        reason = "rejected: " + "; ".join(reasons) + note
        return GateDecision(False, reason, candidate, active, heldout)
    return GateDecision(
        True,
        f"accepted: text->music MRR gain {gain:+.4f} on {heldout} held-out tunes{note}",
        candidate,
        active,
        heldout,
    )


@dataclass(frozen=True)
class RetrainResult:
    job_id: int
    status: str
    candidate_id: int | None
    candidate: str | None
    accepted: bool | None
    reason: str | None
    gate: dict[str, Any] | None
    train_s: float | None
    gate_s: float | None
    reindex_job_id: int | None
    reindex: dict[str, Any] | None
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def retrain(
    settings: Settings,
    *,
    from_model: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    promote: bool = True,
    wait: bool = True,
    on_progress: ProgressCallback | None = None,
) -> RetrainResult:
    """A train job: here (embedded), or on a worker of the `train` queue (distributed).

    on_progress gets the job's counts as its phase (round trips, training, gate, reindex)
    moves on: every couple of seconds while training.
    """
    sessions = session_factory(settings.resolved_database_url())
    params = {
        "from_model": from_model,
        "steps": steps or settings.train_steps,
        "seed": seed,
        "promote": promote,
    }
    with session_scope(sessions) as session:
        job = job_state.create_job(session, JobKind.TRAIN, params)
        ledger.enqueue(session, job.id, [ledger.NewWork(WorkKind.TRAIN, str(job.id))])
        job_id = job.id
    if settings.embedded_queue:
        from workers.runner import Runner, holder_name
        from workers.runtime import get_context

        handlers = work_handlers(on_progress)
        Runner(get_context(settings), holder_name("embedded"), handlers=handlers).drain("train")
    else:
        from workers.celery_app import CeleryWaker, check_broker, make_celery

        check_broker(settings)
        wake_workers(sessions, job_id, CeleryWaker(make_celery(settings)), queues=["train"])
        if wait:
            wait_for(sessions, job_id, on_progress)
    result = retrain_result(sessions, job_id)
    if wait and result.reindex_job_id is not None and not settings.embedded_queue:
        wait_for(sessions, result.reindex_job_id)
        result = retrain_result(sessions, job_id)
    return result


def work_handlers(on_progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Ledger work kinds this package runs for the workers (training needs the trainer)."""
    return {WorkKind.TRAIN: lambda ctx, job_id: run_train_job(ctx.settings, job_id, on_progress)}


def run_train_job(
    settings: Settings, job_id: int, on_progress: ProgressCallback | None = None
) -> None:
    """Train a candidate on the catalogue, gate it, and promote it if it wins.

    Runs where the train work item is claimed; records everything on the job and the
    registry, so a rejected candidate leaves the serving side exactly as it was.
    """
    sessions = session_factory(settings.resolved_database_url())
    with session_scope(sessions) as session:
        job = session.get(Job, job_id)
        if job is None or job.status in JobStatus.ENDED:
            return
    try:
        _train_gate_promote(settings, sessions, job_id, JobProgress(sessions, job_id, on_progress))
    except (UserError, ValueError) as exc:
        # The catalogue or a setting is wrong, not the worker: retrying cannot help.
        _finish(sessions, job_id, JobStatus.FAILED, error=str(exc))


def _train_gate_promote(
    settings: Settings, sessions: Any, job_id: int, progress: JobProgress
) -> None:
    from orchestrator.training import evaluate_model, records_from_pieces, train_on_catalogue
    from orchestrator.training.data import TuneRecord
    from orchestrator.training.roundtrip import RoundTripCache
    from orchestrator.training.run import RoundTripPlan, catalogue_split

    with session_scope(sessions) as session:
        job = session.get(Job, job_id)
        assert job is not None
        params = dict(job.params)
        base = _base_model(session, settings, params.get("from_model"))
        base_id, base_path = base.id, models.model_path(base)
        records: list[TuneRecord] = records_from_pieces(session)
        name = settings.train_model_name
        version = str(_next_version(session, name))
    if len(records) < 20:
        _finish(sessions, job_id, JobStatus.FAILED, error=_too_few(len(records)))
        return
    _, judged_on = catalogue_split(records)
    if len(judged_on) < settings.gate_min_heldout:
        error = _too_few_heldout(len(records), len(judged_on), settings.gate_min_heldout)
        _finish(sessions, job_id, JobStatus.FAILED, error=error)
        return
    plan = (
        RoundTripPlan(
            settings.roundtrips_dir,
            max_tunes=settings.train_roundtrip_tunes,
            workers=settings.train_convert_workers,
        )
        if settings.train_roundtrip_tunes
        else None
    )
    started = time.monotonic()
    steps = int(params["steps"])
    staging = settings.models_dir / f".training-{job_id}"
    shutil.rmtree(staging, ignore_errors=True)
    result = train_on_catalogue(
        records,
        out_dir=staging,
        name=name,
        version=version,
        from_model=base_path,
        steps=steps,
        seed=int(params["seed"]),
        device=settings.device,
        roundtrips=plan,
        progress=progress.training(steps),
        round_trip_progress=progress.round_trips,
    )
    train_s = time.monotonic() - started
    final = settings.models_dir.resolve() / f"{name}-{result.model_version}"
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    started = time.monotonic()
    heldout_keys = set(result.heldout)
    heldout = [r for r in records if r.key_hash in heldout_keys]
    with session_scope(sessions) as session:
        active = registry.active(session) or base
        active_path = models.model_path(active)
    # What the run converted (nothing when its converters could not run): both models
    # are measured on the same round trips of the same held-out tunes.
    converted = RoundTripCache(plan.cache_dir) if plan is not None else None
    progress.phase("gate")
    decision = gate(
        evaluate_model(final, heldout, device=settings.device, converted=converted),
        evaluate_model(active_path, heldout, device=settings.device, converted=converted),
        mrr_margin=settings.gate_mrr_margin,
        zero_shot_margin=settings.gate_zero_shot_margin,
        cross_format_margin=settings.gate_cross_format_margin,
        heldout=len(heldout),
        min_pieces=settings.gate_min_heldout,
    )
    gate_s = time.monotonic() - started
    with session_scope(sessions) as session:
        candidate = registry.register(
            session,
            name=name,
            version=result.model_version,
            kind="clamp-index-trained-v1",
            path=str(final),
            parent_id=base_id,
            data_snapshot=result.data_snapshot,
            params={**result.params, "heldout_tunes": len(heldout)},
            metrics={"heldout": decision.candidate, "active_on_same_heldout": decision.active},
            job_id=job_id,
        )
        if not decision.accepted:
            registry.set_status(session, candidate.id, ModelStatus.REJECTED, notes=decision.reason)
        candidate_id = candidate.id
        job_state.record_params(
            session,
            job_id,
            candidate_id=candidate_id,
            candidate=f"{name}:{result.model_version}",
            gate=decision.to_dict(),
            accepted=decision.accepted,
            reason=decision.reason,
            train_s=round(train_s, 1),
            gate_s=round(gate_s, 1),
        )
    if decision.accepted and params.get("promote", True):
        progress.phase("reindex")
        _promote(settings, sessions, job_id, candidate_id)
    _finish(sessions, job_id, JobStatus.DONE)


def _promote(settings: Settings, sessions: Any, job_id: int, candidate_id: int) -> None:
    from orchestrator.reindex import ReindexFailedError, reindex

    # Embedded: the reindex runs here, to its swap. Distributed: it is queued for the
    # encode workers, and whoever waits on this job follows it.
    try:
        outcome = reindex(settings, str(candidate_id), wait=False)
    except ReindexFailedError as exc:
        with session_scope(sessions) as session:
            job_state.record_params(session, job_id, reindex_error=str(exc))
        return
    with session_scope(sessions) as session:
        job_state.record_params(
            session, job_id, reindex_job_id=outcome.job_id, reindex=outcome.to_dict()
        )


def _base_model(session: Any, settings: Settings, ref: str | None) -> ModelRecord:
    if ref:
        return models.resolve(session, settings, ref)
    active = registry.active(session)
    if active is None:
        raise UserError(
            "no active model to start from: ingest something first, or pass --from MODEL"
        )
    return active


def _next_version(session: Any, name: str) -> int:
    count = session.scalar(
        select(func.count()).select_from(ModelRecord).where(ModelRecord.name == name)
    )
    return int(count or 0) + 1


def _too_few(n: int) -> str:
    return (
        f"the catalogue has {n} distinct tunes with metadata text; training needs at least 20 "
        "(a held-out tenth must remain to judge the candidate)"
    )


def _too_few_heldout(tunes: int, heldout: int, needed: int) -> str:
    return (
        f"of the catalogue's {tunes} tunes, {heldout} fall in the held-out tenth that judges a "
        f"candidate, and the gate needs {needed}: ingest more tunes, or lower "
        "CLAMP_INDEX_GATE_MIN_HELDOUT and accept a gate that a few tunes' ranks decide"
    )


def _finish(sessions: Any, job_id: int, status: str, error: str | None = None) -> None:
    with session_scope(sessions) as session:
        if error is not None:
            job_state.record_params(session, job_id, error=error)
        job_state.finish_job(session, job_id, status)


def retrain_result(sessions: Any, job_id: int) -> RetrainResult:
    with session_scope(sessions) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise UserError(f"no job with id {job_id}")
        p = dict(job.params)
        status = job.status
    return RetrainResult(
        job_id=job_id,
        status=status,
        candidate_id=p.get("candidate_id"),
        candidate=p.get("candidate"),
        accepted=p.get("accepted"),
        reason=p.get("reason"),
        gate=p.get("gate"),
        train_s=p.get("train_s"),
        gate_s=p.get("gate_s"),
        reindex_job_id=p.get("reindex_job_id"),
        reindex=p.get("reindex"),
        error=p.get("error"),
    )
