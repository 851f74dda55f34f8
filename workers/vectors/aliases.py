"""The embedded store's aliases: rows of schemas.db.VectorAlias, switched in one transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from schemas.db import VectorAlias, utcnow


class SqlAliasRegistry:
    """AliasRegistry on the metadata database, so the alias commits with the job state."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._session_factory = session_factory

    def get(self, alias: str) -> str | None:
        with self._session_factory() as session:
            return session.scalar(select(VectorAlias.collection).where(VectorAlias.alias == alias))

    def set(self, alias: str, collection: str) -> None:
        with self._session_factory.begin() as session:
            dialect = session.get_bind().dialect.name
            values = {"alias": alias, "collection": collection, "updated_at": utcnow()}
            update = {"collection": collection, "updated_at": values["updated_at"]}
            stmt: Any
            # A native upsert, because two processes switching the alias at once must not
            # both try to INSERT and have one fail on the primary key.
            if dialect == "postgresql":
                stmt = postgresql.insert(VectorAlias).values(**values)
                stmt = stmt.on_conflict_do_update(index_elements=["alias"], set_=update)
                session.execute(stmt)
            elif dialect == "sqlite":
                stmt = sqlite.insert(VectorAlias).values(**values)
                stmt = stmt.on_conflict_do_update(index_elements=["alias"], set_=update)
                session.execute(stmt)
            else:
                session.merge(VectorAlias(**values))
