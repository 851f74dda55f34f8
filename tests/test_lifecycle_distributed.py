"""Reindex and retraining through a real worker: Redis broker, Postgres, `train` queue."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli, settings_from_env
from tests.faults import Worker
from tests.support.folk import GATED_TUNES, OPEN_GATE_STEPS, copy_ryans_tunes, open_gate_env
from tests.support.random_checkpoint import write_random_checkpoint
from workers.database import session_factory
from workers.runtime import close_contexts, get_context

pytestmark = [pytest.mark.slow, pytest.mark.services]

TUNES = GATED_TUNES


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
        # test_retrain proves a trained candidate earns the gate; this one, the queue's path.
        **open_gate_env(),
    }
    # A GPU node's worker: it takes encode work and training runs.
    worker = Worker(env, tmp_path / "worker.log", queues="parse,encode,train")

    def ok(*args: str) -> Any:
        assert worker.alive(), worker.log()
        result = run_cli([*args, "--json"], env, timeout=900)
        assert result.returncode == 0, result.stderr + worker.log()
        return json.loads(result.stdout)

    try:
        assert ok("ingest", str(folk), "--wait")["indexed"] == TUNES
        rebuilt = ok("reindex")
        assert rebuilt["status"] == "done", rebuilt
        assert rebuilt["check"]["points"] == rebuilt["check"]["live_pieces"] == TUNES
        trained = ok("train", "--steps", str(OPEN_GATE_STEPS))
        assert trained["accepted"] is True, trained
        assert trained["reindex_job_id"] is not None
        follow = ok("status", "--job", str(trained["reindex_job_id"]))
        assert follow["status"] == "done", follow
    finally:
        worker.stop()

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
