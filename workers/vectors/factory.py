"""Pick the vector store the settings ask for: Qdrant server, local mode, or embedded."""

from __future__ import annotations

from schemas.settings import Settings
from workers.vectors.base import AliasRegistry, SearchTuning, VectorStore
from workers.vectors.edge import EdgeVectorStore
from workers.vectors.server import QdrantServerStore


def open_vector_store(settings: Settings, aliases: AliasRegistry) -> VectorStore:
    """Raises StoreLockedError when another process holds an on-disk store."""
    tuning = SearchTuning(hnsw_ef=settings.search_hnsw_ef, exact=settings.search_exact)
    if settings.qdrant_url:
        return QdrantServerStore.from_url(settings.qdrant_url, settings.qdrant_api_key, tuning)
    if settings.qdrant_path:
        return QdrantServerStore.from_local_path(settings.qdrant_path, tuning)
    # The engine has no aliases of its own: `aliases` keeps them (in the metadata database).
    return EdgeVectorStore(settings.vectors_dir, aliases, tuning)
