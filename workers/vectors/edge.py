"""Embedded vector store: one qdrant-edge shard directory per collection, aliases in the DB."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from schemas.collection import CollectionSpec, PayloadType
from workers.vectors.base import (
    AliasRegistry,
    CollectionNotFoundError,
    Hit,
    SearchTuning,
    StoreLockedError,
    VectorStoreError,
    check_batch,
    check_ids,
    check_name,
    check_query_vector,
    check_vectors,
    parse_filters,
)

SPEC_FILE = "collection.json"
SHARD_DIR = "shard"
LOCK_FILE = ".lock"
# Leftovers of an interrupted create/delete start with these; swept at open under the lock.
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
# One update operation per this many points: bounds the size of a single WAL record.
_UPSERT_CHUNK = 1024

_SCHEMA: dict[PayloadType, qe.PayloadSchemaType] = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "integer": qe.PayloadSchemaType.Integer,
    "float": qe.PayloadSchemaType.Float,
    "text": qe.PayloadSchemaType.Text,
}


class EdgeVectorStore:
    """VectorStore on qdrant_edge.EdgeShard: root/<name>/{collection.json, shard/}.

    The engine has no collections or aliases, so a collection is a directory and the
    alias is a row in the metadata database. Only one EdgeVectorStore may open a root at
    a time (flock on root/.lock), because the shards' WALs cannot be shared.
    """

    def __init__(
        self, root: Path, aliases: AliasRegistry, tuning: SearchTuning | None = None
    ) -> None:
        self.root = Path(root)
        self._aliases = aliases
        self.tuning = tuning or SearchTuning()
        self._shards: dict[str, qe.EdgeShard] = {}
        self._specs: dict[str, dict[str, Any]] = {}
        self._mutex = threading.RLock()
        self._closed = False
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_file = _acquire_lock(self.root / LOCK_FILE)
        for leftover in self.root.iterdir():
            if leftover.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
                shutil.rmtree(leftover, ignore_errors=True)

    # -- collections ---------------------------------------------------------------------

    def create_collection(self, spec: CollectionSpec) -> None:
        name = check_name(spec.name)
        if spec.distance != "cosine":
            raise VectorStoreError(f"unsupported distance {spec.distance!r}")
        if spec.dim < 1:
            raise VectorStoreError(f"collection {name!r}: dim must be positive, got {spec.dim}")
        with self._mutex:
            self._check_open()
            if self.collection_exists(name):
                have = int(self._spec(name)["dim"])
                if have != spec.dim:
                    raise VectorStoreError(
                        f"collection {name!r} exists with dim {have}, asked for {spec.dim}"
                    )
                return
            if self._aliases.get(name) is not None:
                raise VectorStoreError(f"{name!r} is already an alias; pick another name")
            # Build in a hidden directory and rename, so a crash never leaves a collection
            # that looks complete but has no indexes or no spec file.
            tmp = self.root / f"{_TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
            shard = qe.EdgeShard.create(str(tmp / SHARD_DIR), _edge_config(spec.dim))
            try:
                for field_name, kind in spec.payload_indexes.items():
                    shard.update(qe.UpdateOperation.create_field_index(field_name, _SCHEMA[kind]))
                shard.flush()
            finally:
                shard.close()
            record = {
                "name": name,
                "dim": spec.dim,
                "distance": spec.distance,
                "payload_indexes": dict(spec.payload_indexes),
                "meta": dict(spec.meta),
            }
            _write_json(tmp / SPEC_FILE, record)
            os.replace(tmp, self.root / name)
            _fsync_dir(self.root)

    def collection_exists(self, name: str) -> bool:
        return _is_collection_name(name) and (self.root / name / SPEC_FILE).is_file()

    def collection_meta(self, name: str) -> dict[str, str]:
        return dict(self._spec(self._resolve(name))["meta"])

    def list_collections(self) -> list[str]:
        return sorted(
            p.name
            for p in self.root.iterdir()
            if _is_collection_name(p.name) and (p / SPEC_FILE).is_file()
        )

    def delete_collection(self, name: str) -> None:
        check_name(name)
        with self._mutex:
            self._check_open()
            shard = self._shards.pop(name, None)
            self._specs.pop(name, None)
            if shard is not None:
                shard.close()
            if not self.collection_exists(name):
                return
            # Rename first: the collection vanishes atomically even if the rmtree is cut short.
            trash = self.root / f"{_TRASH_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
            os.replace(self.root / name, trash)
            _fsync_dir(self.root)
            shutil.rmtree(trash, ignore_errors=True)

    # -- points --------------------------------------------------------------------------

    def upsert(
        self,
        name: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        payloads: Sequence[dict[str, Any]],
    ) -> None:
        name = self._resolve(name)
        check_batch(ids, vectors, payloads)
        pids = check_ids(ids)
        arr = check_vectors(vectors, int(self._spec(name)["dim"]))
        shard = self._shard(name)
        rows = arr.tolist()
        for start in range(0, len(pids), _UPSERT_CHUNK):
            end = start + _UPSERT_CHUNK
            points = [
                qe.Point(pid, row, dict(payload))
                for pid, row, payload in zip(
                    pids[start:end], rows[start:end], payloads[start:end], strict=True
                )
            ]
            shard.update(qe.UpdateOperation.upsert_points(points))

    def delete(self, name: str, ids: Sequence[str]) -> None:
        pids = check_ids(ids)
        if pids:
            self._shard(self._resolve(name)).update(qe.UpdateOperation.delete_points(pids))

    def query(
        self,
        name: str,
        vector: np.ndarray,
        k: int,
        filters: Mapping[str, Any] | None = None,
    ) -> list[Hit]:
        name = self._resolve(name)
        vec = check_query_vector(vector, int(self._spec(name)["dim"]))
        if k < 1:
            return []
        request = qe.QueryRequest(
            limit=k,
            query=qe.Query.Nearest(vec),
            with_payload=True,
            with_vector=False,
            filter=_edge_filter(filters),
            params=qe.SearchParams(hnsw_ef=self.tuning.hnsw_ef, exact=self.tuning.exact),
        )
        return [
            Hit(point_id=str(p.id), score=float(p.score), payload=dict(p.payload or {}))
            for p in self._shard(name).query(request)
        ]

    def count(self, name: str) -> int:
        return int(self._shard(self._resolve(name)).count(qe.CountRequest(exact=True)))

    def iter_ids(self, name: str, batch: int = 1024) -> Iterator[str]:
        shard = self._shard(self._resolve(name))
        offset: Any = None
        while True:
            records, offset = shard.scroll(
                qe.ScrollRequest(offset=offset, limit=batch, with_payload=False, with_vector=False)
            )
            for record in records:
                yield str(record.id)
            if offset is None or not records:
                return

    def retrieve_vectors(self, name: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        pids = check_ids(ids)
        if not pids:
            return {}
        records = self._shard(self._resolve(name)).retrieve(
            pids, with_payload=False, with_vector=True
        )
        return {str(r.id): np.asarray(r.vector, dtype=np.float32) for r in records}

    # -- aliases -------------------------------------------------------------------------

    def set_alias(self, alias: str, name: str) -> None:
        check_name(alias, "alias")
        if not self.collection_exists(name):
            raise CollectionNotFoundError(f"cannot point alias {alias!r} at missing {name!r}")
        if self.collection_exists(alias):
            raise VectorStoreError(f"alias {alias!r} would shadow the collection of that name")
        self._aliases.set(alias, name)

    def resolve_alias(self, alias: str) -> str | None:
        target = self._aliases.get(alias)
        # A deleted target reads as no alias, as Qdrant drops aliases with their collection.
        if target is None or not self.collection_exists(target):
            return None
        return target

    # -- lifecycle -----------------------------------------------------------------------

    def optimize(self, name: str) -> None:
        """Build the HNSW index; the embedded engine has no background optimizer thread."""
        self._shard(self._resolve(name)).optimize()

    def flush(self) -> None:
        with self._mutex:
            for shard in self._shards.values():
                shard.flush()

    def close(self) -> None:
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            shards, self._shards = self._shards, {}
            try:
                for shard in shards.values():
                    shard.flush()
                    shard.close()
            finally:
                # Closing the descriptor drops the flock, letting the next opener in.
                self._lock_file.close()

    def __enter__(self) -> EdgeVectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise VectorStoreError(f"vector store {self.root} is closed")

    def _resolve(self, name: str) -> str:
        if self.collection_exists(name):
            return name
        target = self._aliases.get(name) if _is_collection_name(name) else None
        if target is not None and self.collection_exists(target):
            return target
        raise CollectionNotFoundError(f"no collection or alias {name!r} in {self.root}")

    def _spec(self, name: str) -> dict[str, Any]:
        spec = self._specs.get(name)
        if spec is None:
            try:
                spec = json.loads((self.root / name / SPEC_FILE).read_text())
            except FileNotFoundError:
                raise CollectionNotFoundError(f"no collection {name!r} in {self.root}") from None
            self._specs[name] = spec
        return spec

    def _shard(self, name: str) -> qe.EdgeShard:
        with self._mutex:
            self._check_open()
            shard = self._shards.get(name)
            if shard is None:
                shard = qe.EdgeShard.load(str(self.root / name / SHARD_DIR))
                self._shards[name] = shard
            return shard


def _edge_config(dim: int) -> qe.EdgeConfig:
    # HNSW and optimizer settings stay at the engine defaults; WAL on for crash safety.
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
        wal_enabled=True,
    )


def _edge_filter(filters: Mapping[str, Any] | None) -> qe.Filter | None:
    must: list[Any] = []
    for kind, field_name, value in parse_filters(filters):
        if kind == "eq":
            must.append(qe.FieldCondition(field_name, match=qe.MatchValue(value)))
        elif kind == "any":
            must.append(qe.FieldCondition(field_name, match=qe.MatchAny(list(value))))
        elif kind == "text":
            must.append(qe.FieldCondition(field_name, match=qe.MatchText(value)))
        else:
            must.append(qe.FieldCondition(field_name, range=qe.RangeFloat(**value)))
    return qe.Filter(must=must) if must else None


def _is_collection_name(name: str) -> bool:
    try:
        check_name(name)
    except VectorStoreError:
        return False
    return True


def _acquire_lock(path: Path) -> Any:
    handle = open(path, "a+")  # noqa: SIM115 - held open for the store's lifetime
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise StoreLockedError(
            f"the embedded vector store {path.parent} is already open in another process "
            f"(pid {holder}), most likely a running `clamp-index ingest` or `clamp-index "
            "worker`; wait for it to finish or stop it, or use a Qdrant server "
            "(CLAMP_INDEX_QDRANT_URL) so that many processes can share the index"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
