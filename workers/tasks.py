"""Thin task wrappers: decode a message, call a stage, queue the follow-up work."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from sqlalchemy.exc import InterfaceError, OperationalError

from schemas.messages import (
    DeletePointsMessage,
    Dispatcher,
    EncodePiecesMessage,
    ParseFilesMessage,
)
from workers import sinks, stages
from workers.celery_app import DELETE_TASK, ENCODE_TASK, PARSE_TASK, CeleryDispatcher, app
from workers.database import session_scope
from workers.runtime import WorkerContext, get_context

log = logging.getLogger(__name__)

# Infrastructure hiccups are retried with backoff; bad input never raises out of a stage.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    ConnectionError,
    TimeoutError,
)


def handle_parse(ctx: WorkerContext, msg: ParseFilesMessage, dispatcher: Dispatcher) -> None:
    outcome = stages.parse_files(ctx, msg.job_id, msg.file_ids)
    if outcome.removed:
        dispatcher.delete(DeletePointsMessage(piece_ids=outcome.removed))
    step = ctx.settings.pieces_per_encode_task
    for start in range(0, len(outcome.to_encode), step):
        dispatcher.encode(
            EncodePiecesMessage(
                job_id=msg.job_id, piece_ids=outcome.to_encode[start : start + step]
            )
        )
    refresh(ctx, msg.job_id)


def handle_encode(ctx: WorkerContext, msg: EncodePiecesMessage) -> None:
    outcome = stages.encode_pieces(ctx, msg.job_id, msg.piece_ids, msg.collection)
    if refresh(ctx, msg.job_id).finished and outcome.indexed:
        # The embedded engine has no background optimizer: build the HNSW index once the
        # job's last batch is in (a no-op below the engine's indexing threshold).
        ctx.store.optimize(outcome.collection)


def handle_delete(ctx: WorkerContext, msg: DeletePointsMessage) -> None:
    stages.delete_points(ctx, msg.piece_ids)


def record_message_failure(
    ctx: WorkerContext,
    msg: ParseFilesMessage | EncodePiecesMessage | DeletePointsMessage,
    exc: BaseException,
) -> None:
    """A task that failed for good turns its items into failures, so its job still ends."""
    with session_scope(ctx.sessions) as session:
        if isinstance(msg, ParseFilesMessage):
            sinks.fail_pending_files(session, msg.job_id, msg.file_ids, exc)
        elif isinstance(msg, EncodePiecesMessage):
            sinks.fail_unindexed_pieces(session, msg.job_id, msg.piece_ids, exc)
        else:
            log.error("deleting %d points failed: %r", len(msg.piece_ids), exc)
            return
        sinks.refresh_job(session, msg.job_id)


def refresh(ctx: WorkerContext, job_id: int) -> sinks.JobCounts:
    with session_scope(ctx.sessions) as session:
        return sinks.refresh_job(session, job_id)


class RecordingTask(Task):  # type: ignore[misc]
    """Records the items of a task that exhausted its retries or hit a non-transient error."""

    message_type: type[ParseFilesMessage | EncodePiecesMessage | DeletePointsMessage]

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        try:
            msg = self.message_type.model_validate(args[0])
        except Exception:  # a malformed message has no items to record
            log.exception("task %s failed on an unreadable message", task_id)
            return
        record_message_failure(get_context(), msg, exc)


_RETRY: dict[str, Any] = {
    "base": RecordingTask,
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": True,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": 10,
}


@app.task(name=PARSE_TASK, message_type=ParseFilesMessage, **_RETRY)
def parse_files_task(payload: dict[str, Any]) -> None:
    handle_parse(get_context(), ParseFilesMessage.model_validate(payload), CeleryDispatcher(app))


@app.task(name=ENCODE_TASK, message_type=EncodePiecesMessage, **_RETRY)
def encode_pieces_task(payload: dict[str, Any]) -> None:
    ctx = get_context()
    handle_encode(ctx, EncodePiecesMessage.model_validate(payload))
    # The store is shared with the process's next task, but its WAL should hit disk now.
    ctx.store.flush()


@app.task(name=DELETE_TASK, message_type=DeletePointsMessage, **_RETRY)
def delete_points_task(payload: dict[str, Any]) -> None:
    handle_delete(get_context(), DeletePointsMessage.model_validate(payload))
