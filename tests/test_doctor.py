"""`clamp-index doctor` checks against real state: fresh dirs, real Postgres/Redis, held stores."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.doctor import Check, run_checks
from schemas.settings import Settings
from tests.conftest import REPO
from workers.database import session_factory

NAMES = ["database", "migrations", "broker", "vector store", "model", "converters", "disk"]

# Holds the embedded store open until its stdin closes, like a long ingest would.
HOLDER = """
import sys
from pathlib import Path
from workers.vectors import EdgeVectorStore

class NoAliases:
    def get(self, alias):
        return None

    def set(self, alias, collection):
        raise AssertionError

store = EdgeVectorStore(Path(sys.argv[1]), NoAliases())
print("ready", flush=True)
sys.stdin.read()
store.close()
"""


def by_name(checks: list[Check]) -> dict[str, Check]:
    assert [c.name for c in checks] == NAMES
    return {c.name: c for c in checks}


def assert_all_ok(checks: list[Check]) -> None:
    bad = [c.to_dict() for c in checks if not c.ok]
    assert not bad, bad
    assert all(c.fix == "" for c in checks)


def test_fresh_embedded_dir_is_ok_and_left_untouched(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    checks = by_name(run_checks(Settings(data_dir=data_dir)))  # the shipped model, too
    assert_all_ok(list(checks.values()))
    assert "no database yet" in checks["database"].detail
    assert "no vector store yet" in checks["vector store"].detail
    assert "in-process" in checks["broker"].detail
    assert not data_dir.exists()
    # --json output must serialise as is.
    rows = json.loads(json.dumps([c.to_dict() for c in checks.values()]))
    assert set(rows[0]) == {"name", "ok", "detail", "fix"}


def test_embedded_database_behind_then_migrated(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = Settings(data_dir=tmp_path / "state", model_dir=tiny_model_dir)
    settings.data_dir.mkdir()
    (settings.data_dir / "clamp-index.db").touch()  # an empty SQLite file: no schema
    checks = by_name(run_checks(settings))
    assert checks["database"].ok
    assert not checks["migrations"].ok
    assert "clamp-index migrate" in checks["migrations"].fix

    session_factory(settings.resolved_database_url())
    checks = by_name(run_checks(settings))
    assert_all_ok(list(checks.values()))
    assert "head" in checks["migrations"].detail


@pytest.mark.services
def test_distributed_ok_once_migrated(
    tmp_path: Path, postgres_url: str, redis_url: str, tiny_model_dir: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path / "state",
        database_url=postgres_url,
        broker_url=redis_url,
        qdrant_path=tmp_path / "qdrant",
        model_dir=tiny_model_dir,
    )
    checks = by_name(run_checks(settings))
    assert checks["database"].ok, checks["database"]
    assert not checks["migrations"].ok
    assert checks["migrations"].fix

    session_factory(postgres_url)
    checks = by_name(run_checks(settings))
    assert_all_ok(list(checks.values()))
    assert "redis" in checks["broker"].detail
    assert not settings.data_dir.exists()


@pytest.mark.parametrize(
    ("url", "secret"),
    [("redis://127.0.0.1:1/0", None), ("redis://:sekret@127.0.0.1:1/0", "sekret")],
)
def test_unreachable_broker_fails_fast(tmp_path: Path, url: str, secret: str | None) -> None:
    import workers.clamp.loading  # noqa: F401 - torch's import time is not what is timed here

    start = time.monotonic()
    checks = by_name(run_checks(Settings(data_dir=tmp_path / "state", broker_url=url)))
    assert time.monotonic() - start < 10
    broker = checks["broker"]
    assert not broker.ok
    assert broker.fix
    assert "127.0.0.1:1" in broker.detail
    if secret:
        assert secret not in broker.detail


@pytest.mark.parametrize("url", ["foo://x", "not a url at all"])
def test_malformed_urls_fail_instead_of_raising(tmp_path: Path, url: str) -> None:
    settings = Settings(data_dir=tmp_path / "state", broker_url=url, database_url=url)
    checks = by_name(run_checks(settings))
    assert not checks["broker"].ok and checks["broker"].fix
    assert not checks["database"].ok and checks["database"].fix
    assert not checks["migrations"].ok


@pytest.mark.services
def test_missing_database_says_so(tmp_path: Path, postgres_url: str) -> None:
    url = postgres_url.rsplit("/", 1)[0] + "/clamp_test_no_such_database"
    checks = by_name(run_checks(Settings(data_dir=tmp_path / "state", database_url=url)))
    database = checks["database"]
    assert not database.ok
    assert "does not exist" in database.detail
    assert "createdb" in database.fix
    assert not checks["migrations"].ok


def test_missing_model_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "state", model_dir=tmp_path / "no-model")
    model = by_name(run_checks(settings))["model"]
    assert not model.ok
    assert "no-model" in model.detail
    assert "CLAMP_INDEX_MODEL_DIR" in model.fix


def test_unknown_text_weights_package(tmp_path: Path, tiny_model_dir: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["text_weights"] = "package:no_such_text_encoder"
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    settings = Settings(data_dir=tmp_path / "state", model_dir=model_dir)
    model = by_name(run_checks(settings))["model"]
    assert not model.ok
    assert "no_such_text_encoder" in model.detail
    assert model.fix


def test_vector_store_held_by_another_process(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = Settings(data_dir=tmp_path / "state", model_dir=tiny_model_dir)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(settings.vectors_dir)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        store = by_name(run_checks(settings))["vector store"]
        assert store.ok, store
        assert f"in use by pid {holder.pid}" in store.detail
        # Probing must not have taken the lock from the holder.
        store = by_name(run_checks(settings))["vector store"]
        assert f"in use by pid {holder.pid}" in store.detail
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)
    assert holder.returncode == 0
    store = by_name(run_checks(settings))["vector store"]
    assert store.ok
    assert "0 collections" in store.detail
