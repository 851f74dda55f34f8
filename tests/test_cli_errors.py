"""User errors through the real CLI: one line on stderr, exit 1 (2 for bad arguments)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from schemas.db import Job, JobStatus
from tests.conftest import run_cli, settings_from_env
from workers.database import session_factory, session_scope

TUNE = "X:1\nT:Test reel\nM:4/4\nL:1/8\nK:D\n|:defg abag|fdec d2d2:|\n"
CLOSED_PORT = 1  # nothing listens on port 1 of the loopback


def one_error_line(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The command failed with `code` and said why in exactly one line, no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture()
def catalog(tmp_path: Path) -> Path:
    root = tmp_path / "catalog"
    root.mkdir()
    (root / "reel.abc").write_text(TUNE, encoding="utf-8")
    return root


def test_missing_path_is_an_error_and_creates_nothing(embedded_env: dict[str, str]) -> None:
    line = one_error_line(run_cli(["ingest", "/nonexistent/tunes"], embedded_env))
    assert "no such file or directory: /nonexistent/tunes" in line
    assert not Path(embedded_env["CLAMP_INDEX_DATA_DIR"]).exists()


def test_read_only_commands_never_create_a_data_dir(embedded_env: dict[str, str]) -> None:
    data_dir = Path(embedded_env["CLAMP_INDEX_DATA_DIR"])
    for args in (
        ["search", "a jig"],
        ["status"],
        ["failures"],
        ["classify", "--indexed", "--labels", "jig,reel"],
    ):
        line = one_error_line(run_cli(args, embedded_env))
        assert "no index in" in line and "clamp-index ingest" in line, args
    assert not data_dir.exists()


def test_unknown_job_id(embedded_env: dict[str, str], catalog: Path) -> None:
    assert run_cli(["ingest", str(catalog), "--json"], embedded_env).returncode == 0
    line = one_error_line(run_cli(["status", "--job", "999"], embedded_env))
    assert "no job with id 999" in line


def test_fewer_than_two_labels_is_a_bad_argument(
    embedded_env: dict[str, str], catalog: Path
) -> None:
    line = one_error_line(
        run_cli(["classify", str(catalog / "reel.abc"), "--labels", "jig"], embedded_env), 2
    )
    assert "at least two labels" in line


def test_store_held_by_another_process(embedded_env: dict[str, str], catalog: Path) -> None:
    assert run_cli(["ingest", str(catalog), "--json"], embedded_env).returncode == 0
    from workers.runtime import close_contexts, get_context

    ctx = get_context(settings_from_env(embedded_env))
    ctx.store  # noqa: B018  (opens the embedded store and takes its lock)
    try:
        line = one_error_line(run_cli(["search", "a reel"], embedded_env))
    finally:
        close_contexts()
    assert "already open in another process" in line and "HTTP" not in line


@pytest.mark.services
def test_unreachable_broker_fails_fast_without_a_job(
    embedded_env: dict[str, str], catalog: Path, postgres_url: str
) -> None:
    env = dict(
        embedded_env,
        CLAMP_INDEX_DATABASE_URL=postgres_url,
        CLAMP_INDEX_BROKER_URL=f"redis://127.0.0.1:{CLOSED_PORT}/0",
    )
    started = time.monotonic()
    line = one_error_line(run_cli(["ingest", str(catalog)], env))
    assert time.monotonic() - started < 30
    assert "cannot reach the broker redis://127.0.0.1:1/0" in line
    with session_scope(session_factory(postgres_url)) as session:
        assert session.scalars(select(Job)).all() == []


@pytest.mark.services
def test_a_job_whose_dispatch_failed_is_marked_failed(
    embedded_env: dict[str, str], catalog: Path, postgres_url: str
) -> None:
    from orchestrator import jobs
    from workers.celery_app import CeleryWaker, make_celery
    from workers.errors import BrokerUnavailableError

    settings = settings_from_env(
        embedded_env,
        database_url=postgres_url,
        broker_url=f"redis://127.0.0.1:{CLOSED_PORT}/0",
    )
    sessions = session_factory(postgres_url)
    plan = jobs.plan_ingest(sessions, settings, [catalog])
    celery = make_celery(settings)
    celery.conf.broker_connection_max_retries = 1
    celery.conf.task_publish_retry_policy = {"max_retries": 1, "interval_start": 0}
    with pytest.raises(BrokerUnavailableError, match="marked failed"):
        jobs.wake_workers(sessions, plan.job_id, CeleryWaker(celery))
    with session_scope(sessions) as session:
        job = session.get(Job, plan.job_id)
        assert job is not None and job.status == JobStatus.FAILED and job.finished_at
    # `status --watch` returns at once for a job that will never progress.
    env = dict(embedded_env, CLAMP_INDEX_DATABASE_URL=postgres_url)
    watched = run_cli(["status", "--watch", "--json"], env, timeout=60)
    assert watched.returncode == 0 and json.loads(watched.stdout)["status"] == "failed"


@pytest.mark.services
def test_missing_and_unreachable_databases(embedded_env: dict[str, str], postgres_url: str) -> None:
    missing_db = postgres_url.rsplit("/", 1)[0] + "/clamp_no_such_database"
    line = one_error_line(
        run_cli(["status"], dict(embedded_env, CLAMP_INDEX_DATABASE_URL=missing_db))
    )
    assert 'database "clamp_no_such_database" does not exist' in line and "createdb" in line
    unreachable = f"postgresql+psycopg://postgres@127.0.0.1:{CLOSED_PORT}/test"
    line = one_error_line(
        run_cli(["status"], dict(embedded_env, CLAMP_INDEX_DATABASE_URL=unreachable))
    )
    assert "cannot use the database" in line and "127.0.0.1:1" in line
