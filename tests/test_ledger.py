"""The work ledger on both databases: claims, leases, tokens, bisecting and poison items."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session, sessionmaker

from schemas.db import Job, WorkItem, WorkKind, WorkState, utcnow
from workers import job_state, ledger, sinks
from workers.database import session_factory, session_scope

PIECES = [f"piece-{i:03d}" for i in range(40)]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    yield session_factory(url)
    session_factory.cache_clear()


def new_job(sessions: sessionmaker[Session], keys: list[str] = PIECES) -> int:
    with session_scope(sessions) as session:
        job_id = job_state.create_job(session, "test", {}).id
        ledger.enqueue(session, job_id, [ledger.NewWork(WorkKind.ENCODE, k) for k in keys])
    return job_id


def claim(sessions: sessionmaker[Session], limit: int, lease_s: float = 60) -> ledger.Claim | None:
    with session_scope(sessions) as session:
        return ledger.claim(session, "encode", "test-holder", limit, lease_s)


def states(sessions: sessionmaker[Session]) -> dict[str, int]:
    with session_scope(sessions) as session:
        rows = session.execute(select(WorkItem.state)).scalars().all()
    return {s: rows.count(s) for s in set(rows)}


def test_enqueue_is_idempotent_per_job(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions)
    with session_scope(sessions) as session:
        ledger.enqueue(session, job_id, [ledger.NewWork(WorkKind.ENCODE, k) for k in PIECES])
        assert ledger.open_counts(session, job_id) == {WorkKind.ENCODE: len(PIECES)}


def test_claims_never_overlap_and_complete_needs_the_token(
    sessions: sessionmaker[Session],
) -> None:
    new_job(sessions)
    first, second = claim(sessions, 25), claim(sessions, 25)
    assert first is not None and second is not None
    assert len(first.items) == 25 and len(second.items) == 15
    assert not {i.id for i in first.items} & {i.id for i in second.items}
    assert claim(sessions, 25) is None
    with pytest.raises(ledger.LeaseLostError), session_scope(sessions) as session:
        ledger.complete(session, second.token, [i.id for i in first.items])
    with session_scope(sessions) as session:
        ledger.complete(session, first.token, [i.id for i in first.items])
        assert ledger.renew(session, second.token, 60)
    assert states(sessions) == {WorkState.DONE: 25, WorkState.LEASED: 15}


def test_concurrent_claimers_share_the_work_exactly(sessions: sessionmaker[Session]) -> None:
    keys = [f"p{i}" for i in range(400)]
    new_job(sessions, keys)
    taken: list[list[str]] = [[] for _ in range(4)]

    def claimer(n: int) -> None:
        while (got := claim(sessions, 7)) is not None:
            taken[n] += [i.item_key for i in got.items]
            with session_scope(sessions) as session:
                ledger.complete(session, got.token, [i.id for i in got.items])

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [k for part in taken for k in part]
    assert sorted(everything) == sorted(keys)  # nothing lost, nothing twice
    assert states(sessions) == {WorkState.DONE: 400}


def expire_all(sessions: sessionmaker[Session]) -> list[ledger.LostItem]:
    with session_scope(sessions) as session:
        session.execute(
            update(WorkItem)
            .where(WorkItem.state == WorkState.LEASED)
            .values(lease_until=utcnow() - timedelta(seconds=1))
        )
    with session_scope(sessions) as session:
        return ledger.take_back(session, max_solo_losses=2, error="died", expired_before=utcnow())


def test_a_dead_holders_claim_returns_and_its_late_completion_is_refused(
    sessions: sessionmaker[Session],
) -> None:
    new_job(sessions)
    dead = claim(sessions, 40)
    assert dead is not None
    lost = expire_all(sessions)
    assert len(lost) == 40 and not any(item.failed for item in lost)
    retaken = claim(sessions, 40)
    # Returned items come back in halves of the claim they were lost in.
    assert retaken is not None and len(retaken.items) == 20
    with pytest.raises(ledger.LeaseLostError), session_scope(sessions) as session:
        ledger.complete(session, dead.token, [i.id for i in dead.items])


def test_bisecting_isolates_a_poison_item_and_fails_only_it(
    sessions: sessionmaker[Session],
) -> None:
    job_id = new_job(sessions)
    poison = "piece-017"
    deaths = 0
    while (got := claim(sessions, 40)) is not None:
        if any(i.item_key == poison for i in got.items):
            deaths += 1
            expire_all(sessions)  # the worker died holding it
            continue
        with session_scope(sessions) as session:
            ledger.complete(session, got.token, [i.id for i in got.items])
    with session_scope(sessions) as session:
        failed = session.scalars(
            select(WorkItem.item_key).where(WorkItem.state == WorkState.FAILED)
        ).all()
        assert failed == [poison]
        assert ledger.open_counts(session, job_id) == {}
    assert states(sessions) == {WorkState.DONE: 39, WorkState.FAILED: 1}
    # 40 -> 20 -> 10 -> 5 -> 2 -> 1, then alone twice (max_solo_losses=2).
    assert deaths == 7


def test_release_hands_work_back_without_counting_an_attempt(
    sessions: sessionmaker[Session],
) -> None:
    new_job(sessions)
    got = claim(sessions, 40)
    assert got is not None
    with session_scope(sessions) as session:
        assert ledger.release(session, got.token) == 40
    again = claim(sessions, 100)
    assert again is not None and len(again.items) == 40
    assert {i.attempts for i in again.items} == {1}


def test_wake_ups_go_to_queues_with_work_and_no_live_lease(
    sessions: sessionmaker[Session],
) -> None:
    job_id = new_job(sessions)
    with session_scope(sessions) as session:
        assert ledger.queues_to_wake(session, 60) == [("encode", job_id)]
    assert claim(sessions, 10) is not None
    with session_scope(sessions) as session:
        assert ledger.queues_to_wake(session, 60) == []  # someone is on it
    time.sleep(0.05)
    with session_scope(sessions) as session:
        # Work left waiting longer than the interval gets more hands.
        assert ledger.queues_to_wake(session, 0.01) == [("encode", job_id)]


def test_a_resumed_job_takes_over_dead_jobs_work(sessions: sessionmaker[Session]) -> None:
    old = new_job(sessions)
    assert claim(sessions, 10) is not None  # held by a process that then died
    with session_scope(sessions) as session:
        resumed = job_state.create_job(session, "test", {}).id
    with session_scope(sessions) as session:
        moved = job_state.take_over_dead_jobs(session, resumed, max_solo_losses=2)
    assert moved == 40
    with session_scope(sessions) as session:
        assert ledger.open_counts(session, resumed) == {WorkKind.ENCODE: 40}
        assert ledger.open_counts(session, old) == {}
        old_job = session.get(Job, old)
        assert old_job is not None and old_job.status == "interrupted"


def parsed_pieces(
    sessions: sessionmaker[Session], kind: str, tunes: int
) -> tuple[int, list[str], list[Any]]:
    """A job whose one file was parsed into `tunes` pieces: (job id, piece ids, pieces)."""
    from schemas.db import SourceFile
    from workers.abc import ParsedPiece, parse_abc_text

    parsed = [p for p in parse_abc_text(TWO_TUNES) if isinstance(p, ParsedPiece)][:tunes]
    with session_scope(sessions) as session:
        job_id = job_state.create_job(session, kind, {}).id
        seen = sinks.FileSeen(uri="/catalog/tunes.abc", size=1, mtime=0.0, sha256="x")
        [recorded] = sinks.record_files(session, job_id, [seen])
        source = session.get(SourceFile, recorded.file_id)
        ids, _ = sinks.upsert_pieces(
            session, job_id=job_id, files=[sinks.ParsedFile(source, parsed)]
        )
        loaded = [piece for piece, _ in sinks.load_pieces(session, ids)]
        session.expunge_all()
    return job_id, ids, loaded


def test_encode_results_never_overwrite_newer_piece_state(
    sessions: sessionmaker[Session],
) -> None:
    """A piece re-parsed with other music, or deleted, while it was being encoded."""
    from schemas.db import Piece, PieceStatus

    _, ids, loaded = parsed_pieces(sessions, "test", tunes=2)
    with session_scope(sessions) as session:  # meanwhile: one changed, one deleted
        session.execute(update(Piece).where(Piece.id == ids[0]).values(content_sha256="new"))
        session.execute(update(Piece).where(Piece.id == ids[1]).values(status=PieceStatus.DELETED))
    with session_scope(sessions) as session:
        marked, deleted = sinks.mark_indexed(
            session, pieces=loaded, collection="c", model_version="v"
        )
    assert (marked, deleted) == ([], [ids[1]])
    with session_scope(sessions) as session:
        statuses = dict(session.execute(select(Piece.id, Piece.status)).all())
    assert statuses == {ids[0]: PieceStatus.PARSED, ids[1]: PieceStatus.DELETED}
    with session_scope(sessions) as session:
        assert sinks.still_deleted(session, ids) == [ids[1]]


def test_a_poll_never_closes_a_job_from_counts_taken_across_its_last_commit(
    sessions: sessionmaker[Session],
) -> None:
    """GET /jobs recounts a job while its last batch commits: it sees all of it or none.

    The batch is made to commit right after the poll's first statement; counts mixing a
    before and an after once closed a job as done with its piece uncounted.
    """
    job_id, ids, loaded = parsed_pieces(sessions, "ingest", tunes=1)
    with session_scope(sessions) as session:
        ledger.enqueue(session, job_id, [ledger.NewWork(WorkKind.ENCODE, ids[0])])
    last = claim(sessions, 10)
    assert last is not None

    def finish_last_batch() -> None:  # what the encode stage commits for its batch
        with session_scope(sessions) as session:
            sinks.mark_indexed(session, pieces=loaded, collection="c", model_version="v")
            ledger.complete(session, last.token, [i.id for i in last.items])
            job_state.tally_job(session, job_id, encoded=1)

    finisher = threading.Thread(target=finish_last_batch)
    poller = threading.get_ident()

    def commit_the_batch_now(*_: object) -> None:
        if threading.get_ident() == poller and finisher.ident is None:
            finisher.start()
            finisher.join(1.0)  # a poll holding the job's lock makes it wait instead

    engine = sessions.kw["bind"]
    event.listen(engine, "after_cursor_execute", commit_the_batch_now)
    try:
        with session_scope(sessions) as session:
            counts = job_state.refresh_job(session, job_id)
    finally:
        event.remove(engine, "after_cursor_execute", commit_the_batch_now)
    finisher.join()
    seen_counts = (counts.status, counts.indexed, counts.encoded, counts.pieces_pending)
    assert seen_counts in {("running", 0, 0, 1), ("done", 1, 1, 0)}, seen_counts
    with session_scope(sessions) as session:
        after = job_state.refresh_job(session, job_id)
    assert (after.status, after.indexed, after.encoded) == ("done", 1, 1)


TWO_TUNES = (
    "X:1\nT:A\nM:4/4\nL:1/8\nK:G\n|:GABc dedB:|\n\nX:2\nT:B\nM:6/8\nL:1/8\nK:D\n|:dfa afd:|\n"
)
