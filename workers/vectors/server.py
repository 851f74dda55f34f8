"""Vector store on a Qdrant server through qdrant-client (or its local mode, for tests)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from schemas.collection import CollectionSpec, PayloadType
from workers.vectors.base import (
    CollectionNotFoundError,
    Hit,
    SearchTuning,
    StoreLockedError,
    StoreUnavailableError,
    VectorStoreError,
    check_batch,
    check_ids,
    check_name,
    check_query_vector,
    check_vectors,
    parse_filters,
)

_SCHEMA: dict[PayloadType, models.PayloadSchemaType] = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "integer": models.PayloadSchemaType.INTEGER,
    "float": models.PayloadSchemaType.FLOAT,
    "text": models.PayloadSchemaType.TEXT,
}


class QdrantServerStore:
    """VectorStore on QdrantClient: real collections, real aliases, metadata on the collection.

    The spec's meta goes into the collection's `metadata` (Qdrant >= 1.16; local mode keeps
    it in its meta.json). Aliases are Qdrant aliases, switched by one
    update_collection_aliases call, which both the server and local mode apply atomically.
    """

    def __init__(self, client: QdrantClient, tuning: SearchTuning | None = None) -> None:
        self.client = client
        self.tuning = tuning or SearchTuning()
        self._dims: dict[str, int] = {}

    @classmethod
    def from_url(
        cls, url: str, api_key: str | None = None, tuning: SearchTuning | None = None
    ) -> QdrantServerStore:
        return cls(QdrantClient(url=url, api_key=api_key), tuning)

    @classmethod
    def from_local_path(
        cls, path: Path | str, tuning: SearchTuning | None = None
    ) -> QdrantServerStore:
        """Local mode: a prototype stand-in for a server, one opener per directory."""
        try:
            client = QdrantClient(path=str(path))
        except RuntimeError as exc:
            # Local mode flocks <path>/.lock and reports a holder only through this message.
            if "already accessed" not in str(exc):
                raise
            raise StoreLockedError(
                f"the Qdrant local-mode store {path} is already open in another process - "
                "most likely a running `clamp-index` ingest, the HTTP server, or a test. "
                "Stop that process, or use a Qdrant server (CLAMP_INDEX_QDRANT_URL) "
                "for concurrent access."
            ) from exc
        return cls(client, tuning)

    # -- collections ---------------------------------------------------------------------

    def create_collection(self, spec: CollectionSpec) -> None:
        name = check_name(spec.name)
        if spec.distance != "cosine":
            raise VectorStoreError(f"unsupported distance {spec.distance!r}")
        if spec.dim < 1:
            raise VectorStoreError(f"collection {name!r}: dim must be positive, got {spec.dim}")
        if not self.collection_exists(name):
            try:
                self.client.create_collection(
                    name,
                    vectors_config=models.VectorParams(
                        size=spec.dim, distance=models.Distance.COSINE
                    ),
                    metadata=dict(spec.meta),
                )
            except (ValueError, UnexpectedResponse) as exc:
                # Lost a creation race to another worker: fine if it made the same thing.
                if not self.collection_exists(name):
                    raise VectorStoreError(f"cannot create collection {name!r}: {exc}") from exc
        have = self._dim(name)
        if have != spec.dim:
            raise VectorStoreError(
                f"collection {name!r} exists with dim {have}, asked for {spec.dim}"
            )
        with warnings.catch_warnings():
            # Local mode warns that payload indexes do nothing there; a server builds them.
            warnings.filterwarnings("ignore", message="Payload indexes have no effect")
            for field_name, kind in spec.payload_indexes.items():
                self.client.create_payload_index(
                    name, field_name, field_schema=_SCHEMA[kind], wait=True
                )

    def collection_exists(self, name: str) -> bool:
        # Not client.collection_exists: that also answers True for an alias.
        return name in self.list_collections()

    def collection_meta(self, name: str) -> dict[str, str]:
        with _translated(name):
            info = self.client.get_collection(name)
        return {str(k): str(v) for k, v in (info.config.metadata or {}).items()}

    def list_collections(self) -> list[str]:
        return sorted(c.name for c in self.client.get_collections().collections)

    def delete_collection(self, name: str) -> None:
        check_name(name)
        self._dims.pop(name, None)
        if self.collection_exists(name):
            self.client.delete_collection(name)

    # -- points --------------------------------------------------------------------------

    def upsert(
        self,
        name: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        payloads: Sequence[dict[str, Any]],
    ) -> None:
        check_batch(ids, vectors, payloads)
        pids = check_ids(ids)
        arr = check_vectors(vectors, self._dim(name))
        if not pids:
            return
        with _translated(name):
            self.client.upsert(
                name,
                points=models.Batch(
                    ids=list(pids), vectors=arr.tolist(), payloads=[dict(p) for p in payloads]
                ),
                wait=True,
            )

    def delete(self, name: str, ids: Sequence[str]) -> None:
        pids = check_ids(ids)
        if not pids:
            return
        with _translated(name):
            self.client.delete(
                name, points_selector=models.PointIdsList(points=list(pids)), wait=True
            )

    def query(
        self,
        name: str,
        vector: np.ndarray,
        k: int,
        filters: Mapping[str, Any] | None = None,
    ) -> list[Hit]:
        vec = check_query_vector(vector, self._dim(name))
        query_filter = _qdrant_filter(filters)
        if k < 1:
            return []
        with _translated(name):
            result = self.client.query_points(
                name,
                query=vec,
                limit=k,
                query_filter=query_filter,
                with_payload=True,
                with_vectors=False,
                search_params=models.SearchParams(
                    hnsw_ef=self.tuning.hnsw_ef, exact=self.tuning.exact
                ),
            )
        return [
            Hit(point_id=str(p.id), score=float(p.score), payload=dict(p.payload or {}))
            for p in result.points
        ]

    def count(self, name: str) -> int:
        with _translated(name):
            return int(self.client.count(name, exact=True).count)

    def iter_ids(self, name: str, batch: int = 1024) -> Iterator[str]:
        offset: Any = None
        while True:
            with _translated(name):
                records, offset = self.client.scroll(
                    name, limit=batch, offset=offset, with_payload=False, with_vectors=False
                )
            for record in records:
                yield str(record.id)
            if offset is None or not records:
                return

    def retrieve_vectors(self, name: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        pids = check_ids(ids)
        if not pids:
            return {}
        with _translated(name):
            records = self.client.retrieve(name, pids, with_payload=False, with_vectors=True)
        return {str(r.id): np.asarray(r.vector, dtype=np.float32) for r in records}

    # -- aliases -------------------------------------------------------------------------

    def set_alias(self, alias: str, name: str) -> None:
        check_name(alias, "alias")
        if not self.collection_exists(name):
            raise CollectionNotFoundError(f"cannot point alias {alias!r} at missing {name!r}")
        if self.collection_exists(alias):
            raise VectorStoreError(f"alias {alias!r} would shadow the collection of that name")
        operations: list[models.AliasOperations] = []
        # Delete only an alias that exists: not every server version accepts deleting a
        # missing one. Delete + create in one request is Qdrant's documented atomic switch.
        if self.resolve_alias(alias) is not None:
            operations.append(
                models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
            )
        operations.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=name, alias_name=alias)
            )
        )
        self.client.update_collection_aliases(change_aliases_operations=operations)

    def resolve_alias(self, alias: str) -> str | None:
        for description in self.client.get_aliases().aliases:
            if description.alias_name == alias:
                return description.collection_name
        return None

    # -- lifecycle -----------------------------------------------------------------------

    def optimize(self, name: str) -> None:
        """No-op: the server optimizes in the background and local mode has no index."""
        if not self.collection_exists(name) and self.resolve_alias(name) is None:
            raise CollectionNotFoundError(f"no collection or alias {name!r}")

    def flush(self) -> None:
        """No-op: every write above waits for the server (local mode writes through)."""

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> QdrantServerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------

    def _dim(self, name: str) -> int:
        # Cached per name: a vector of the wrong size is caught here, before a round trip.
        # Not cached for aliases, whose target (and so dim) may switch under us.
        dim = self._dims.get(name)
        if dim is None:
            with _translated(name):
                params = self.client.get_collection(name).config.params.vectors
            if not isinstance(params, models.VectorParams):
                raise VectorStoreError(f"collection {name!r} does not have one unnamed vector")
            dim = int(params.size)
            if self.collection_exists(name):
                self._dims[name] = dim
        return dim


@contextlib.contextmanager
def _translated(name: str) -> Iterator[None]:
    """Map "no such collection" from the server (404) and local mode (ValueError) to ours."""
    try:
        yield
    except ResponseHandlingException as exc:  # no answer at all: connection refused, timeout
        raise StoreUnavailableError(f"the Qdrant server did not answer: {exc}") from exc
    except UnexpectedResponse as exc:
        if exc.status_code == 404:
            raise CollectionNotFoundError(f"no collection or alias {name!r}") from exc
        raise VectorStoreError(str(exc)) from exc
    except ValueError as exc:
        if "not found" in str(exc):
            raise CollectionNotFoundError(f"no collection or alias {name!r}") from exc
        raise VectorStoreError(str(exc)) from exc


def _qdrant_filter(filters: Mapping[str, Any] | None) -> models.Filter | None:
    must: list[models.Condition] = []
    for kind, field_name, value in parse_filters(filters):
        if kind == "eq":
            must.append(models.FieldCondition(key=field_name, match=models.MatchValue(value=value)))
        elif kind == "any":
            must.append(models.FieldCondition(key=field_name, match=models.MatchAny(any=value)))
        elif kind == "text":
            must.append(models.FieldCondition(key=field_name, match=models.MatchText(text=value)))
        else:
            must.append(models.FieldCondition(key=field_name, range=models.Range(**value)))
    return models.Filter(must=must) if must else None


# What a worker treats as "the store is down" (hand the work back and retry later) rather
# than as a problem with the items it holds: raised by any call, wrapped in _translated or not.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    StoreUnavailableError,
    ResponseHandlingException,
    ConnectionError,
    TimeoutError,
)
