"""One behavioural suite for both vector stores: embedded (qdrant-edge) and qdrant-client local."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from schemas.collection import CollectionSpec, collection_name, point_id
from schemas.db import Base
from schemas.filters import FILTER_FIELDS
from workers.aliases import SqlAliasRegistry
from workers.vectors import (
    CollectionNotFoundError,
    EdgeVectorStore,
    QdrantServerStore,
    SearchTuning,
    StoreLockedError,
    TextMatch,
    VectorStore,
    VectorStoreError,
)

DIM = 16
N = 60
REPO = Path(__file__).resolve().parent.parent

Opener = Callable[[], VectorStore]


def _points(n: int = N, seed: int = 0) -> tuple[list[str], np.ndarray, list[dict]]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    ids = [point_id(f"piece-{i}") for i in range(n)]
    payloads = [
        {
            "piece_id": f"piece-{i}",
            "source": f"src{i % 3}",
            "key": "G" if i % 2 else "D",
            "index_in_file": i,
        }
        for i in range(n)
    ]
    return ids, vectors, payloads


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@pytest.fixture(params=["edge", "server-local"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """A function opening the same on-disk store each call; all opened stores closed after."""
    opened: list[VectorStore] = []
    if request.param == "edge":
        engine = create_engine(f"sqlite:///{tmp_path / 'meta.db'}")
        Base.metadata.create_all(engine)
        registry = SqlAliasRegistry(sessionmaker(engine))

        def open_store() -> VectorStore:
            store = EdgeVectorStore(tmp_path / "vectors", registry)
            opened.append(store)
            return store
    else:
        engine = None

        def open_store() -> VectorStore:
            store = QdrantServerStore.from_local_path(tmp_path / "qdrant")
            opened.append(store)
            return store

    yield open_store
    for store in opened:
        store.close()
    if engine is not None:
        engine.dispose()


@pytest.fixture
def store(opener: Opener) -> VectorStore:
    return opener()


@pytest.fixture
def filled(store: VectorStore) -> tuple[VectorStore, list[str], np.ndarray, list[dict]]:
    store.create_collection(CollectionSpec("c1", DIM, meta={"model": "clamp3", "version": "1"}))
    ids, vectors, payloads = _points()
    store.upsert("c1", ids, vectors, payloads)
    return store, ids, vectors, payloads


def test_create_is_idempotent_and_checks_dim(store: VectorStore) -> None:
    assert not store.collection_exists("c1")
    store.create_collection(CollectionSpec("c1", DIM))
    store.create_collection(CollectionSpec("c1", DIM))
    assert store.collection_exists("c1")
    assert store.list_collections() == ["c1"]
    with pytest.raises(VectorStoreError, match="dim"):
        store.create_collection(CollectionSpec("c1", DIM + 1))


def test_meta_round_trip(store: VectorStore) -> None:
    meta = {"model": "clamp3-saas", "version": "2024-10", "precision": "fp32"}
    store.create_collection(CollectionSpec("c1", DIM, meta=meta))
    assert store.collection_meta("c1") == meta


def test_upsert_count_and_reupsert_does_not_duplicate(filled) -> None:
    store, ids, vectors, payloads = filled
    assert store.count("c1") == N
    store.upsert("c1", ids[:10], vectors[:10] * 2, payloads[:10])
    assert store.count("c1") == N


def test_query_finds_own_point_first_with_payload(filled) -> None:
    store, ids, vectors, payloads = filled
    for i in (0, 17, N - 1):
        hits = store.query("c1", vectors[i], k=5)
        assert len(hits) == 5
        assert hits[0].point_id == ids[i]
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert hits[0].payload == payloads[i]
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_reupsert_overwrites_vector_and_payload(filled) -> None:
    store, ids, vectors, payloads = filled
    store.upsert("c1", [ids[0]], vectors[1:2], [{**payloads[0], "source": "moved"}])
    hit = store.query("c1", vectors[1], k=2, filters={"source": "moved"})
    assert [h.point_id for h in hit] == [ids[0]]
    assert hit[0].score == pytest.approx(1.0, abs=1e-4)


def test_filters(filled) -> None:
    store, _, vectors, _ = filled
    q = vectors[0]
    eq = store.query("c1", q, k=N, filters={"source": "src1"})
    assert len(eq) == N // 3
    assert {h.payload["source"] for h in eq} == {"src1"}
    both = store.query("c1", q, k=N, filters={"source": "src1", "key": "G"})
    assert {(h.payload["source"], h.payload["key"]) for h in both} == {("src1", "G")}
    assert len(both) == len([i for i in range(N) if i % 3 == 1 and i % 2])
    anyof = store.query("c1", q, k=N, filters={"source": ["src0", "src2"]})
    assert len(anyof) == 2 * N // 3
    assert {h.payload["source"] for h in anyof} == {"src0", "src2"}
    int_eq = store.query("c1", q, k=N, filters={"index_in_file": 7})
    assert [h.payload["index_in_file"] for h in int_eq] == [7]
    rng = store.query("c1", q, k=N, filters={"index_in_file": {"gte": 10, "lt": 20}})
    assert sorted(h.payload["index_in_file"] for h in rng) == list(range(10, 20))
    assert store.query("c1", q, k=5, filters={"source": "nowhere"}) == []
    with pytest.raises(VectorStoreError):
        store.query("c1", q, k=5, filters={"index_in_file": {"between": 3}})


def test_delete_points(filled) -> None:
    store, ids, vectors, _ = filled
    store.delete("c1", ids[:5])
    assert store.count("c1") == N - 5
    assert ids[0] not in {h.point_id for h in store.query("c1", vectors[0], k=N)}
    store.delete("c1", ids[:5])  # deleting again is harmless
    assert store.count("c1") == N - 5


def test_iter_ids_covers_all(filled) -> None:
    store, ids, _, _ = filled
    seen = list(store.iter_ids("c1", batch=7))
    assert len(seen) == len(set(seen)) == N
    assert set(seen) == set(ids)


def test_retrieve_vectors(filled) -> None:
    store, ids, vectors, _ = filled
    missing = point_id("never-written")
    got = store.retrieve_vectors("c1", [ids[3], ids[4], missing])
    assert set(got) == {ids[3], ids[4]}
    # Cosine collections store unit vectors: compare directions.
    np.testing.assert_allclose(got[ids[3]], _unit(vectors[3]), atol=1e-5)
    np.testing.assert_allclose(got[ids[4]], _unit(vectors[4]), atol=1e-5)


def test_bad_vectors_and_ids_rejected(filled) -> None:
    store, ids, vectors, payloads = filled
    with pytest.raises(VectorStoreError, match="shape"):
        store.upsert("c1", ids[:1], np.ones((1, DIM + 1), np.float32), payloads[:1])
    bad = vectors[:1].copy()
    bad[0, 0] = np.nan
    with pytest.raises(VectorStoreError, match="NaN"):
        store.upsert("c1", ids[:1], bad, payloads[:1])
    with pytest.raises(VectorStoreError, match="UUID"):
        store.upsert("c1", ["piece-0"], vectors[:1], payloads[:1])
    with pytest.raises(VectorStoreError, match="batch sizes"):
        store.upsert("c1", ids[:2], vectors[:1], payloads[:1])
    with pytest.raises(VectorStoreError, match="shape"):
        store.query("c1", np.ones(DIM - 1, np.float32), k=3)


def test_missing_collection(store: VectorStore) -> None:
    ids, vectors, payloads = _points(2)
    with pytest.raises(CollectionNotFoundError):
        store.upsert("nope", ids, vectors, payloads)
    with pytest.raises(CollectionNotFoundError):
        store.query("nope", vectors[0], k=1)
    with pytest.raises(CollectionNotFoundError):
        store.count("nope")
    with pytest.raises(CollectionNotFoundError):
        store.set_alias("live", "nope")
    store.delete_collection("nope")  # no-op


def test_alias_set_switch_resolve(store: VectorStore) -> None:
    ids, vectors, payloads = _points()
    for name in ("v1", "v2"):
        store.create_collection(CollectionSpec(name, DIM))
    store.upsert("v1", ids[:10], vectors[:10], payloads[:10])
    store.upsert("v2", ids, vectors, payloads)
    assert store.resolve_alias("live") is None
    store.set_alias("live", "v1")
    assert store.resolve_alias("live") == "v1"
    assert store.count("live") == 10  # data operations go through the alias
    store.set_alias("live", "v2")
    assert store.resolve_alias("live") == "v2"
    assert store.count("live") == N
    assert store.query("live", vectors[30], k=1)[0].point_id == ids[30]
    assert not store.collection_exists("live")
    assert store.list_collections() == ["v1", "v2"]
    with pytest.raises(VectorStoreError):
        store.set_alias("v1", "v2")  # an alias may not shadow a collection


def test_delete_collection(filled) -> None:
    store, _, _, _ = filled
    store.set_alias("live", "c1")
    store.delete_collection("c1")
    assert not store.collection_exists("c1")
    assert store.list_collections() == []
    assert store.resolve_alias("live") is None
    with pytest.raises(CollectionNotFoundError):
        store.count("c1")
    store.create_collection(CollectionSpec("c1", DIM + 2))  # the name is free again
    assert store.count("c1") == 0


def test_persistence_across_reopen(opener: Opener) -> None:
    store = opener()
    store.create_collection(CollectionSpec("c1", DIM, meta={"model": "m"}))
    ids, vectors, payloads = _points()
    store.upsert("c1", ids, vectors, payloads)
    store.delete("c1", ids[:2])
    store.set_alias("live", "c1")
    store.flush()
    store.close()

    again = opener()
    assert again.list_collections() == ["c1"]
    assert again.collection_meta("c1") == {"model": "m"}
    assert again.count("c1") == N - 2
    assert again.resolve_alias("live") == "c1"
    hit = again.query("live", vectors[5], k=1, filters={"source": payloads[5]["source"]})
    assert hit[0].point_id == ids[5]
    assert hit[0].payload == payloads[5]


def test_optimize_keeps_results(filled) -> None:
    store, ids, vectors, _ = filled
    store.optimize("c1")
    assert store.query("c1", vectors[9], k=1)[0].point_id == ids[9]


def test_second_opener_in_process_is_refused(opener: Opener) -> None:
    first = opener()
    first.create_collection(CollectionSpec("c1", DIM))
    with pytest.raises(StoreLockedError, match="another process"):
        opener()
    first.close()
    assert opener().collection_exists("c1")  # closing releases the lock


_CHILD = """
import sys
from pathlib import Path
from workers.vectors import EdgeVectorStore, QdrantServerStore, StoreLockedError

