"""The Celery worker: one drain task per queue, a reconciler thread, clean shutdown."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from celery import Celery, signals

from schemas.messages import WakeMessage
from schemas.settings import Settings
from workers.celery_app import DRAIN_TASK, CeleryWaker, make_celery
from workers.database import dispose_engines_after_fork
from workers.runner import Runner, WorkHandler, holder_name
from workers.runtime import get_context

log = logging.getLogger(__name__)

# A drain task hands the worker back after this long, re-waking itself, so a worker that
# consumes both queues alternates between them instead of finishing one first.
DRAIN_BUDGET_S = 120.0


def create_worker_app(
    settings: Settings, handlers: Mapping[str, WorkHandler] | None = None
) -> Celery:
    """A Celery app whose tasks drain the ledger with these settings (nothing from os.environ).

    `handlers` run work kinds from outside this package (the `train` queue's training).
    """
    app = make_celery(settings)
    waker = CeleryWaker(app)
    stop = threading.Event()
    runner = Runner(
        get_context(settings), holder_name("worker"), wake=waker.wake, stop=stop, handlers=handlers
    )

    @app.task(name=DRAIN_TASK)
    def drain(payload: dict[str, Any]) -> None:
        msg = WakeMessage.model_validate(payload)
        deadline = time.monotonic() + DRAIN_BUDGET_S
        while not stop.is_set():
            if time.monotonic() > deadline:
                waker.wake(msg.queue, msg.job_id)
                return
            if runner.drain(msg.queue, max_claims=1).claims == 0:
                if msg.queue == "encode":
                    runner.advance_reindexes()  # a reindex may be ready to check and swap
                return

    def reconcile_forever() -> None:
        # Expired leases go back to the pool, and queues with work that nobody holds get a
        # wake-up: this is what survives lost messages, a flushed Redis and dead workers.
        while not stop.wait(settings.reconcile_interval_s):
            try:
                for queue, job_id in runner.reconcile():
                    waker.wake(queue, job_id)
            except Exception:
                log.exception("reconciling the ledger failed; trying again later")

    def on_ready(**_: Any) -> None:
        threading.Thread(target=reconcile_forever, name="reconciler", daemon=True).start()

    def on_shutdown(**_: Any) -> None:
        stop.set()  # finish the current claim, then stop draining

    def on_child_start(**_: Any) -> None:
        dispose_engines_after_fork()  # a forked child must not share the parent's sockets

    signals.worker_ready.connect(on_ready, weak=False)
    signals.worker_shutting_down.connect(on_shutdown, weak=False)
    signals.worker_process_init.connect(on_child_start, weak=False)
    return app
