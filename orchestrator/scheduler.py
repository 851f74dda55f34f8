"""The scheduler loop: hold the leader lease, claim due slots, run their actions in threads.

Every process may run `clamp-index scheduler`; one leads at a time. Each tick the loop
renews (or tries to take) the lease and re-reads the schedules table, so edits apply
without a restart. Actions run on threads so that a long one (an embedded rescan, a
retrain) never holds up the lease renewals; the same schedule never runs twice at once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError

from orchestrator import schedule_store as store
from orchestrator.leader import SCHEDULER_ROLE, Lease
from orchestrator.schedule_store import ScheduleView
from orchestrator.schedules import Clock, enough_pieces, firing, system_clock
from schemas.db import RunStatus, ScheduleAction
from schemas.settings import Settings
from workers.database import describe_connect_error, safe_url, session_factory
from workers.errors import BadArgumentError, UserError

log = logging.getLogger("clamp_index.scheduler")

Action = Callable[[Settings, ScheduleView], int | None]


# ---- the default actions ----


@contextmanager
def _store_released_after(settings: Settings) -> Iterator[None]:
    """Embedded: close the store after an action, so other commands (search) can open it
    between runs. Distributed actions never open it here."""
    try:
        yield
    finally:
        if settings.embedded_queue:
            from workers.runtime import close_contexts

            close_contexts()


def rescan(settings: Settings, schedule: ScheduleView) -> int | None:
    """Ingest the source's root again: unchanged files are skipped, vanished ones removed.

    Embedded: runs here. Distributed: plans the job and wakes the workers, without waiting.
    """
    from orchestrator.jobs import ingest

    assert schedule.source_path is not None, "a rescan schedule always has a source"
    with _store_released_after(settings):
        return ingest(settings, [Path(schedule.source_path)], wait=False).job_id


def reindex(settings: Settings, _schedule: ScheduleView) -> int | None:
    """Blue/green rebuild of the active collection (with the active model)."""
    from orchestrator.reindex import reindex as run_reindex

    with _store_released_after(settings):
        return _job_id_of(run_reindex(settings))


def train(settings: Settings, _schedule: ScheduleView) -> int | None:
    """Retrain, gate and promote a model."""
    from orchestrator.lifecycle import retrain

    with _store_released_after(settings):
        return _job_id_of(retrain(settings))


def noop(_settings: Settings, _schedule: ScheduleView) -> None:
    """Runs nothing: its recorded runs show that the scheduler fires (deployment checks)."""
    return None


DEFAULT_ACTIONS: Mapping[str, Action] = {
    ScheduleAction.RESCAN: rescan,
    ScheduleAction.REINDEX: reindex,
    ScheduleAction.TRAIN: train,
    ScheduleAction.NOOP: noop,
}


def _job_id_of(result: Any) -> int | None:
    if isinstance(result, int) and not isinstance(result, bool):
        return result
    job_id = getattr(result, "job_id", None)
    return job_id if isinstance(job_id, int) else None


# ---- the loop ----


@dataclass(frozen=True)
class RunOutcome:
    run_id: int
    schedule: str
    action: str
    slot_at: datetime
    status: str
    job_id: int | None
    error: str | None


def holder_name() -> str:
    """Host and pid (who to look for), plus a nonce: two schedulers in one process differ."""
    return f"{socket.gethostname()}:{os.getpid()}:scheduler:{uuid.uuid4().hex[:6]}"


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        actions: Mapping[str, Action] | None = None,
        *,
        clock: Clock = system_clock,
        sleep: Callable[[float], object] | None = None,
        holder: str | None = None,
    ) -> None:
        if settings.scheduler_lease_s <= 2 * settings.scheduler_tick_s:
            raise BadArgumentError(
                f"the scheduler lease ({settings.scheduler_lease_s:g}s) must be more than twice "
                f"its tick ({settings.scheduler_tick_s:g}s), or leadership flaps between "
                "renewals: raise CLAMP_INDEX_SCHEDULER_LEASE_S or lower the tick"
            )
        self.settings = settings
        self.actions: Mapping[str, Action] = DEFAULT_ACTIONS if actions is None else actions
        self.clock = clock
        self.holder = holder or holder_name()
        self.lease: Lease | None = None
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        # Embedded ingests share one store and take over each other's jobs: one at a time.
        self._parallel = 1 if settings.embedded_queue else settings.scheduler_parallel
        self._lock = threading.Lock()
        self._running: dict[int, tuple[int, threading.Thread]] = {}  # schedule -> run, thread
        self.sessions = session_factory(settings.resolved_database_url())

    # -- public --

    def run_once(self) -> list[RunOutcome]:
        """One tick, then wait for the actions it started; their outcomes (for tests)."""
        outcomes: dict[int, RunOutcome] = {}
        started = self.tick(outcomes)
        for _run_id, thread in started:
            thread.join()
        with self._lock:
            return [outcomes[run_id] for run_id, _ in started]

    def run_forever(self) -> None:
        """Tick until `stop()`; then hand running actions a grace period and the lease back."""
        log.info(
            "event=scheduler_started holder=%s tick_s=%g lease_s=%g database=%s",
            self.holder,
            self.settings.scheduler_tick_s,
            self.settings.scheduler_lease_s,
            safe_url(self.settings.resolved_database_url()),
        )
        try:
            while not self._stop.is_set():
                self.tick()
                self._sleep(self.settings.scheduler_tick_s)
        finally:
            self.shutdown()

    def stop(self) -> None:
        """Ask the loop to end (safe from a signal handler)."""
        self._stop.set()

    def tick(
        self, outcomes: dict[int, RunOutcome] | None = None
    ) -> list[tuple[int, threading.Thread]]:
        """Renew or take the lease; if leading, claim and start the due slots.

        Each started run's outcome lands in `outcomes` (by run id) when it ends.
        """
        now = self.clock()
        try:
            self._lead(now)
            if self.lease is None:
                return []
            return self._fire_due(now, outcomes)
        except DBAPIError as exc:
            # A blip must not kill the loop; a long outage costs the lease, which the
            # fencing token makes safe.
            log.warning(
                "event=database_unreachable holder=%s detail=%r",
                self.holder,
                describe_connect_error(self.settings.resolved_database_url(), exc),
            )
            return []

    def shutdown(self) -> None:
        deadline = time.monotonic() + self.settings.scheduler_stop_grace_s
        for _run_id, thread in self._running_threads():
            thread.join(max(0.0, deadline - time.monotonic()))
        for run_id, thread in self._running_threads():
            if thread.is_alive():
                self._record(run_id, RunStatus.INTERRUPTED, None, "the scheduler was stopped")
        if self.lease is not None:
            try:
                store.release_lease(self.sessions, self.lease, self.clock())
                log.info(
                    "event=leadership_released holder=%s token=%d", self.holder, self.lease.token
                )
            except DBAPIError:
                log.warning("event=release_failed holder=%s: the lease runs out", self.holder)
            self.lease = None
        log.info("event=scheduler_stopped holder=%s", self.holder)

    # -- internals --

    def _lead(self, now: datetime) -> None:
        if self.lease is not None:
            renewed = store.renew_lease(
                self.sessions, self.lease, self.settings.scheduler_lease_s, now
            )
            if renewed is not None:
                self.lease = renewed
                return
            log.warning("event=leadership_lost holder=%s token=%d", self.holder, self.lease.token)
            self.lease = None
        lease = store.acquire_lease(
            self.sessions, SCHEDULER_ROLE, self.holder, self.settings.scheduler_lease_s, now
        )
        if lease is None:
            return
        self.lease = lease
        log.info("event=leadership_acquired holder=%s token=%d", self.holder, lease.token)
        abandoned = store.abandon_others_runs(self.sessions, lease, now)
        if abandoned:
            log.warning("event=runs_abandoned count=%d by_earlier_leaders=true", abandoned)

    def _fire_due(
        self, now: datetime, outcomes: dict[int, RunOutcome] | None
    ) -> list[tuple[int, threading.Thread]]:
        assert self.lease is not None
        due = store.due_schedules(self.sessions, now)
        if not due:
            return []
        busy = store.running_schedule_ids(self.sessions) | self._running_schedule_ids()
        started: list[tuple[int, threading.Thread]] = []
        for schedule in due:
            assert schedule.next_run_at is not None
            slot = firing(schedule.spec, schedule.created_at, schedule.next_run_at, now)
            if slot is None:
                continue
            if schedule.spec.after_pieces is not None:
                since = schedule.last_run_at or schedule.created_at
                changed = store.pieces_changed_since(self.sessions, since)
                if schedule.id in busy or not enough_pieces(schedule.spec, changed):
                    continue  # no slot to skip: it fires once enough pieces changed
            elif schedule.id in busy:
                self._skip(schedule, slot.slot_at, slot.next_run_at, now)
                continue
            if len(self._running_schedule_ids()) >= self._parallel:
                break  # the rest stay due and fire, once each, when a runner frees up
            run_id = store.claim_slot(
                self.sessions, self.lease, schedule, slot.slot_at, slot.next_run_at, now
            )
            if run_id is None:
                log.info("event=slot_not_claimed schedule=%s slot=%s", schedule.name, slot.slot_at)
                continue
            started.append((run_id, self._start(schedule, run_id, slot.slot_at, outcomes)))
        return started

    def _skip(
        self, schedule: ScheduleView, slot_at: datetime, next_run_at: datetime, now: datetime
    ) -> None:
        assert self.lease is not None
        reason = "the previous run of this schedule was still running"
        run_id = store.claim_slot(
            self.sessions, self.lease, schedule, slot_at, next_run_at, now, skipped_because=reason
        )
        if run_id is not None:
            log.info(
                "event=run_skipped schedule=%s run=%d slot=%s reason=%r",
                schedule.name,
                run_id,
                slot_at.isoformat(),
                reason,
            )

    def _start(
        self,
        schedule: ScheduleView,
        run_id: int,
        slot_at: datetime,
        outcomes: dict[int, RunOutcome] | None,
    ) -> threading.Thread:
        thread = threading.Thread(
            target=self._execute,
            args=(schedule, run_id, slot_at, outcomes),
            name=f"schedule-{schedule.name}",
            # A stopped scheduler waits out its grace period, not a whole reindex.
            daemon=True,
        )
        with self._lock:
            self._running[schedule.id] = (run_id, thread)
        thread.start()
        return thread

    def _execute(
        self,
        schedule: ScheduleView,
        run_id: int,
        slot_at: datetime,
        outcomes: dict[int, RunOutcome] | None,
    ) -> None:
        log.info(
            "event=run_started schedule=%s action=%s run=%d slot=%s token=%d",
            schedule.name,
            schedule.action,
            run_id,
            slot_at.isoformat(),
            self.lease.token if self.lease else -1,
        )
        started = time.monotonic()
        status, job_id, error = RunStatus.DONE, None, None
        try:
            action = self.actions.get(schedule.action)
            if action is None:
                raise UserError(f"this scheduler has no action {schedule.action!r}")
            job_id = action(self.settings, schedule)
        except UserError as exc:
            status, error = RunStatus.FAILED, str(exc)
        except Exception as exc:  # one failing action must not stop the others
            log.exception("event=action_crashed schedule=%s run=%d", schedule.name, run_id)
            status, error = RunStatus.FAILED, f"{type(exc).__name__}: {exc}"
        # Recorded before it stops counting as running here, so that no tick sees it
        # neither running in this process nor ended in the table.
        self._record(run_id, status, job_id, error)
        log.log(
            logging.INFO if status == RunStatus.DONE else logging.WARNING,
            "event=run_ended schedule=%s run=%d status=%s job=%s seconds=%.3f error=%r",
            schedule.name,
            run_id,
            status,
            job_id,
            time.monotonic() - started,
            error,
        )
        with self._lock:
            self._running.pop(schedule.id, None)
            if outcomes is not None:
                outcomes[run_id] = RunOutcome(
                    run_id, schedule.name, schedule.action, slot_at, status, job_id, error
                )

    def _record(self, run_id: int, status: str, job_id: int | None, error: str | None) -> None:
        try:
            store.finish_run(self.sessions, run_id, status, self.clock(), job_id, error)
        except DBAPIError:
            log.exception("event=run_not_recorded run=%d status=%s", run_id, status)

    def _running_schedule_ids(self) -> set[int]:
        with self._lock:
            return set(self._running)

    def _running_threads(self) -> list[tuple[int, threading.Thread]]:
        with self._lock:
            return list(self._running.values())
