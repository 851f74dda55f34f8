"""Distributed end to end: real Redis broker, real Postgres, a real `clamp-index worker`."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from schemas.db import Piece, PieceStatus
from tests.conftest import CLI, REPO, run_cli, settings_from_env, wikimt_entries
from workers.database import session_factory, session_scope
from workers.runtime import close_contexts, get_context

pytestmark = [pytest.mark.slow, pytest.mark.services]


def test_worker_ingests_wikimt_into_postgres_and_store(
    wikimt_dir: Path,
    embedded_env: dict[str, str],
    postgres_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    n = len(wikimt_entries())
    env = {
        **embedded_env,
        "CLAMP_INDEX_DATABASE_URL": postgres_url,
        "CLAMP_INDEX_BROKER_URL": redis_url,
    }
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [str(CLI), "worker", "--loglevel", "WARNING"],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        result = run_cli(["ingest", str(wikimt_dir), "--json"], env)
        assert result.returncode == 0, result.stderr
        job_id = json.loads(result.stdout)["job_id"]
        deadline = time.monotonic() + 600
        status: dict[str, object] = {}
        while time.monotonic() < deadline:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            status = json.loads(run_cli(["status", "--json", "--job", str(job_id)], env).stdout)
            if status["status"] == "done":
                break
            time.sleep(2)
        assert status["status"] == "done", status
        assert status["indexed"] == n and status["failed"] == 0
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()

    # The worker owned the store on disk; now that it stopped, this process may open it.
    close_contexts()
    session_factory.cache_clear()
    settings = settings_from_env(env, database_url=postgres_url)
    ctx = get_context(settings)
    try:
        with session_scope(ctx.sessions) as session:
            indexed = session.scalar(
                select(func.count()).select_from(Piece).where(Piece.status == PieceStatus.INDEXED)
            )
        collection = ctx.store.resolve_alias(settings.collection_alias)
        assert collection is not None
        assert indexed == n
        assert ctx.store.count(collection) == n
    finally:
        close_contexts()
        session_factory.cache_clear()
