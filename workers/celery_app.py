"""The Celery app, its settings, and the producer side: wake-ups for ledger queues."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from schemas.messages import WakeMessage
from schemas.settings import Settings
from workers.errors import BrokerUnavailableError

PARSE_QUEUE = "parse"
ENCODE_QUEUE = "encode"
TRAIN_QUEUE = "train"
DRAIN_TASK = "clamp_index.drain"


def make_celery(settings: Settings) -> Celery:
    app = Celery("clamp_index", broker=settings.broker_url or "memory://")
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # A message is only a wake-up: the work is in the ledger, under leases. Acknowledging
        # on receipt is safe (a lost wake-up is re-sent by the reconciler), and no message
        # ever waits out a visibility timeout because its worker died.
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        task_queues=[Queue(PARSE_QUEUE), Queue(ENCODE_QUEUE), Queue(TRAIN_QUEUE)],
        task_default_queue=PARSE_QUEUE,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


BROKER_CHECK_TIMEOUT_S = 3.0


def check_broker(settings: Settings, timeout_s: float = BROKER_CHECK_TIMEOUT_S) -> str:
    """The broker's transport name; BrokerUnavailableError unless it answers in ~timeout_s."""
    from kombu import Connection
    from kombu.utils.url import maybe_sanitize_url

    url = settings.broker_url or ""
    # connect_timeout covers only the TCP connect: a Redis that accepts but never replies
    # would hang the first read without a socket timeout.
    options = {"socket_timeout": timeout_s} if url.startswith(("redis://", "rediss://")) else {}
    try:
        with Connection(url, connect_timeout=timeout_s, transport_options=options) as conn:
            # One retry after half a second, then give up: kombu's defaults sleep 2 s first
            # and retry for ever.
            conn.ensure_connection(
                max_retries=1, interval_start=0.5, interval_step=0, interval_max=0.5,
                timeout=timeout_s,
            )  # fmt: skip
            return str(conn.transport_cls)
    except Exception as exc:  # kombu raises many kinds, and a bad URL raises others
        raise BrokerUnavailableError(
            f"cannot reach the broker {maybe_sanitize_url(url)}: {exc}; check that Redis is "
            "running and CLAMP_INDEX_BROKER_URL is right"
        ) from None


class CeleryWaker:
    """Sends wake-ups by task name, so producers need none of the worker's code (or torch)."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def wake(self, queue: str, job_id: int) -> None:
        message = WakeMessage(queue=queue, job_id=job_id)  # type: ignore[arg-type]
        self.app.send_task(DRAIN_TASK, args=[message.model_dump()], queue=queue)
