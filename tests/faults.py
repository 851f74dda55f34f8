"""Helpers for fault tests: worker subprocesses, service restarts, ledger and store checks."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from orchestrator import jobs
from schemas.db import Piece, PieceStatus
from tests.conftest import CLI, REPO, settings_from_env
from workers.database import session_factory, session_scope
from workers.job_state import JobCounts
from workers.runtime import close_contexts, get_context

# How the machine starts its services (the `env` entry of the tool library); the tests
# restart them the same way and always leave them running.
REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
    "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
    "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip


def postgres_cluster() -> list[str]:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]


def redis_up() -> bool:
    return subprocess.run(["redis-cli", "-p", "6379", "ping"], capture_output=True).returncode == 0


def ensure_redis() -> None:
    if not redis_up():
        subprocess.run(REDIS_START, check=True)
        wait_until(redis_up, 30, "Redis to come back")


def restart_redis() -> None:
    """Stop Redis without saving (it keeps nothing on disk here) and start it again."""
    subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], capture_output=True)
    wait_until(lambda: not redis_up(), 30, "Redis to stop")
    ensure_redis()


def postgres_up() -> bool:
    ready = subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", "5432"], capture_output=True)
    return ready.returncode == 0


def stop_postgres() -> None:
    subprocess.run([*postgres_cluster(), "stop", "-m", "fast"], check=True, capture_output=True)


def ensure_postgres() -> None:
    if not postgres_up():
        subprocess.run([*postgres_cluster(), "start"], check=True, capture_output=True)
        wait_until(postgres_up, 60, "Postgres to come back")


def wait_until(predicate: object, timeout_s: float, what: str, poll_s: float = 0.2) -> float:
    """Seconds it took for predicate() to hold; AssertionError after timeout_s."""
    assert callable(predicate)
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate():
            return time.monotonic() - start
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


class Worker:
    """A `clamp-index worker` subprocess with its log kept for failure messages."""

    def __init__(self, env: dict[str, str], log: Path, queues: str = "parse,encode") -> None:
        self.log_path = log
        self._log = log.open("a")
        self.proc = subprocess.Popen(
            [str(CLI), "worker", "--queues", queues, "--loglevel", "WARNING"],
            env=env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@contextlib.contextmanager
def workers(env: dict[str, str], tmp_path: Path, *queues: str) -> Iterator[list[Worker]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    started = [
        Worker(env, tmp_path / f"worker{i}.log", q)
        for i, q in enumerate(queues or ("parse,encode",))
    ]
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()


def start_ingest(env: dict[str, str], path: Path) -> int:
    result = subprocess.run(
        [str(CLI), "ingest", str(path), "--json"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return int(json.loads(result.stdout)["job_id"])


def counts(database_url: str, job_id: int) -> JobCounts:
    found = jobs.job_counts(session_factory(database_url), job_id)
    assert found is not None
    return found


@dataclass(frozen=True)
class Outcome:
    pieces: int  # live piece rows
    indexed: int  # piece rows marked indexed
    points: int  # points in the active collection

    def as_dict(self) -> dict[str, int]:
        return {"pieces": self.pieces, "indexed": self.indexed, "points": self.points}


def outcome(env: dict[str, str], database_url: str | None = None) -> Outcome:
    """Rows vs points, read after every worker stopped (the store admits one process)."""
    close_contexts()
    session_factory.cache_clear()
    overrides = {"database_url": database_url} if database_url else {}
    settings = settings_from_env(env, **overrides)
    ctx = get_context(settings)
    try:
        with session_scope(ctx.sessions) as session:
            live = select(func.count()).select_from(Piece)
            pieces = session.scalar(live.where(Piece.status != PieceStatus.DELETED)) or 0
            indexed = session.scalar(live.where(Piece.status == PieceStatus.INDEXED)) or 0
        collection = ctx.store.resolve_alias(settings.collection_alias)
        points = ctx.store.count(collection) if collection else 0
        return Outcome(pieces, indexed, points)
    finally:
        close_contexts()
        session_factory.cache_clear()


def report(name: str, **figures: object) -> None:
    """The figures a fault test measured, one JSON line (shown with pytest -s or on failure)."""
    print(json.dumps({"fault_test": name, **figures}))


def abc_files(folder: Path) -> list[str]:
    return sorted(glob.glob(str(folder / "*.abc")))
