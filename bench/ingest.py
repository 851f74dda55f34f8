"""Ingest throughput, embedded vs distributed on real Redis and Postgres, and crash recovery.

    python -m bench.ingest --json

One invocation, the same 1,010 WikiMT pieces, one CLaMP-S-size random checkpoint, the same
settings for every path:
- embedded: the ledger drained in this process, exactly as `clamp-index ingest` does;
- distributed: `clamp-index ingest` wakes one parse worker and one encode worker
  (`clamp-index worker` subprocesses) over Redis, with a fresh Postgres database;
- recovery: in a third distributed job the encode worker is SIGKILLed 2 s into its first
  claim and another one is started; recovery_s = kill -> job done.
Each path first ingests a warm-up copy (the same tunes plus one rest bar, so no vector is
reused by content) so that oneDNN has built its per-shape kernels before anything is timed.
Throughput is pieces / (finished_at - created_at) of the job's row, for every path.
mean_pieces_per_forward is pieces per encoder call (one claim's batch, from the ledger);
pieces_per_model_forward splits those calls into the patch-budget batches the model runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.encode import clamp_s_checkpoint, cpu_summary, peak_rss_mb, print_report  # noqa: E402
from bench.wikimt import entry_to_abc, load_entries  # noqa: E402

PG_ADMIN_URL = os.environ.get(
    "CLAMP_INDEX_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("CLAMP_INDEX_TEST_REDIS", "redis://127.0.0.1:6379") + "/14"
LEASE_S = 30.0


def write_corpus(out_dir: Path, extra_rest_bars: int = 0) -> int:
    """WikiMT as one file per tune; extra rest bars make the music (and its hash) new."""
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = load_entries()
    for i, entry in enumerate(entries):
        text = entry_to_abc(entry) + "z8|" * extra_rest_bars + ("\n" if extra_rest_bars else "")
        (out_dir / f"{i:04d}.abc").write_text(text, encoding="utf-8")
    return len(entries)


def job_rate(settings: Any, job_id: int) -> tuple[int, float]:
    """(pieces indexed, seconds from the job's creation to its end)."""
    from orchestrator import jobs
    from workers.database import session_factory

    counts = jobs.job_counts(session_factory(settings.resolved_database_url()), job_id)
    assert counts is not None and counts.finished_at is not None, counts
    from schemas.db import as_utc

    seconds = (as_utc(counts.finished_at) - as_utc(counts.created_at)).total_seconds()
    return counts.indexed, seconds


def claim_sizes(settings: Any, job_ids: list[int]) -> float:
    """Mean encode items per claim (= pieces per encoder call) over the given jobs."""
    from sqlalchemy import func, select

    from schemas.db import WorkItem, WorkKind
    from workers.database import session_factory

    with session_factory(settings.resolved_database_url())() as session:
        items, claims = session.execute(
            select(func.count(), func.count(func.distinct(WorkItem.claim_token))).where(
                WorkItem.job_id.in_(job_ids), WorkItem.kind == WorkKind.ENCODE
            )
        ).one()
    return items / max(claims, 1)


def embedded_run(settings: Any, warm_dir: Path, abc_dir: Path) -> dict[str, Any]:
    from orchestrator import jobs
    from workers.runtime import get_context

    ctx = get_context(settings)
    for folder in (warm_dir, abc_dir):
        stats_before = (ctx.encoder.stats.pieces, ctx.encoder.stats.forwards)
        plan = jobs.plan_ingest(ctx.sessions, settings, [folder], resume_dead_jobs=True)
        jobs.run_embedded(settings, plan.job_id)
    pieces, seconds = job_rate(settings, plan.job_id)
    encoded = ctx.encoder.stats.pieces - stats_before[0]
    forwards = ctx.encoder.stats.forwards - stats_before[1]
    return {
        "embedded_pieces_per_s": round(pieces / seconds, 2),
        "embedded_s": round(seconds, 2),
        "embedded_pieces_per_forward": round(claim_sizes(settings, [plan.job_id]), 1),
        "pieces_per_model_forward": round(encoded / max(forwards, 1), 1),
        "patch_budget": ctx.encoder.patch_budget,
    }


@contextmanager
def postgres_database() -> Iterator[str]:
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"clamp_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        from workers.database import session_factory

        session_factory.cache_clear()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def distributed_run(
    root: Path, base_env: dict[str, str], dirs: tuple[Path, Path, Path]
) -> dict[str, Any]:
    import redis

    from schemas.settings import Settings
    from tests.faults import Worker, counts, start_ingest, wait_until

    warm_dir, abc_dir, crash_dir = dirs
    redis.Redis.from_url(REDIS_URL).flushdb()
    with postgres_database() as url:
        env = {
            **base_env,
            "CLAMP_INDEX_DATABASE_URL": url,
            "CLAMP_INDEX_BROKER_URL": REDIS_URL,
            "CLAMP_INDEX_DATA_DIR": str(root / "distributed"),
            "CLAMP_INDEX_LEASE_S": str(LEASE_S),
            "CLAMP_INDEX_RECONCILE_INTERVAL_S": "5",
        }
        settings = Settings(database_url=url, data_dir=root / "distributed")
        logs = root / "logs"
        logs.mkdir()
        parse = Worker(env, logs / "parse.log", "parse")
        encode = Worker(env, logs / "encode.log", "encode")
        late: Worker | None = None
        try:
            for folder in (warm_dir, abc_dir):
                job_id = start_ingest(env, folder)
                wait_until(lambda j=job_id: counts(url, j).finished, 900, f"job {job_id}")
            pieces, seconds = job_rate(settings, job_id)
            timed_job = job_id
            crash_job = start_ingest(env, crash_dir)

            def encoding() -> bool:
                return counts(url, crash_job).stages.get("encode", {}).get("leased", 0) > 0

            wait_until(encoding, 900, "an encode claim in flight")
            time.sleep(2)  # mid-batch
            encode.kill()
            killed = time.monotonic()
            late = Worker(env, logs / "encode2.log", "encode")
            wait_until(lambda: counts(url, crash_job).finished, 900, "recovery")
            recovery_s = time.monotonic() - killed
            lost = pieces - counts(url, crash_job).indexed
            per_claim = claim_sizes(settings, [timed_job])
        finally:
            for worker in (parse, encode, late):
                if worker is not None:
                    worker.stop()
    return {
        "distributed_pieces_per_s": round(pieces / seconds, 2),
        "distributed_s": round(seconds, 2),
        "mean_pieces_per_forward": round(per_claim, 1),
        "recovery_s": round(recovery_s, 1),
        "recovery_lost_pieces": lost,
        "lease_s": LEASE_S,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--model-dir", type=Path, help="checkpoint (default: random CLaMP-S)")
    parser.add_argument("--precision", choices=["auto", "exact", "fast"], default="auto")
    parser.add_argument("--skip-distributed", action="store_true", help="no Redis/Postgres")
    args = parser.parse_args()

    from schemas.settings import Settings
    from workers.runtime import close_contexts

    saved = {k: v for k, v in os.environ.items() if k.startswith("CLAMP_INDEX_")}
    for key in saved:
        del os.environ[key]  # every knob but these is the settings default, for both paths
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        model_dir = args.model_dir or clamp_s_checkpoint(root / "clamp-s")
        dirs = (root / "warm", root / "wikimt", root / "crash")
        for extra, folder in zip((1, 0, 2), dirs, strict=True):
            files = write_corpus(folder, extra)
        settings = Settings(
            data_dir=root / "embedded",
            model_dir=model_dir,
            precision=args.precision,
        )
        report: dict[str, Any] = {"files": files, "cpu": cpu_summary()}
        report.update(embedded_run(settings, dirs[0], dirs[1]))
        close_contexts()
        if not args.skip_distributed:
            base_env = {k: v for k, v in os.environ.items() if not k.startswith("CLAMP_INDEX_")}
            base_env.update(
                CLAMP_INDEX_MODEL_DIR=str(model_dir), CLAMP_INDEX_PRECISION=args.precision
            )
            report.update(distributed_run(root, base_env, dirs))
            report["distributed_vs_embedded"] = round(
                report["distributed_pieces_per_s"] / report["embedded_pieces_per_s"], 3
            )
        report.update(
            loadavg_1m=round(os.getloadavg()[0], 2),
            peak_rss_mb=round(peak_rss_mb(), 1),
        )
    os.environ.update(saved)
    print_report(report, args.json)


if __name__ == "__main__":
    main()
