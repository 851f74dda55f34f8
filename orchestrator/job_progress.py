"""Progress of a job that is one long piece of work (training), recorded on the job row.

An ingest shows progress through its ledger counts; a train job is a single work item for
tens of minutes, so it records its phase and step in the job's params instead, where
`status --job`, HTTP GET /jobs/{id} and whoever waits on the job read it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from orchestrator.jobs import ProgressCallback
from workers import job_state
from workers.database import session_scope

# Writes at most this often: a step takes ~1 s on a CPU and ~10 ms on a GPU.
MIN_INTERVAL_S = 2.0


class JobProgress:
    """Records {"phase", "done", "total", ...} on a job, at most every MIN_INTERVAL_S."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        job_id: int,
        on_progress: ProgressCallback | None = None,
        min_interval_s: float = MIN_INTERVAL_S,
    ) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.on_progress = on_progress
        self.min_interval_s = min_interval_s
        self._last = float("-inf")
        self._phase: str | None = None
        self._losses: list[float] = []

    def phase(self, name: str, done: int = 0, total: int = 0, **extra: Any) -> None:
        """Enter a phase (always recorded) or report within one (throttled unless done)."""
        now = time.monotonic()
        going_on = name == self._phase and done < total
        if going_on and now - self._last < self.min_interval_s:
            return
        self._last, self._phase = now, name
        progress = {"phase": name, "done": done, "total": total, **extra}
        with session_scope(self.sessions) as session:
            job_state.record_params(session, self.job_id, progress=progress)
            counts = job_state.refresh_job(session, self.job_id)
        if self.on_progress is not None:
            self.on_progress(counts)

    def round_trips(self, done: int, total: int) -> None:
        self.phase("round trips", done, total)

    def training(self, total: int) -> Callable[[int, float], None]:
        """The trainer's per-step callback: the loss shown is the mean since the last write."""

        def step(done: int, loss: float) -> None:
            self._losses.append(loss)
            before = self._last
            self.phase(
                "training", done, total, loss=round(sum(self._losses) / len(self._losses), 4)
            )
            if self._last != before:
                self._losses.clear()

        return step
