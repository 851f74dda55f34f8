"""The loop every worker runs: claim a batch from the ledger, keep its lease, do it, complete it.

The same Runner drains queues in the embedded CLI process and inside Celery workers; only
how other workers are woken differs (a callback).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from schemas.db import WorkKind, utcnow
from workers import blue_green, job_state, ledger, stages
from workers.database import session_scope
from workers.errors import UserError
from workers.runtime import WorkerContext
from workers.vectors import UNAVAILABLE_ERRORS

log = logging.getLogger(__name__)

T = TypeVar("T")
# Infrastructure hiccups: retried with backoff for settings.db_outage_s, never blamed on items.
TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError)
FILL_POLL_S = 0.2
LEASE_EXPIRED = "its worker stopped renewing the lease (killed, or stalled) while holding it"

# (kind, number of items finished) after each completed batch.
ProgressCallback = Callable[[str, int], None]
# (queue, job id): tell the workers of a queue that it has work.
WakeCallback = Callable[[str, int], None]
# Runs one item of a kind the workers package does not know (training): (context, key).
WorkHandler = Callable[[WorkerContext, int], None]


class Interrupted(BaseException):
    """SIGTERM (or a stop signal whose first raise was lost) asked this process to stop."""


# Set by stop_signals' handler before it raises. Python drops an exception raised inside a
# finaliser ("Exception ignored in ..."): a Ctrl-C landing in one was lost and the run went
# on to its end. While this is set, every Runner raises Interrupted at its next claim.
_stop_signalled = threading.Event()


@contextmanager
def stop_signals() -> Iterator[None]:
    """Ctrl-C and SIGTERM stop this process's runs, even when the first raise is lost.

    Each is raised where the process was (KeyboardInterrupt, Interrupted) and remembered
    until the block ends. A SIGINT the process was started to ignore stays ignored.
    """

    def interrupt(signum: int, _frame: object) -> None:
        _stop_signalled.set()
        raise KeyboardInterrupt() if signum == signal.SIGINT else Interrupted()

    watched = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        watched.append(signal.SIGINT)
    previous = {signum: signal.signal(signum, interrupt) for signum in watched}
    _stop_signalled.clear()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _stop_signalled.clear()


def _raise_if_stop_signalled() -> None:
    if _stop_signalled.is_set():
        raise Interrupted()


def holder_name(role: str) -> str:
    """Who holds a lease, readable in the ledger: host, pid and role."""
    return f"{socket.gethostname()}:{os.getpid()}:{role}"


@dataclass
class DrainResult:
    claims: int = 0
    items: int = 0
    jobs: set[int] = field(default_factory=set)


class Runner:
    """Drains ledger queues for one process; thread-safe enough for one drain at a time."""

    def __init__(
        self,
        ctx: WorkerContext,
        holder: str,
        *,
        wake: WakeCallback | None = None,
        on_progress: ProgressCallback | None = None,
        stop: threading.Event | None = None,
        handlers: Mapping[str, WorkHandler] | None = None,
    ) -> None:
        self.ctx = ctx
        # Work kinds run by code outside the workers package (training): handler(ctx, key).
        self.handlers = dict(handlers or {})
        self.settings = ctx.settings
        self.holder = holder
        self.wake = wake
        self.on_progress = on_progress
        self.stop = stop or threading.Event()

    def retrying(self, fn: Callable[[], T]) -> T:
        """fn(), retried with backoff while the database is unreachable."""
        for attempt in Retrying(
            retry=retry_if_exception_type(TRANSIENT_DB_ERRORS),
            wait=wait_exponential(multiplier=0.5, max=10),
            stop=stop_after_delay(self.settings.db_outage_s),
            before_sleep=lambda state: log.warning(
                "database error, retrying: %s", state.outcome and state.outcome.exception()
            ),
            reraise=True,
        ):
            with attempt:
                return fn()
        raise AssertionError("unreachable")  # pragma: no cover

    def claim_size(self, queue: str) -> int:
        if queue == "parse":
            return self.settings.parse_claim_files
        if queue not in ("encode",):
            return 1  # one training run at a time
        if self.settings.encode_claim_pieces:
            return self.settings.encode_claim_pieces
        from workers.clamp.hardware import resolve_device

        # A GPU forward wants thousands of pieces; a CPU gains nothing past a few batches.
        return 4096 if resolve_device(self.settings.device).startswith("cuda") else 1024

    def drain(self, queue: str, max_claims: int | None = None) -> DrainResult:
        """Claim and finish batches of a queue until none is left (or stop / max_claims)."""
        result = DrainResult()
        _raise_if_stop_signalled()
        if not self.retrying(lambda: self._has_pending(queue)):
            return result  # without sizing the claim, which may need torch
        size = self.claim_size(queue)
        while not self.stop.is_set() and (max_claims is None or result.claims < max_claims):
            _raise_if_stop_signalled()
            if queue == "encode":
                self._await_full_claim(size)
            claim = self.retrying(lambda: self._claim(queue, size))
            if claim is None:
                break
            result.claims += 1
            result.items += len(claim.items)
            result.jobs.update(item.job_id for item in claim.items)
            self._run(claim)
        return result

    def _await_full_claim(self, size: int) -> None:
        """While files are still being parsed, wait (briefly) for a full encode claim.

        A forward of a few dozen pieces wastes a GPU, and on a small CPU an encoder racing
        the parser only slows both down; once parsing is done there is nothing to wait for.
        """
        deadline = time.monotonic() + self.settings.encode_fill_wait_s
        while time.monotonic() < deadline and not self.stop.is_set():

            def full_or_final() -> bool:
                with session_scope(self.ctx.sessions) as session:
                    return ledger.pending_count(
                        session, "encode", size
                    ) >= size or not ledger.has_open(session, "parse")

            if self.retrying(full_or_final):
                return
            time.sleep(FILL_POLL_S)

    def _has_pending(self, queue: str) -> bool:
        with session_scope(self.ctx.sessions) as session:
            return ledger.has_pending(session, queue)

    def _claim(self, queue: str, size: int) -> ledger.Claim | None:
        with session_scope(self.ctx.sessions) as session:
            return ledger.claim(session, queue, self.holder, size, self.settings.lease_s)

    def reconcile(self) -> list[tuple[str, int]]:
        """Return expired leases to the pool; the (queue, job) pairs that need a wake-up."""

        def expire() -> list[tuple[str, int]]:
            with session_scope(self.ctx.sessions) as session:
                lost = ledger.take_back(
                    session,
                    max_solo_losses=self.settings.max_solo_attempts,
                    error=LEASE_EXPIRED,
                    expired_before=utcnow(),
                )
                job_state.record_given_up(session, lost, LEASE_EXPIRED)
                wake = ledger.queues_to_wake(session, self.settings.reconcile_interval_s)
                # A reindex whose last finisher died before its next step: an encode
                # drainer (which owns the store and the model) takes the step.
                wake += [("encode", job_id) for job_id in blue_green.idle_reindexes(session)]
                return wake

        return self.retrying(expire)

    def _run(self, claim: ledger.Claim) -> None:
        try:
            with self._kept_lease(claim):
                self._process(claim)
        except ledger.LeaseLostError as exc:
            log.warning("claim %s: %s", claim.token, exc)
        except (KeyboardInterrupt, Interrupted):
            self.retrying(lambda: self._release(claim))
            raise
        except TRANSIENT_DB_ERRORS:
            raise  # the lease runs out on its own; the items are not to blame
        except (UserError, *UNAVAILABLE_ERRORS):
            # A setting or a service is wrong, not these items: hand them back untouched.
            self.retrying(lambda: self._release(claim))
            raise
        except Exception as exc:
            # Something about these items broke the batch: hand it back in halves, so a
            # single bad item ends as one failure and the rest get done.
            log.exception("claim %s (%d items) failed", claim.token, len(claim.items))
            message = f"{type(exc).__name__}: {exc}"
            self.retrying(lambda: self._take_back(claim, message))

    def _wake(self, queue: str, job_id: int) -> None:
        """Best effort: the work is committed; a lost wake-up is re-sent by the reconciler."""
        if self.wake is None:
            return
        try:
            self.wake(queue, job_id)
        except Exception as exc:
            log.warning("could not wake the %s queue for job %d: %s", queue, job_id, exc)

    def _release(self, claim: ledger.Claim) -> None:
        with session_scope(self.ctx.sessions) as session:
            ledger.release(session, claim.token)

    def _take_back(self, claim: ledger.Claim, message: str) -> None:
        with session_scope(self.ctx.sessions) as session:
            lost = ledger.take_back(
                session,
                max_solo_losses=self.settings.max_solo_attempts,
                error=message,
                token=claim.token,
            )
            job_state.record_given_up(session, lost, message)

    @contextmanager
    def _kept_lease(self, claim: ledger.Claim) -> Iterator[None]:
        """Renew the claim's lease every third of its length while the work runs."""
        done = threading.Event()

        def renew() -> None:
            while not done.wait(self.settings.lease_s / 3):
                try:
                    with session_scope(self.ctx.sessions) as session:
                        if not ledger.renew(session, claim.token, self.settings.lease_s):
                            return  # taken back: completion will notice and roll back
                except TRANSIENT_DB_ERRORS as exc:
                    log.warning("lease renewal failed (will retry): %s", exc)

        keeper = threading.Thread(target=renew, name="lease-keeper", daemon=True)
        keeper.start()
        try:
            yield
        finally:
            done.set()
            keeper.join()

    def _process(self, claim: ledger.Claim) -> None:
        groups: dict[tuple[str, str | None], list[ledger.ClaimedItem]] = defaultdict(list)
        for item in claim.items:
            key = item.collection if item.kind == WorkKind.ENCODE else None
            groups[(item.kind, key)].append(item)
        for (kind, collection), items in groups.items():
            if kind == WorkKind.PARSE:
                self._parse(claim, items)
            elif kind == WorkKind.ENCODE:
                self._encode(claim, items, collection)
            elif kind == WorkKind.DELETE:
                self._delete(claim, items)
            else:
                self._handle(claim, kind, items)
            if self.on_progress is not None:
                self.on_progress(kind, len(items))

    def _parse(self, claim: ledger.Claim, items: list[ledger.ClaimedItem]) -> None:
        by_job: dict[int, list[ledger.ClaimedItem]] = defaultdict(list)
        for item in items:
            by_job[item.job_id].append(item)
        for job_id, job_items in by_job.items():

            def finish(
                session: Session, outcome: stages.ParseOutcome, job_items=job_items, job_id=job_id
            ) -> None:
                ledger.complete(session, claim.token, [i.id for i in job_items])
                # Unchanged tunes of a changed file keep their vectors: reused.
                job_state.tally_job(
                    session,
                    job_id,
                    reused=outcome.pieces - len(outcome.to_encode),
                    removed=len(outcome.removed),
                )
                follow = [ledger.NewWork(WorkKind.ENCODE, pid) for pid in outcome.to_encode]
                follow += [ledger.NewWork(WorkKind.DELETE, pid) for pid in outcome.removed]
                ledger.enqueue(session, job_id, follow)
                job_state.close_if_done(session, job_id)

            file_ids = [int(i.item_key) for i in job_items]
            outcome = self.retrying(
                lambda file_ids=file_ids, job_id=job_id, finish=finish: stages.parse_files(
                    self.ctx, job_id, file_ids, finish
                )
            )
            if outcome.to_encode or outcome.removed:
                self._wake("encode", job_id)

    def _encode(
        self, claim: ledger.Claim, items: list[ledger.ClaimedItem], collection: str | None
    ) -> None:
        piece_jobs = {item.item_key: item.job_id for item in items}
        jobs = sorted({item.job_id for item in items})
        finished: list[int] = []

        def finish(session: Session, outcome: stages.EncodeOutcome) -> None:
            ledger.complete(session, claim.token, [i.id for i in items])
            for job_id in jobs:
                done = [pid for pid in outcome.indexed if piece_jobs[pid] == job_id]
                fresh = sum(pid in outcome.fresh for pid in done)
                job_state.tally_job(session, job_id, encoded=fresh, reused=len(done) - fresh)
                if job_state.close_if_done(session, job_id):
                    finished.append(job_id)

        outcome = self.retrying(
            lambda: stages.encode_pieces(self.ctx, piece_jobs, collection, finish)
        )
        if finished and outcome.indexed:
            # The embedded engine has no background optimizer: build the HNSW index once a
            # job's last batch is in (a no-op below the engine's indexing threshold).
            self.ctx.store.optimize(outcome.collection)
        if finished:
            self.advance_reindexes(finished)

    def advance_reindexes(self, job_ids: list[int] | None = None) -> list[str]:
        """Take the next step of reindexes whose queued work is done (all idle ones if None).

        Returns their phases; one that queued catch-up work wakes the encode queue.
        """
        if job_ids is None:

            def idle() -> list[int]:
                with session_scope(self.ctx.sessions) as session:
                    return blue_green.idle_reindexes(session)

            job_ids = self.retrying(idle)
        phases = []
        for job_id in job_ids:
            phase = self.retrying(lambda job_id=job_id: blue_green.advance(self.ctx, job_id))
            if phase in (blue_green.BUILDING, blue_green.SWAPPED):
                self._wake("encode", job_id)
            phases.append(phase)
        return phases

    def _handle(self, claim: ledger.Claim, kind: str, items: list[ledger.ClaimedItem]) -> None:
        handler = self.handlers.get(kind)
        if handler is None:
            # This process cannot run it (a worker started without the trainer): _run hands
            # it back untouched.
            raise UserError(f"this worker has no handler for {kind!r} work")
        for item in items:
            handler(self.ctx, int(item.item_key))

        def complete() -> None:
            with session_scope(self.ctx.sessions) as session:
                ledger.complete(session, claim.token, [i.id for i in items])

        self.retrying(complete)

    def _delete(self, claim: ledger.Claim, items: list[ledger.ClaimedItem]) -> None:
        jobs = sorted({item.job_id for item in items})

        def finish(session: Session) -> None:
            ledger.complete(session, claim.token, [i.id for i in items])
            for job_id in jobs:
                job_state.close_if_done(session, job_id)

        piece_ids = [item.item_key for item in items]
        self.retrying(lambda: stages.delete_points(self.ctx, piece_ids, finish))
