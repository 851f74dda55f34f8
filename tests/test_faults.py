"""Fault tests: kill, restart and cut off the real things, then check nothing was lost.

Real Redis, Postgres and `clamp-index worker` subprocesses; every service a test stops is
started again, also when the test fails. Each test prints its figures as one JSON line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import CLI, REPO, run_cli, wikimt_entries
from tests.faults import (
    counts,
    ensure_postgres,
    ensure_redis,
    outcome,
    report,
    restart_redis,
    start_ingest,
    stop_postgres,
    wait_until,
    workers,
)

pytestmark = pytest.mark.slow

LEASE_S = 10
# The distributed faults strike once 64-128 pieces are in: 400 tunes keep them mid-job, at
# ~40% of the whole of WikiMT's time (the suite's budget). SIGINT resumes run over all of it.
FAULT_TUNES = 400


@pytest.fixture()
def distributed_env(
    embedded_env: dict[str, str], postgres_url: str, redis_url: str
) -> dict[str, str]:
    """Distributed mode on the shipped model (slow enough to be caught mid-job)."""
    env = {k: v for k, v in embedded_env.items() if k != "CLAMP_INDEX_MODEL_DIR"}
    env.update(
        CLAMP_INDEX_DATABASE_URL=postgres_url,
        CLAMP_INDEX_BROKER_URL=redis_url,
        CLAMP_INDEX_LEASE_S=str(LEASE_S),
        CLAMP_INDEX_RECONCILE_INTERVAL_S="2",
        CLAMP_INDEX_ENCODE_CLAIM_PIECES="64",
    )
    return env


@pytest.fixture()
def services_restored() -> Iterator[None]:
    try:
        yield
    finally:
        ensure_redis()
        ensure_postgres()


@pytest.fixture(scope="module")
def fault_corpus(wikimt_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_corpus(wikimt_dir, tmp_path_factory.mktemp("faults") / "c", FAULT_TUNES)


def settle(env: dict[str, str], job_id: int, timeout_s: float) -> float:
    url = env["CLAMP_INDEX_DATABASE_URL"]
    return wait_until(lambda: counts(url, job_id).finished, timeout_s, f"job {job_id} to finish")


@pytest.mark.services
def test_sigkill_of_the_encode_worker_mid_batch(
    distributed_env: dict[str, str], fault_corpus: Path, tmp_path: Path
) -> None:
    n = FAULT_TUNES
    url = distributed_env["CLAMP_INDEX_DATABASE_URL"]
    with workers(distributed_env, tmp_path) as [first]:
        job_id = start_ingest(distributed_env, fault_corpus)
        wait_until(lambda: counts(url, job_id).indexed >= 128, 300, "128 pieces indexed")
        first.kill()
        killed_at = time.monotonic()
        indexed_at_kill = counts(url, job_id).indexed
    with workers(distributed_env, tmp_path):
        settle(distributed_env, job_id, LEASE_S + 120)
        recovery_s = time.monotonic() - killed_at
    final = counts(url, job_id)
    result = outcome(distributed_env, url)
    report(
        "sigkill_encode_worker",
        indexed_at_kill=indexed_at_kill,
        recovery_s=round(recovery_s, 1),
        lease_s=LEASE_S,
        lost=n - final.indexed,
        duplicate_points=result.points - result.indexed,
        **result.as_dict(),
    )
    assert final.status == "done" and final.failed == 0
    assert recovery_s <= LEASE_S + 60
    assert result == type(result)(pieces=n, indexed=n, points=n)


def survives_mid_job(
    name: str, env: dict[str, str], corpus: Path, tmp_path: Path, disrupt: Callable[[], None]
) -> None:
    """Disrupt a service once 64 pieces are in; the job must still end with nothing lost."""
    n = FAULT_TUNES
    url = env["CLAMP_INDEX_DATABASE_URL"]
    with workers(env, tmp_path) as [worker]:
        job_id = start_ingest(env, corpus)
        wait_until(lambda: counts(url, job_id).indexed >= 64, 300, "64 pieces indexed")
        disrupt()
        back_at = time.monotonic()
        settle(env, job_id, 300)
        assert worker.alive(), worker.log()
    final = counts(url, job_id)
    result = outcome(env, url)
    report(
        name,
        done_after_disruption_s=round(time.monotonic() - back_at, 1),
        lost=n - final.indexed,
        **result.as_dict(),
    )
    assert final.status == "done" and final.failed == 0
    assert result == type(result)(pieces=n, indexed=n, points=n)


@pytest.mark.services
def test_redis_restarted_mid_job(
    distributed_env: dict[str, str], fault_corpus: Path, tmp_path: Path, services_restored: None
) -> None:
    # Redis keeps nothing on disk here: every queued wake-up is gone.
    survives_mid_job("redis_restarted", distributed_env, fault_corpus, tmp_path, restart_redis)


@pytest.mark.services
def test_postgres_unreachable_for_20_seconds(
    distributed_env: dict[str, str], fault_corpus: Path, tmp_path: Path, services_restored: None
) -> None:
    def outage() -> None:
        stop_postgres()
        time.sleep(20)
        ensure_postgres()

    env = {**distributed_env, "CLAMP_INDEX_LEASE_S": "60"}  # longer than the outage
    survives_mid_job("postgres_down_20s", env, fault_corpus, tmp_path, outage)


@pytest.mark.services
def test_same_folder_twice_at_once_and_a_second_worker(
    distributed_env: dict[str, str], fault_corpus: Path, tmp_path: Path
) -> None:
    n = FAULT_TUNES
    url = distributed_env["CLAMP_INDEX_DATABASE_URL"]
    ingest = [str(CLI), "ingest", str(fault_corpus), "--json"]
    with workers(distributed_env, tmp_path, "parse,encode") as [_first]:
        both = [
            subprocess.Popen(
                ingest, env=distributed_env, cwd=REPO, stdout=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=300)[0] for p in both]
        assert [p.returncode for p in both] == [0, 0], outputs
        job_ids = [int(json.loads(o)["job_id"]) for o in outputs]
        wait_until(
            lambda: sum(counts(url, j).indexed for j in job_ids) >= 64, 300, "64 pieces indexed"
        )
        # A second (parse) worker joins mid-job; the embedded store admits one encoder.
        with workers(distributed_env, tmp_path / "late", "parse"):
            for job_id in job_ids:
                settle(distributed_env, job_id, 300)
    finals = [counts(url, j) for j in job_ids]
    result = outcome(distributed_env, url)
    report(
        "same_folder_twice",
        jobs=[{"job": f.job_id, "files": f.files, "indexed": f.indexed} for f in finals],
        **result.as_dict(),
    )
    assert all(f.status == "done" and f.failed == 0 for f in finals)
    assert sum(f.indexed for f in finals) == n  # each piece counted by exactly one job
    assert result == type(result)(pieces=n, indexed=n, points=n)


def small_corpus(wikimt_dir: Path, folder: Path, n: int) -> Path:
    """The first n WikiMT lead sheets, one file each."""
    folder.mkdir()
    for source in sorted(wikimt_dir.glob("*.abc"))[:n]:
        shutil.copyfile(source, folder / source.name)
    return folder


def test_verify_repairs_drift(
    embedded_env: dict[str, str], wikimt_dir: Path, tmp_path: Path
) -> None:
    import numpy as np

    from schemas.collection import point_id
    from tests.conftest import settings_from_env
    from workers.runtime import close_contexts, get_context

    corpus = small_corpus(wikimt_dir, tmp_path / "c", 60)
    assert run_cli(["ingest", str(corpus), "--json"], embedded_env).returncode == 0
    clean = json.loads(run_cli(["verify", "--json"], embedded_env).stdout)
    assert (clean["missing"], clean["orphaned"], clean["stale"]) == (0, 0, 0)

    settings = settings_from_env(embedded_env)
    ctx = get_context(settings)
    try:
        collection = ctx.store.resolve_alias(settings.collection_alias)
        assert collection is not None
        ids = list(ctx.store.iter_ids(collection))
        ctx.store.delete(collection, ids[:7])  # lost points
        dim = ctx.store.retrieve_vectors(collection, ids[7:8])[ids[7]].shape[0]
        strays = [point_id(f"stray-{i}") for i in range(3)]  # points nobody owns
        vectors = np.eye(dim, dtype=np.float32)[:3]
        ctx.store.upsert(collection, strays, vectors, [{"piece_id": "stray"}] * 3)
        ctx.store.flush()
    finally:
        close_contexts()

    found = json.loads(run_cli(["verify", "--json"], embedded_env).stdout)
    repaired = json.loads(run_cli(["verify", "--repair", "--json"], embedded_env).stdout)
    after = json.loads(run_cli(["verify", "--json"], embedded_env).stdout)
    result = outcome(embedded_env)
    report("verify_repair", found=found, repaired=repaired, after=after, **result.as_dict())
    assert (found["missing"], found["orphaned"]) == (7, 3)
    assert repaired["repaired"] == 10
    assert (after["missing"], after["orphaned"], after["stale"]) == (0, 0, 0)
    assert result.points == result.indexed == 60


def test_a_poison_piece_becomes_one_failure(
    embedded_env: dict[str, str], wikimt_dir: Path, tmp_path: Path
) -> None:
    from workers.sinks import piece_id_for

    corpus = small_corpus(wikimt_dir, tmp_path / "c", 40)
    poison = piece_id_for(str(sorted(corpus.glob("*.abc"))[17].absolute()), 0)
    env = {
        **embedded_env,
        "CLAMP_INDEX_CRASH_ON_PIECE": poison,
        "CLAMP_INDEX_ENCODE_CLAIM_PIECES": "40",
    }
    # Like a supervisor: run the same command until it exits cleanly.
    crashes = 0
    while (result := run_cli(["ingest", str(corpus), "--json"], env)).returncode != 0:
        crashes += 1
        assert crashes <= 10, result.stderr
    summary = json.loads(result.stdout)
    failures = json.loads(run_cli(["failures", "--json"], env).stdout)
    final = outcome(env)
    report("poison_piece", crashes=crashes, failures=len(failures), **final.as_dict())
    assert [f["piece_id"] for f in failures] == [poison]
    assert "died" in failures[0]["message"]
    assert summary["status"] == "done"
    assert final.indexed == final.points == 40 - 1


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_then_the_same_command_resumes(
    embedded_env: dict[str, str], wikimt_dir: Path, tmp_path: Path
) -> None:
    from sqlalchemy import func, select

    from schemas.db import FileStatus, SourceFile
    from tests.conftest import settings_from_env
    from workers.database import session_factory, session_scope

    n = len(wikimt_entries())
    env = {k: v for k, v in embedded_env.items() if k != "CLAMP_INDEX_MODEL_DIR"}
    env["CLAMP_INDEX_ENCODE_CLAIM_PIECES"] = "64"
    url = settings_from_env(embedded_env).resolved_database_url()
    db_file = Path(url.split("///", 1)[1])

    def parsed_files() -> int:
        if not db_file.exists():
            return 0
        with session_scope(session_factory(url)) as session:
            query = select(func.count()).select_from(SourceFile)
            return session.scalar(query.where(SourceFile.status == FileStatus.PARSED)) or 0

    first = subprocess.Popen(
        [str(CLI), "ingest", str(wikimt_dir), "--json"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As in a terminal: a suite started in the background (`cmd &`) inherits SIGINT
        # ignored, and Python then never raises KeyboardInterrupt.
        preexec_fn=_default_sigint,
    )
    try:
        wait_until(lambda: parsed_files() >= 300, 300, "300 files parsed", poll_s=0.05)
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
    session_factory.cache_clear()
    parsed_before = parsed_files()
    assert first.returncode == 130, stderr
    assert "interrupted" in stderr and "clamp-index ingest" in stderr
    second = run_cli(["ingest", str(wikimt_dir), "--json"], env)
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    final = outcome(env)
    report(
        "sigint_resume",
        parsed_before_resume=parsed_before,
        parsed_by_resume=summary["files"],
        **final.as_dict(),
    )
    # Files parsed before the interrupt are not parsed again; the end state is a clean run's.
    assert summary["files"] == n - parsed_before
    assert summary["status"] == "done" and summary["failed"] == 0
    assert final == type(final)(pieces=n, indexed=n, points=n)
