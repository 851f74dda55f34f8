"""Shared fixtures: a tiny CLaMP checkpoint, WikiMT as files, real service connections."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.wikimt import load_entries, write_abc_files
from schemas.settings import Settings

REPO = Path(__file__).resolve().parents[1]
WIKIMT_JSON = REPO.parent / "shared" / "data" / "wikimt" / "wikimusictext.json"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
PG_ADMIN_URL = os.environ.get(
    "CLAMP_INDEX_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL_BASE = os.environ.get("CLAMP_INDEX_TEST_REDIS", "redis://127.0.0.1:6379")


def need_service(name: str, problem: str) -> None:
    """Missing services fail under CI (a skip would hide a broken pipeline) and skip locally."""
    message = f"{name} is not reachable: {problem}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def wikimt_entries() -> list[dict[str, str]]:
    return load_entries(WIKIMT_JSON)


@pytest.fixture(scope="session")
def wikimt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wikimt")
    write_abc_files(root, WIKIMT_JSON)
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.random_checkpoint import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def roundtrip_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The retraining tests train on the same demo tunes: their MusicXML/MIDI round trips
    # (0.1-0.6 s each) are converted once per session, as one deployment's cache would be.
    return tmp_path_factory.mktemp("roundtrips")


@pytest.fixture()
def embedded_env(tmp_path: Path, tiny_model_dir: Path, roundtrip_cache_dir: Path) -> dict[str, str]:
    """Environment for CLI subprocesses in embedded mode (no broker, no servers)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAMP_INDEX_")}
    env.update(
        CLAMP_INDEX_DATA_DIR=str(tmp_path / "state"),
        CLAMP_INDEX_MODEL_DIR=str(tiny_model_dir),
        CLAMP_INDEX_TORCH_THREADS="2",
        CLAMP_INDEX_ROUNDTRIP_CACHE_DIR=str(roundtrip_cache_dir),
    )
    return env


def settings_from_env(env: dict[str, str], **overrides: object) -> Settings:
    """In-process settings for the state a CLI subprocess with `env` works on."""
    return Settings(
        data_dir=Path(env["CLAMP_INDEX_DATA_DIR"]),
        model_dir=Path(env["CLAMP_INDEX_MODEL_DIR"]) if "CLAMP_INDEX_MODEL_DIR" in env else None,
        roundtrip_cache_dir=env.get("CLAMP_INDEX_ROUNDTRIP_CACHE_DIR"),
        **overrides,
    )


CLI = Path(sys.executable).parent / "clamp-index"


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """The installed console script, exactly as users and scripts call it."""
    return subprocess.run(
        [str(CLI), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    """A fresh, empty database on the machine's Postgres, dropped afterwards."""
    import sqlalchemy as sa

    try:
        # pre_ping: a fault test may restart Postgres under this pool.
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        need_service("Postgres", str(exc).splitlines()[0])
    name = f"clamp_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        from workers.database import session_factory

        session_factory.cache_clear()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture()
def redis_url() -> Iterator[str]:
    """A Redis database number reserved for these tests, emptied before and after."""
    import redis

    url = f"{REDIS_URL_BASE}/13"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3)
        client.ping()
    except Exception as exc:
        need_service("Redis", str(exc))
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
