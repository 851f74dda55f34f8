"""The embedded store's aliases: rows of schemas.db.VectorAlias, switched in one transaction."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from schemas.db import VectorAlias, utcnow
from workers.database import dialect_insert


class SqlAliasRegistry:
    """AliasRegistry on the metadata database, so the alias commits with the job state."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._session_factory = session_factory

    def get(self, alias: str) -> str | None:
        with self._session_factory() as session:
            return session.scalar(select(VectorAlias.collection).where(VectorAlias.alias == alias))

    def set(self, alias: str, collection: str) -> None:
        with self._session_factory.begin() as session:
            now = utcnow()
            # A native upsert, because two processes switching the alias at once must not
            # both try to INSERT and have one fail on the primary key.
            stmt = dialect_insert(session, VectorAlias.__table__).values(
                alias=alias, collection=collection, updated_at=now
            )
            session.execute(
                stmt.on_conflict_do_update(
                    index_elements=["alias"], set_={"collection": collection, "updated_at": now}
                )
            )
