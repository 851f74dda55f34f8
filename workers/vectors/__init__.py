"""Vector stores: one interface, an embedded (qdrant-edge) and a server (qdrant-client) backend."""

from workers.vectors.base import (
    AliasRegistry,
    CollectionNotFoundError,
    Hit,
    SearchTuning,
    StoreLockedError,
    StoreUnavailableError,
    TextMatch,
    VectorStore,
    VectorStoreError,
)
from workers.vectors.edge import EdgeVectorStore
from workers.vectors.factory import open_vector_store
from workers.vectors.server import UNAVAILABLE_ERRORS, QdrantServerStore

__all__ = [
    "UNAVAILABLE_ERRORS",
    "AliasRegistry",
    "CollectionNotFoundError",
    "EdgeVectorStore",
    "Hit",
    "QdrantServerStore",
    "SearchTuning",
    "StoreLockedError",
    "StoreUnavailableError",
    "TextMatch",
    "VectorStore",
    "VectorStoreError",
    "open_vector_store",
]
