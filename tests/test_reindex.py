"""Blue/green reindex, rollback, retention and the model registry, in embedded mode."""

from __future__ import annotations

import json
import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from orchestrator import jobs
from orchestrator.reindex import list_collections, reindex, rollback
from orchestrator.search import SearchService
from schemas.collection import point_id
from schemas.db import CollectionState, Job, JobKind
from tests.conftest import run_cli, settings_from_env
from tests.support.random_checkpoint import write_random_checkpoint
from workers import blue_green, collection_rows
from workers.database import session_scope
from workers.runner import Runner
from workers.runtime import close_contexts, get_context

pytestmark = pytest.mark.slow

TUNES = 40


@pytest.fixture()
def corpus(wikimt_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    for path in sorted(wikimt_dir.glob("*.abc"))[:TUNES]:
        shutil.copy(path, root / path.name)
    return root


@pytest.fixture()
def second_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(
        tmp_path_factory.mktemp("models") / "second", seed=5, name="second"
    )


def cli_json(args: list[str], env: dict[str, str]) -> Any:
    result = run_cli([*args, "--json"], env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_reindex_swaps_rollback_restores_retention_prunes(
    corpus: Path, second_model: Path, embedded_env: dict[str, str]
) -> None:
    env = embedded_env
    assert cli_json(["ingest", str(corpus)], env)["indexed"] == TUNES
    first = cli_json(["collections"], env)
    assert [(c["active"], c["points"], c["state"]) for c in first] == [(True, TUNES, "ready")]
    before = cli_json(["search", "a jig in D"], env)

    registered = cli_json(["models", "register", str(second_model)], env)
    assert registered["status"] == "candidate"
    assert Path(registered["path"]).parent == Path(env["CLAMP_INDEX_DATA_DIR"]) / "models"

    result = cli_json(["reindex", "--model", "second"], env)
    assert result["status"] == "done" and result["phase"] == "done"
    assert result["check"]["points"] == result["check"]["live_pieces"] == TUNES
    assert result["check"]["probes"] == 16 and result["check"]["probe_misses"] == []
    assert result["previous"] == first[0]["name"]

    listed = {c["name"]: c for c in cli_json(["collections"], env)}
    assert (
        listed[result["collection"]]["active"] and listed[result["collection"]]["points"] == TUNES
    )
    assert not listed[first[0]["name"]]["active"]
    statuses = {m["name"]: m["status"] for m in cli_json(["models", "list"], env)}
    assert statuses == {"random-clamp": "retired", "second": "active"}
    # Queries now use the new model's space: other scores, same pieces available.
    after = cli_json(["search", "a jig in D"], env)
    assert [h["score"] for h in after] != [h["score"] for h in before]

    back = cli_json(["rollback"], env)
    assert back["active"] == first[0]["name"] and back["previous"] == result["collection"]
    assert cli_json(["search", "a jig in D"], env) == before
    statuses = {m["name"]: m["status"] for m in cli_json(["models", "list"], env)}
    assert statuses == {"random-clamp": "active", "second": "retired"}

    # Two more builds with collections_keep=2: only the active one and one more remain.
    again = cli_json(["reindex"], env)
    third = cli_json(["reindex", "--model", "second"], env)
    kept = cli_json(["collections"], env)
    live = [c["name"] for c in kept if c["state"] == "ready"]
    assert sorted(live) == sorted([again["collection"], third["collection"]])
    assert all(c["points"] is None for c in kept if c["state"] == "removed")
    retire = run_cli(["models", "retire", "second"], env)
    assert retire.returncode == 1 and "serving queries" in retire.stderr


def test_searches_during_a_reindex_never_fail_or_see_the_new_build(
    corpus: Path, second_model: Path, embedded_env: dict[str, str]
) -> None:
    settings = settings_from_env(embedded_env, encode_claim_pieces=4, encode_fill_wait_s=0)
    close_contexts()
    try:
        jobs.ingest(settings, [corpus])
        service = SearchService(get_context(settings))
        old = service.collection()
        stop = threading.Event()
        seen: list[tuple[datetime, str, int]] = []
        errors: list[BaseException] = []

        def search_forever() -> None:
            while not stop.is_set():
                try:
                    name = service.collection()
                    at = datetime.now(UTC)
                    hits = service.search_text("a slow air in a minor key", k=5).hits
                    seen.append((at, name, len(hits)))
                except BaseException as exc:
                    errors.append(exc)

        searcher = threading.Thread(target=search_forever)
        searcher.start()
        try:
            result = reindex(settings, str(second_model))
            # Keep searching a little after the swap: the new collection takes over.
            deadline = time.monotonic() + 30
            while (
                time.monotonic() < deadline
                and sum(name == result.collection for _, name, _ in list(seen)) < 20
            ):
                time.sleep(0.05)
        finally:
            stop.set()
            searcher.join()
        with session_scope(get_context(settings).sessions) as session:
            new = collection_rows.get(session, result.collection)
            assert new is not None and new.activated_at is not None
            swapped_at = new.activated_at.replace(tzinfo=UTC)
        print(
            f"searches during reindex: {len(seen)} answered, {len(errors)} errors, "
            f"{sum(n == 0 for _, _, n in seen)} empty, "
            f"{sum(name == result.collection for _, name, _ in seen)} from the new collection"
        )
        assert not errors, errors[:3]
        assert len(seen) >= 5
        assert all(n == 5 for _, _, n in seen)
        assert {name for _, name, _ in seen} == {old, result.collection}
        # The new collection answered only once it was complete and swapped in.
        assert all(at >= swapped_at for at, name, _ in seen if name == result.collection)
    finally:
        close_contexts()


def test_tunes_added_and_removed_during_a_reindex_are_right_after_the_swap(
    corpus: Path, second_model: Path, embedded_env: dict[str, str], wikimt_dir: Path
) -> None:
    settings = settings_from_env(embedded_env, encode_claim_pieces=8, encode_fill_wait_s=0)
    close_contexts()
    try:
        jobs.ingest(settings, [corpus])
        ctx = get_context(settings)
        ingests: list[int] = []

        def change_catalogue(_kind: str, _n: int) -> None:
            # Once, after the reindex's first batch: one tune arrives, one goes.
            if ingests:
                return
            extra = sorted(wikimt_dir.glob("*.abc"))[TUNES]
            shutil.copy(extra, corpus / extra.name)
            sorted(corpus.glob("*.abc"))[0].unlink()
            ingests.append(jobs.ingest(settings, [corpus]).job_id)

        result = _reindex_with_hook(settings, str(second_model), change_catalogue)
        assert ingests, "the catalogue change never ran"
        assert result.status == "done", result
        store = ctx.store
        assert store.resolve_alias(settings.collection_alias) == result.collection
        with session_scope(ctx.sessions) as session:
            live = collection_rows.live_piece_ids(session)
            assert collection_rows.missing_pieces(session, result.collection) == []
        assert len(live) == TUNES
        assert store.count(result.collection) == TUNES
        present = store.retrieve_vectors(result.collection, [point_id(p) for p in live])
        assert len(present) == TUNES
    finally:
        close_contexts()


def _reindex_with_hook(settings: Any, model: str, hook: Any) -> Any:
    """reindex() with a progress callback that changes the catalogue mid-build."""
    from orchestrator import reindex as reindex_module

    calls = {"n": 0}

    def on_progress(_counts: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            hook("encode", 0)

    return reindex_module.reindex(settings, model, on_progress=on_progress)


def test_a_build_that_fails_its_check_is_never_swapped_in(
    corpus: Path, second_model: Path, embedded_env: dict[str, str]
) -> None:
    settings = settings_from_env(embedded_env, encode_claim_pieces=10, encode_fill_wait_s=0)
    close_contexts()
    try:
        jobs.ingest(settings, [corpus])
        ctx = get_context(settings)
        old = ctx.store.resolve_alias(settings.collection_alias)
        from orchestrator import models
        from orchestrator.reindex import plan_reindex

        with session_scope(ctx.sessions) as session:
            target = models.resolve(session, settings, str(second_model))
            session.flush()
            job_id = plan_reindex(session, settings, target, create_in_store=True)
            new = collection_rows.live_names(session)
        new_name = next(n for n in new if n != old)

        def lose_points(_kind: str, _n: int) -> None:
            # The store loses points behind the database's back (a disk fault, a bad
            # restore) while the build runs: the database still lists them as written.
            lost = list(ctx.store.iter_ids(new_name))[:3]
            if ctx.store.count(new_name) <= 10:
                ctx.store.delete(new_name, lost)

        Runner(ctx, "test", on_progress=lose_points).drain("encode")
        assert blue_green.advance(ctx, job_id) == blue_green.FAILED
        assert ctx.store.resolve_alias(settings.collection_alias) == old
        with session_scope(ctx.sessions) as session:
            job = session.get(Job, job_id)
            assert job is not None and job.kind == JobKind.REINDEX and job.status == "failed"
            assert "37 points for 40 live pieces" in job.params["error"]
            row = collection_rows.get(session, new_name)
            assert row is not None and row.state == CollectionState.FAILED
        with pytest.raises(Exception, match="no earlier collection"):
            rollback(settings)
    finally:
        close_contexts()


@pytest.mark.parametrize("store", ["embedded", "qdrant-api"])
def test_reindex_progress_is_reported(
    corpus: Path, embedded_env: dict[str, str], store: str, tmp_path: Path
) -> None:
    # qdrant-api: qdrant-client's local mode, which speaks the server's API (aliases by
    # update_collection_aliases), as a Qdrant server deployment does.
    settings = settings_from_env(
        embedded_env,
        encode_claim_pieces=10,
        encode_fill_wait_s=0,
        qdrant_path=tmp_path / "qdrant" if store == "qdrant-api" else None,
    )
    close_contexts()
    try:
        jobs.ingest(settings, [corpus])
        updates: list[int] = []
        started = time.monotonic()
        result = reindex(settings, on_progress=lambda c: updates.append(c.pieces_pending))
        assert result.status == "done" and result.pieces == TUNES
        assert updates and updates[-1] == 0 and max(updates) > 0
        assert time.monotonic() - started < 120
        ctx = get_context(settings)
        assert ctx.store.resolve_alias(settings.collection_alias) == result.collection
        assert ctx.store.count(result.collection) == TUNES
        assert [c.active for c in list_collections(settings)] == [False, True]
    finally:
        close_contexts()
