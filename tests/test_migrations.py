"""The Alembic migrations build exactly the tables the SQLAlchemy models declare."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from schemas.db import Base
from workers.database import session_factory


@pytest.mark.services
def test_migrations_match_models_on_postgres(postgres_url: str) -> None:
    engine = session_factory(postgres_url).kw["bind"]
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_migrations_create_every_table_on_sqlite(tmp_path: Path) -> None:
    from sqlalchemy import inspect

    engine = session_factory(f"sqlite:///{tmp_path / 'm.db'}").kw["bind"]
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
