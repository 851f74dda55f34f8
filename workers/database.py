"""Database engine, sessions, and schema migration on first use."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from workers.errors import DatabaseUnavailableError, NoIndexError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "schemas" / "migrations"
# Any fixed 64-bit number: every process that migrates takes the same Postgres advisory lock.
_MIGRATION_LOCK_KEY = 0x636C616D70
CONNECT_TIMEOUT_S = 10


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the CLI read status while an ingest writes; FKs are off by default in SQLite.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        db_path = url.split("///", 1)[-1]
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # A host that drops packets would otherwise hang a connect for minutes.
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
    )


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


@contextmanager
def _sqlite_migration_lock(engine: Engine) -> Iterator[None]:
    """Serialise migrations of one SQLite file across processes (Postgres has its own lock)."""
    db_path = engine.url.database
    if engine.dialect.name != "sqlite" or not db_path or db_path == ":memory:":
        yield
        return
    with open(f"{db_path}.migrate-lock", "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def migrate(engine: Engine) -> None:
    """Bring the schema to head; safe to call from many processes at once."""
    cfg = alembic_config()
    with _sqlite_migration_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


_engines: list[Engine] = []


@lru_cache(maxsize=8)
def session_factory(url: str) -> sessionmaker[Session]:
    """One migrated engine per URL per process."""
    engine = make_engine(url)
    _engines.append(engine)
    try:
        migrate(engine)
    except DBAPIError as exc:
        raise DatabaseUnavailableError(describe_connect_error(url, exc)) from None
    return sessionmaker(engine, expire_on_commit=False)


def dispose_engines_after_fork() -> None:
    """In a forked child: drop the parent's pooled connections without closing them."""
    for engine in _engines:
        engine.dispose(close=False)


def safe_url(url: str) -> str:
    """The URL with its password hidden, fit for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


def describe_connect_error(url: str, exc: BaseException) -> str:
    """One line saying which database failed, why, and what to do."""
    lines = [line.strip() for line in str(getattr(exc, "orig", exc)).splitlines() if line.strip()]
    reason = next((line for line in lines if "FATAL" in line), lines[0] if lines else repr(exc))
    reason = reason.rpartition("FATAL:")[2].strip()
    name = make_url(url).database
    if "does not exist" in reason and name:
        hint = f"create it (e.g. `createdb {name}`) or fix CLAMP_INDEX_DATABASE_URL"
    else:
        hint = "check that the server is running and CLAMP_INDEX_DATABASE_URL is right"
    return f"cannot use the database {safe_url(url)}: {reason}; {hint}"


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    with factory() as session, session.begin():
        yield session


def dialect_insert(session: Session, table: Any) -> Any:
    """INSERT that supports ON CONFLICT on both supported databases."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"unsupported database dialect {name!r}: use SQLite or PostgreSQL")


def require_existing(url: str) -> None:
    """Refuse a SQLite file that does not exist yet, instead of creating an empty one."""
    if not url.startswith("sqlite"):
        return
    db_path = Path(url.split("///", 1)[-1])
    if not db_path.exists():
        raise NoIndexError(
            f"no index in {db_path.parent}: nothing has been ingested there yet; run "
            "`clamp-index ingest PATH`, or point --data-dir (CLAMP_INDEX_DATA_DIR) at an index"
        )
