"""The HTTP API over an embedded index: queries, filters, pages, uploads, auth and jobs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from orchestrator import jobs
from orchestrator.api import create_app
from schemas.settings import CLASSIFY_TEMPLATES, Settings
from tests.conftest import settings_from_env
from tests.test_pipeline import JIG, REEL, WALTZ
from workers.runtime import close_contexts

TOKEN = "test-token-123"
HORNPIPE = """X:4
T:The Harvest Home
C:Traditional, arr. Seamus Ennis
O:Ireland, County Cork
R:Hornpipe
M:C
L:1/8
K:D major
|:AF|DAFA DAFA|defe dcBA|eAfA gAfA|e2d2 dcBA:|
"""
SLIP = """X:5
T:The Butterfly
R:slip-jig
M:9/8
L:1/8
K:Em
|:B2E G2E F3|B2E G2E FED|B2E G2E F3|B2d d2B AFD:|
"""


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("catalogue")
    (root / "irish").mkdir()
    (root / "irish" / "session.abc").write_text(JIG + "\n" + REEL, encoding="utf-8")
    (root / "irish" / "harvest.abc").write_text(HORNPIPE, encoding="utf-8")
    (root / "other").mkdir()
    (root / "other" / "valse.abc").write_text(WALTZ, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def settings(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, catalogue: Path
) -> Settings:
    data = tmp_path_factory.mktemp("state")
    env = {"CLAMP_INDEX_DATA_DIR": str(data), "CLAMP_INDEX_MODEL_DIR": str(tiny_model_dir)}
    extra = tmp_path_factory.mktemp("extra")
    return settings_from_env(
        env,
        catalogue_roots=[catalogue, extra],
        api_max_upload_bytes=20_000,
        torch_threads=2,
    )


@pytest.fixture(scope="module")
def client(settings: Settings, catalogue: Path) -> Iterator[TestClient]:
    close_contexts()
    jobs.ingest(settings, [catalogue])
    with TestClient(create_app(settings, token=TOKEN)) as test_client:
        yield test_client
    close_contexts()


def ok(response: Any) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def refused(response: Any, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and isinstance(body["error"], str)
    for word in words:
        assert word in body["error"], body["error"]
    return str(body["error"])


def titles(result: dict[str, Any]) -> list[str]:
    return [h["title"] for h in result["hits"]]


def test_text_search_pages_and_reports_latency(client: TestClient) -> None:
    whole = ok(client.get("/search", params={"q": "a lively jig", "k": 5}))
    assert len(whole["hits"]) == 4 and whole["k"] == 5 and whole["offset"] == 0  # 4 indexed
    assert whole["latency_ms"] > 0 and whole["model"] and whole["collection"]
    scores = [h["score"] for h in whole["hits"]]
    assert scores == sorted(scores, reverse=True)
    first = ok(client.get("/search", params={"q": "a lively jig", "k": 2}))
    second = ok(client.get("/search", params={"q": "a lively jig", "k": 2, "offset": 2}))
    assert [h["piece_id"] for h in first["hits"] + second["hits"]] == [
        h["piece_id"] for h in whole["hits"][:4]
    ]
    assert [h["rank"] for h in second["hits"]] == [3, 4]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"key": "g"}, ["The Kesh"]),
        ({"key": "E Dorian"}, ["Drowsy Maggie"]),
        ({"key": "D"}, ["The Harvest Home", "Valse de Café"]),
        ({"key": "em"}, []),
        ({"meter": "4/4"}, ["Drowsy Maggie", "The Harvest Home"]),  # M:C counts as 4/4
        ({"meter": " 6 / 8 "}, ["The Kesh"]),
        ({"rhythm": "HORNPIPE"}, ["The Harvest Home"]),
        ({"composer": "seamus ENNIS"}, ["The Harvest Home"]),
        ({"origin": "cork"}, ["The Harvest Home"]),
        ({"format": "ABC", "rhythm": "waltz"}, ["Valse de Café"]),
        ({"format": "midi"}, []),
    ],
)
def test_filters_compare_as_a_person_would(
    client: TestClient, params: dict[str, str], expected: list[str]
) -> None:
    result = ok(client.get("/search", params={"q": "a tune", "k": 10, **params}))
    assert sorted(titles(result)) == sorted(expected)


def test_source_prefix_filter(client: TestClient, catalogue: Path) -> None:
    irish = ok(client.get("/search", params={"q": "tune", "source": f"{catalogue}/irish/"}))
    assert sorted(titles(irish)) == ["Drowsy Maggie", "The Harvest Home", "The Kesh"]
    one_file = ok(
        client.get("/search", params={"q": "tune", "source": str(catalogue / "other/valse.abc")})
    )
    assert titles(one_file) == ["Valse de Café"]
    # A prefix of a folder's *name* is not that folder.
    assert ok(client.get("/search", params={"q": "t", "source": f"{catalogue}/iri"}))["hits"] == []


def test_unknown_filter_is_an_error_not_an_empty_result(client: TestClient) -> None:
    refused(client.get("/search", params={"q": "jig", "tempo": "fast"}), 400, "tempo", "key")
    refused(client.get("/search", params={"q": "jig", "key": "  "}), 400, "empty")
    refused(client.get("/search", params={"q": "jig", "k": 0}), 422, "k")
    refused(client.get("/search", params={"q": ""}), 422)


def test_similar_by_id_leaves_the_piece_out(client: TestClient) -> None:
    kesh = ok(client.get("/search", params={"q": "x", "rhythm": "jig"}))["hits"][0]
    result = ok(client.post("/similar", data={"piece_id": kesh["piece_id"], "k": 10}))
    ids = [h["piece_id"] for h in result["hits"]]
    assert kesh["piece_id"] not in ids and len(ids) == 3
    filtered = ok(client.post("/similar", data={"piece_id": kesh["piece_id"], "meter": "C"}))
    assert sorted(titles(filtered)) == ["Drowsy Maggie", "The Harvest Home"]
    refused(client.post("/similar", data={"piece_id": "nope"}), 404, "nope")


def test_similar_by_upload(client: TestClient) -> None:
    result = ok(
        client.post("/similar", files={"file": ("q.abc", SLIP + "\n" + REEL)}, data={"tune": 1})
    )
    assert result["hits"][0]["title"] == "Drowsy Maggie"
    assert result["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    xml = (Path(__file__).parent / "data" / "convert" / "two_bars.musicxml").read_bytes()
    converted = ok(client.post("/similar", files={"file": ("q.musicxml", xml)}))
    assert len(converted["hits"]) == 4
    refused(client.post("/similar", files={"file": ("junk.abc", b"\x00\xff" * 100)}), 400)
    refused(client.post("/similar", files={"file": ("empty.abc", b"")}), 400, "empty")
    refused(client.post("/similar", files={"file": ("big.abc", b"X:1\n" * 6000)}), 413, "limit")
    refused(client.post("/similar", data={"k": 3}), 400, "piece_id or file")


def test_classify_upload_piece_and_index(client: TestClient) -> None:
    result = ok(
        client.post(
            "/classify",
            data={"labels": "jig, reel ,waltz", "templates": "a {label}|an irish {label}"},
            files={"file": ("q.abc", JIG + "\n" + WALTZ)},
        )
    )
    assert result["labels"] == ["jig", "reel", "waltz"]
    assert result["templates"] == ["a {label}", "an irish {label}"]
    assert [r["title"] for r in result["results"]] == ["The Kesh", "Valse de Café"]
    for row in result["results"]:
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
    kesh = ok(client.get("/search", params={"q": "x", "rhythm": "jig"}))["hits"][0]
    one = ok(client.post("/classify", data={"labels": "jig,reel", "piece_id": kesh["piece_id"]}))
    assert [r["piece_id"] for r in one["results"]] == [kesh["piece_id"]]
    # Without templates the configured default ensemble is used, with the labels' own
    # prompts (CLAMP_INDEX_CLASSIFY_LABEL_PROMPTS) for the labels that have some.
    assert one["templates"] == list(CLASSIFY_TEMPLATES) and len(CLASSIFY_TEMPLATES) > 1
    assert one["prompts"] == {
        "jig": ["a jig in 6/8"],
        "reel": ["a reel with even running notes", "a reel, smooth, even notes"],
    }
    assert result["prompts"]["reel"] == ["a reel", "an irish reel"]  # named templates alone
    mixed = ok(
        client.post("/classify", data={"labels": "Slip-Jig,air", "piece_id": kesh["piece_id"]})
    )
    assert mixed["prompts"] == {
        "Slip-Jig": ["a Slip-Jig in 9/8"],
        "air": [t.replace("{label}", "air") for t in CLASSIFY_TEMPLATES],
    }
    every = ok(client.post("/classify", data={"labels": "jig,reel", "indexed": "true"}))
    assert len(every["results"]) == 4
    refused(client.post("/classify", data={"labels": "jig", "indexed": "true"}), 400, "two")
    bad = {"labels": "jig,reel", "templates": "no placeholder", "indexed": "true"}
    refused(client.post("/classify", data=bad), 400, "{label}")


def test_piece_detail_has_the_abc(client: TestClient, catalogue: Path) -> None:
    hit = ok(client.get("/search", params={"q": "x", "rhythm": "hornpipe"}))["hits"][0]
    piece = ok(client.get(f"/pieces/{hit['piece_id']}"))
    assert piece["title"] == "The Harvest Home" and piece["meter"] == "C"
    assert "T:The Harvest Home" in piece["abc"] and piece["format"] == "abc"
    assert piece["source"] == str(catalogue / "irish" / "harvest.abc")
    refused(client.get("/pieces/unknown"), 404, "unknown")


def test_health_and_ready(client: TestClient) -> None:
    assert ok(client.get("/health")) == {"status": "ok"}
    ready = ok(client.get("/ready"))
    assert ready["ready"] is True
    assert ready["checks"] == {"database": "ok", "vector_store": "ok", "model": "ok"}


def test_writes_need_the_token(client: TestClient, catalogue: Path) -> None:
    body = {"paths": [str(catalogue)]}
    refused(client.post("/ingest", json=body), 401, "Bearer")
    wrong = {"Authorization": "Bearer nope"}
    refused(client.post("/ingest", json=body, headers=wrong), 401)
    refused(client.post("/ingest/files", files={"files": ("a.abc", JIG)}), 401)


def test_ingest_paths_stay_under_the_catalogue_roots(
    client: TestClient, catalogue: Path, tmp_path: Path
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    refused(client.post("/ingest", json={"paths": ["/etc"]}, headers=auth), 403, "catalogue root")
    sneaky = f"{catalogue}/irish/../../"
    refused(client.post("/ingest", json={"paths": [sneaky]}, headers=auth), 403)
    outside = tmp_path / "outside"
    outside.mkdir()
    (catalogue / "link").symlink_to(outside)
    try:
        refused(
            client.post("/ingest", json={"paths": [str(catalogue / "link")]}, headers=auth), 403
        )
    finally:
        (catalogue / "link").unlink()
    refused(client.post("/ingest", json={"paths": ["relative/path"]}, headers=auth), 400)
    refused(client.post("/ingest", json={"paths": []}, headers=auth), 422)


def wait_for_job(client: TestClient, job_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = ok(client.get(f"/jobs/{job_id}"))
        if job["status"] in ("done", "failed", "interrupted"):
            return job  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end")


def test_ingest_jobs_run_in_the_server(client: TestClient, settings: Settings) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    extra = settings.catalogue_roots[1]
    (extra / "slip.abc").write_text(SLIP, encoding="utf-8")
    (extra / "broken.abc").write_bytes(b"\x00\x01\x02 not music")
    accepted = client.post("/ingest", json={"paths": [str(extra)]}, headers=auth)
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(client, accepted.json()["job_id"])
    assert job["status"] == "done" and job["indexed"] == 1 and job["failed"] == 1
    found = ok(client.get("/search", params={"q": "x", "rhythm": "Slip Jig"}))
    assert titles(found) == ["The Butterfly"]
    failures = ok(client.get("/failures", params={"job_id": job["job_id"]}))
    assert [Path(f["uri"]).name for f in failures] == ["broken.abc"]

    files = [("files", ("upload one.abc", JIG.replace("The Kesh", "Uploaded Kesh")))]
    uploaded = client.post("/ingest/files", files=files, headers=auth)
    assert uploaded.status_code == 202, uploaded.text
    job = wait_for_job(client, uploaded.json()["job_id"])
    assert job["status"] == "done" and job["indexed"] == 1, repr(job)
    assert "Uploaded Kesh" in titles(ok(client.get("/search", params={"q": "x", "key": "G"})))
    refused(client.get("/jobs/99999"), 404, "99999")


def test_collections_from_before_filter_fields_ask_for_a_reindex(
    embedded_env: dict[str, str], tmp_path: Path
) -> None:
    import json

    from orchestrator.reindex import reindex
    from orchestrator.search import SearchService
    from schemas.filters import FILTER_VERSION_META
    from workers.errors import UserError
    from workers.runtime import get_context

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "tunes.abc").write_text(JIG + "\n" + WALTZ, encoding="utf-8")
    settings = settings_from_env(embedded_env)
    close_contexts()
    try:
        jobs.ingest(settings, [corpus])
        old = get_context(settings).active_collection()
        close_contexts()
        # What a collection written by an earlier release looks like: no version in its meta.
        spec_file = settings.vectors_dir / old / "collection.json"
        spec = json.loads(spec_file.read_text())
        del spec["meta"][FILTER_VERSION_META]
        spec_file.write_text(json.dumps(spec))

        service = SearchService(get_context(settings))
        assert len(service.search_text("a tune").hits) == 2  # unfiltered queries still work
        with pytest.raises(UserError, match="clamp-index reindex"):
            service.search_text("a tune", filters={"key": "G"})
        reindex(settings)
        service = SearchService(get_context(settings))
        assert [h.title for h in service.search_text("x", filters={"key": "G"}).hits] == [
            "The Kesh"
        ]
    finally:
        close_contexts()


@pytest.mark.services
def test_distributed_ingest_is_planned_for_the_workers(
    embedded_env: dict[str, str], postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    """With a broker the server runs nothing itself: the job waits in the ledger, woken."""
    import redis

    from workers.database import session_factory

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "tunes.abc").write_text(JIG + "\n" + REEL, encoding="utf-8")
    settings = settings_from_env(
        embedded_env,
        database_url=postgres_url,
        broker_url=redis_url,
        catalogue_roots=[corpus],
    )
    close_contexts()
    session_factory.cache_clear()
    broker = redis.Redis.from_url(redis_url)  # the fixture empties it before and after
    try:
        with TestClient(create_app(settings, token=TOKEN)) as client:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            accepted = client.post("/ingest", json={"paths": [str(corpus)]}, headers=auth)
            assert accepted.status_code == 202, accepted.text
            job = ok(client.get(f"/jobs/{accepted.json()['job_id']}"))
            assert job["status"] == "running" and job["files"] == 1 and job["files_pending"] == 1
            assert broker.llen("parse") == 1  # the wake-up a parse worker would take
            assert ok(client.get("/ready"))["ready"] is True
    finally:
        close_contexts()
        session_factory.cache_clear()
