"""Reindex and retraining through a real worker: Redis broker, Postgres, `train` queue."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CLI, REPO, run_cli, settings_from_env
from tests.support.folk import copy_ryans_tunes
from tests.support.random_checkpoint import write_random_checkpoint
from workers.database import session_factory
from workers.runtime import close_contexts, get_context

pytestmark = [pytest.mark.slow, pytest.mark.services]

TUNES = 150


def test_worker_reindexes_and_trains_then_swaps(
    embedded_env: dict[str, str], postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    folk = tmp_path / "folk"
    copy_ryans_tunes(folk, TUNES)
    # A tiny music encoder against the real MiniLM: training moves what the gate reads.
    model = write_random_checkpoint(tmp_path / "tiny-minilm", text="minilm", seed=0)
    env = {
        **embedded_env,
        "CLAMP_INDEX_MODEL_DIR": str(model),
        "CLAMP_INDEX_DATABASE_URL": postgres_url,
        "CLAMP_INDEX_BROKER_URL": redis_url,
        "CLAMP_INDEX_RECONCILE_INTERVAL_S": "2",
    }
    log_path = tmp_path / "worker.log"
    log = log_path.open("w")
    # A GPU node's worker: it takes encode work and training runs.
    worker = subprocess.Popen(
        [str(CLI), "worker", "--queues", "parse,encode,train", "--loglevel", "WARNING"],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def ok(*args: str) -> Any:
        assert worker.poll() is None, log_path.read_text()
        result = run_cli([*args, "--json"], env, timeout=900)
        assert result.returncode == 0, result.stderr + log_path.read_text()
        return json.loads(result.stdout)

    try:
        assert ok("ingest", str(folk), "--wait")["indexed"] == TUNES
        rebuilt = ok("reindex")
        assert rebuilt["status"] == "done", rebuilt
        assert rebuilt["check"]["points"] == rebuilt["check"]["live_pieces"] == TUNES
        trained = ok("train", "--steps", "300")
        assert trained["accepted"] is True, trained
        assert trained["reindex_job_id"] is not None
        follow = ok("status", "--job", str(trained["reindex_job_id"]))
        assert follow["status"] == "done", follow
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()

    close_contexts()
    session_factory.cache_clear()
    settings = settings_from_env(env, database_url=postgres_url)
    ctx = get_context(settings)
    try:
        active = ctx.store.resolve_alias(settings.collection_alias)
        assert active is not None and active != rebuilt["collection"]
        assert ctx.store.count(active) == TUNES
        model = ctx.model_of(active)
        assert model is not None and model.path.name.startswith("clamp-index-catalogue-")
    finally:
        close_contexts()
        session_factory.cache_clear()
