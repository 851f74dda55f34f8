"""The Celery app, its reliability settings, and the producer side used by the orchestrator."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from schemas.messages import DeletePointsMessage, EncodePiecesMessage, ParseFilesMessage
from schemas.settings import Settings

PARSE_QUEUE = "parse"
ENCODE_QUEUE = "encode"
PARSE_TASK = "clamp_index.parse_files"
ENCODE_TASK = "clamp_index.encode_pieces"
DELETE_TASK = "clamp_index.delete_points"


def make_celery(settings: Settings) -> Celery:
    app = Celery(
        "clamp_index", broker=settings.broker_url or "memory://", include=["workers.tasks"]
    )
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        # A task is acknowledged only after it finished, and re-queued if its worker dies:
        # every task is idempotent, so running twice is harmless, losing one is not.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Must exceed the longest task, or Redis hands a running task to a second worker.
        broker_transport_options={"visibility_timeout": 2 * settings.task_time_limit_s},
        broker_connection_retry_on_startup=True,
        task_queues=[Queue(PARSE_QUEUE), Queue(ENCODE_QUEUE)],
        task_default_queue=PARSE_QUEUE,
        task_routes={
            PARSE_TASK: {"queue": PARSE_QUEUE},
            ENCODE_TASK: {"queue": ENCODE_QUEUE},
            # Deleting points needs the vector store, which the encode workers hold.
            DELETE_TASK: {"queue": ENCODE_QUEUE},
        },
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=settings.task_time_limit_s - 60,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=True,
    )
    return app


class CeleryDispatcher:
    """Sends task messages by name, so producers need none of the worker's code (or torch)."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def parse(self, msg: ParseFilesMessage) -> None:
        self.app.send_task(PARSE_TASK, args=[msg.model_dump()], queue=PARSE_QUEUE)

    def encode(self, msg: EncodePiecesMessage) -> None:
        self.app.send_task(ENCODE_TASK, args=[msg.model_dump()], queue=ENCODE_QUEUE)

    def delete(self, msg: DeletePointsMessage) -> None:
        self.app.send_task(DELETE_TASK, args=[msg.model_dump()], queue=ENCODE_QUEUE)


# `celery -A workers.celery_app worker` finds this; settings come from the environment.
app = make_celery(Settings())