class NoAliases:
    def get(self, alias):
        return None

    def set(self, alias, collection):
        raise AssertionError

kind, path = sys.argv[1], Path(sys.argv[2])
try:
    if kind == "edge":
        EdgeVectorStore(path, NoAliases())
    else:
        QdrantServerStore.from_local_path(path)
except StoreLockedError as exc:
    print("LOCKED", exc)
    sys.exit(0)
print("OPENED")
sys.exit(1)
"""


@pytest.mark.parametrize("kind", ["edge", "server-local"])
def test_second_opener_in_subprocess_is_refused(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "store"
    if kind == "edge":
        holder: VectorStore = EdgeVectorStore(path, _DictAliases())
    else:
        holder = QdrantServerStore.from_local_path(path)
    try:
        child = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(_CHILD), kind, str(path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        holder.close()
    assert child.returncode == 0, child.stdout + child.stderr
    assert "LOCKED" in child.stdout
    assert str(path) in child.stdout
    if kind == "edge":
        import os

        assert f"pid {os.getpid()}" in child.stdout


class _DictAliases:
    def __init__(self) -> None:
        self.rows: dict[str, str] = {}

    def get(self, alias: str) -> str | None:
        return self.rows.get(alias)

    def set(self, alias: str, collection: str) -> None:
        self.rows[alias] = collection


def test_sql_alias_registry_upserts(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'meta.db'}")
    Base.metadata.create_all(engine)
    registry = SqlAliasRegistry(sessionmaker(engine))
    assert registry.get("live") is None
    registry.set("live", "a")
    registry.set("live", "b")
    registry.set("other", "a")
    assert registry.get("live") == "b"
    assert registry.get("other") == "a"
    engine.dispose()


def test_search_tuning_reaches_the_hnsw_index(tmp_path: Path) -> None:
    """Over an HNSW-indexed collection a narrow beam misses neighbours; exact never does."""
    engine = create_engine(f"sqlite:///{tmp_path / 'meta.db'}")
    Base.metadata.create_all(engine)
    registry = SqlAliasRegistry(sessionmaker(engine))
    dim, n = 1024, 3000  # 12 MB of vectors: over the engine's 10 MB full-scan threshold
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    ids = [point_id(f"p{i}") for i in range(n)]
    with EdgeVectorStore(tmp_path / "v", registry) as store:
        store.create_collection(CollectionSpec("c", dim))
        store.upsert("c", ids, vectors, [{"i": i} for i in range(n)])
        store.optimize("c")
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.standard_normal((20, dim)).astype(np.float32)

    def recall(tuning: SearchTuning) -> float:
        with EdgeVectorStore(tmp_path / "v", registry, tuning) as store:
            found = 0
            for q in queries:
                truth = {ids[i] for i in np.argsort(-(unit @ _unit(q)))[:10]}
                found += len(truth & {h.point_id for h in store.query("c", q, 10)})
        return found / (10 * len(queries))

    assert recall(SearchTuning(exact=True)) == 1.0
    assert recall(SearchTuning(hnsw_ef=10)) < recall(SearchTuning(hnsw_ef=2000))
    engine.dispose()


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("clamp-index-minilm-small", "0.1.0+734a6ea82a03"),
        ("CLaMP S/512", "v1 (2023)"),
        ("m", ""),
        ("..", "1..2"),
    ],
)
def test_collection_names_are_store_safe_and_distinct(name: str, version: str) -> None:
    from workers.vectors.base import check_name

    made = collection_name("clamp-index", name, version)
    assert check_name(made) == made
    assert made != collection_name("clamp-index", name, version + "1")


def test_text_and_array_filters(store: VectorStore) -> None:
    """What the query service's filters rely on: word match and membership in a list field."""
    store.create_collection(CollectionSpec("c1", DIM))
    ids, vectors, _ = _points(3)
    payloads = [
        {
            "piece_id": "a",
            "composer_text": "francis o'neill",
            "source_prefixes": ["/m/a.abc", "/m"],
        },
        {"piece_id": "b", "composer_text": "seamus ennis", "source_prefixes": ["/x/b.abc", "/x"]},
        {"piece_id": "c", "source_prefixes": ["/m/c.abc", "/m"]},
    ]
    store.upsert("c1", ids, vectors, payloads)

    def found(filters: dict) -> list[str]:
        return sorted(h.payload["piece_id"] for h in store.query("c1", vectors[0], 10, filters))

    assert found({"composer_text": TextMatch("ennis")}) == ["b"]
    assert found({"composer_text": TextMatch("seamus ennis")}) == ["b"]
    assert found({"composer_text": TextMatch("ennis francis")}) == []  # every word must appear
    assert found({"source_prefixes": "/m"}) == ["a", "c"]
    assert found({"source_prefixes": "/m/a.abc", "composer_text": TextMatch("o'neill")}) == ["a"]
    with pytest.raises(VectorStoreError, match="no words"):
        store.query("c1", vectors[0], 10, {"composer_text": TextMatch("  ")})


def test_filter_fields_get_payload_indexes(opener: Opener, tmp_path: Path) -> None:
    spec = CollectionSpec("c1", DIM)
    for field in FILTER_FIELDS.values():
        assert spec.payload_indexes[field.payload_field] == field.payload_type
    store = opener()
    store.create_collection(spec)
    if isinstance(store, EdgeVectorStore):  # local-mode qdrant-client keeps no indexes
        recorded = json.loads((tmp_path / "vectors" / "c1" / "collection.json").read_text())
        assert recorded["payload_indexes"] == spec.payload_indexes
