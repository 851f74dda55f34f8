"""The vector-store interface both backends implement, its errors, and shared validation."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from schemas.collection import CollectionSpec
from workers.errors import UserError

RANGE_KEYS = frozenset({"gte", "lte", "gt", "lt"})

# Collection and alias names become directory names in the embedded store, so keep them
# to a portable, path-safe alphabet in both backends (and never starting with ".", which
# the embedded store reserves for its lock and temporary directories).
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class SearchTuning:
    """How hard a query looks: HNSW beam width, or brute force for exact top-k."""

    # Qdrant's own default beam is ef_construct (100); recall on 256-d music vectors is
    # measured in bench/recall.py.
    hnsw_ef: int | None = None
    exact: bool = False


@dataclass(frozen=True)
class Hit:
    point_id: str
    score: float
    payload: dict[str, Any]


class VectorStoreError(RuntimeError):
    """Anything the vector store refuses or fails to do."""


class StoreUnavailableError(VectorStoreError):
    """The store cannot be reached right now (server down, timeout): not the data's fault."""


class StoreLockedError(VectorStoreError, UserError):
    """Another process has the on-disk store open; only one opener is allowed."""


class CollectionNotFoundError(VectorStoreError):
    """The named collection (or alias) does not exist."""


@runtime_checkable
class VectorStore(Protocol):
    """Collections of cosine vectors with payloads, plus an alias naming the active one.

    Data operations (upsert, delete, query, count, iter_ids, retrieve_vectors,
    collection_meta, optimize) accept an alias wherever they accept a collection name.
    Point ids are UUID strings (see schemas.collection.point_id); ids come back canonical.
    """

    def create_collection(self, spec: CollectionSpec) -> None:
        """Create it, or do nothing if it exists with the same dim; VectorStoreError if not."""
        ...

    def collection_exists(self, name: str) -> bool:
        """True for a real collection only, not for an alias."""
        ...

    def collection_meta(self, name: str) -> dict[str, str]: ...

    def list_collections(self) -> list[str]: ...

    def delete_collection(self, name: str) -> None:
        """Delete it (no-op if missing); aliases pointing at it stop resolving."""
        ...

    def upsert(
        self,
        name: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        payloads: Sequence[dict[str, Any]],
    ) -> None: ...

    def delete(self, name: str, ids: Sequence[str]) -> None: ...

    def query(
        self,
        name: str,
        vector: np.ndarray,
        k: int,
        filters: Mapping[str, Any] | None = None,
    ) -> list[Hit]:
        """Top k by cosine similarity, best first.

        filters: field -> scalar (equality), field -> list (any of),
        field -> {"gte"/"lte"/"gt"/"lt": number} (range); all fields must match.
        """
        ...

    def count(self, name: str) -> int: ...

    def iter_ids(self, name: str, batch: int = 1024) -> Iterator[str]: ...

    def retrieve_vectors(self, name: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored vectors by id (unit-normalised: cosine stores normalise); missing ids absent."""
        ...

    def set_alias(self, alias: str, name: str) -> None:
        """Point alias at collection name in one atomic switch."""
        ...

    def resolve_alias(self, alias: str) -> str | None: ...

    def optimize(self, name: str) -> None:
        """Build pending indexes now (the embedded engine only does it when asked)."""
        ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class AliasRegistry(Protocol):
    """Where the embedded store keeps alias -> collection (the database, in practice)."""

    def get(self, alias: str) -> str | None: ...

    def set(self, alias: str, collection: str) -> None: ...


def check_name(name: str, what: str = "collection") -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise VectorStoreError(
            f"invalid {what} name {name!r}: use 1-128 of [A-Za-z0-9_.-], not starting with '.'"
        )
    return name


def check_ids(ids: Sequence[str]) -> list[str]:
    """Canonical UUID strings, so ids read back compare equal to ids written."""
    out: list[str] = []
    for pid in ids:
        try:
            out.append(str(uuid.UUID(str(pid))))
        except ValueError:
            raise VectorStoreError(
                f"point id {pid!r} is not a UUID string (use schemas.collection.point_id)"
            ) from None
    return out


def check_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    """A (n, dim) float32 array of finite, non-zero vectors (cosine of a zero vector is NaN)."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise VectorStoreError(f"expected vectors of shape (n, {dim}), got {np.shape(vectors)}")
    if not np.isfinite(arr).all():
        raise VectorStoreError("vectors contain NaN or infinity")
    if arr.shape[0] and not np.linalg.norm(arr, axis=1).all():
        raise VectorStoreError("vectors contain an all-zero row, which has no cosine direction")
    return arr


def check_query_vector(vector: np.ndarray, dim: int) -> list[float]:
    arr = check_vectors(vector, dim)
    if arr.shape[0] != 1:
        raise VectorStoreError(f"query takes one vector, got {arr.shape[0]}")
    return arr[0].tolist()


def check_batch(
    ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]
) -> None:
    n_vec = 1 if np.ndim(vectors) == 1 else len(vectors)
    if not len(ids) == n_vec == len(payloads):
        raise VectorStoreError(
            f"batch sizes differ: {len(ids)} ids, {n_vec} vectors, {len(payloads)} payloads"
        )
    if len(set(ids)) != len(ids):
        # Within one batch the engines keep one of the duplicates arbitrarily.
        raise VectorStoreError("duplicate point ids in one upsert batch")


@dataclass(frozen=True)
class TextMatch:
    """Filter value for a full-text-indexed field: every word of `text` must appear."""

    text: str


Condition = tuple[Literal["eq", "any", "range", "text"], str, Any]


def parse_filters(filters: Mapping[str, Any] | None) -> list[Condition]:
    """Normalise the filter mapping once, so both backends accept and reject the same input."""
    conditions: list[Condition] = []
    for field, value in (filters or {}).items():
        if not isinstance(field, str) or not field:
            raise VectorStoreError(f"filter field must be a non-empty string, got {field!r}")
        if isinstance(value, TextMatch):
            if not value.text.strip():
                raise VectorStoreError(f"text filter on {field!r} has no words")
            conditions.append(("text", field, value.text))
        elif isinstance(value, Mapping):
            unknown = set(value) - RANGE_KEYS
            if unknown or not value:
                raise VectorStoreError(
                    f"range filter on {field!r} takes gte/lte/gt/lt, got {sorted(map(str, value))}"
                )
            bounds = {k: _number(field, v) for k, v in value.items()}
            conditions.append(("range", field, bounds))
        elif isinstance(value, list | tuple | set | frozenset):
            values = list(value)
            if not values:
                raise VectorStoreError(f"any-of filter on {field!r} has no values")
            kinds = {_match_kind(field, v) for v in values}
            if len(kinds) > 1 or "bool" in kinds:
                raise VectorStoreError(
                    f"any-of filter on {field!r} takes all strings or all integers"
                )
            conditions.append(("any", field, values))
        elif isinstance(value, float) and not value.is_integer():
            # Qdrant matches keywords/integers/bools only; a float equality is a closed range.
            conditions.append(("range", field, {"gte": value, "lte": value}))
        else:
            if isinstance(value, float):
                value = int(value)
            _match_kind(field, value)
            conditions.append(("eq", field, value))
    return conditions


def _match_kind(field: str, value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "str"
    if isinstance(value, int):
        return "int"
    raise VectorStoreError(
        f"filter on {field!r}: match values must be str, int or bool, got {type(value).__name__}"
    )


def _number(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise VectorStoreError(f"range filter on {field!r} needs finite numbers, got {value!r}")
    return float(value)
