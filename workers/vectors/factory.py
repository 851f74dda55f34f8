"""Pick the vector store the settings ask for: Qdrant server, local mode, or embedded."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from schemas.settings import Settings
from workers.vectors.aliases import SqlAliasRegistry
from workers.vectors.base import SearchTuning, VectorStore
from workers.vectors.edge import EdgeVectorStore
from workers.vectors.server import QdrantServerStore


def open_vector_store(settings: Settings, session_factory: sessionmaker[Session]) -> VectorStore:
    """Raises StoreLockedError when another process holds an on-disk store."""
    tuning = SearchTuning(hnsw_ef=settings.search_hnsw_ef, exact=settings.search_exact)
    if settings.qdrant_url:
        return QdrantServerStore.from_url(settings.qdrant_url, settings.qdrant_api_key, tuning)
    if settings.qdrant_path:
        return QdrantServerStore.from_local_path(settings.qdrant_path, tuning)
    return EdgeVectorStore(settings.vectors_dir, SqlAliasRegistry(session_factory), tuning)
