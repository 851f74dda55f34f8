"""The scheduler: sources and schedules through the CLI, leases and fencing, runs recorded,
a scheduled rescan in embedded mode, and two real scheduler processes on Postgres."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest

from orchestrator import leader
from orchestrator import schedule_store as store
from orchestrator.jobs import job_counts
from orchestrator.schedule_store import ScheduleView
from orchestrator.scheduler import DEFAULT_ACTIONS, Action, Scheduler
from orchestrator.schedules import make_spec
from schemas.db import RunStatus, ScheduleAction
from schemas.settings import Settings
from tests.conftest import CLI, REPO, run_cli, settings_from_env
from tests.test_cli_errors import one_error_line
from workers.database import session_factory, session_scope

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
TUNES = [
    "X:1\nT:Morning reel\nM:4/4\nL:1/8\nK:D\n|:defg abag|fdec d2d2:|\n",
    "X:1\nT:Evening jig\nM:6/8\nL:1/8\nK:G\n|:GAB cBA|BGE D3:|\n",
    "X:1\nT:Late waltz\nM:3/4\nL:1/4\nK:A\n|:A2 B|c2 e|a3|e3:|\n",
]


class FakeClock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def sqlite_settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(data_dir=tmp_path / "state", **overrides)


def recorder(calls: list[str]) -> Action:
    def action(_settings: Settings, schedule: ScheduleView) -> None:
        calls.append(schedule.name)

    return action


# ---- the loop, in process, on SQLite ----


def test_missed_slots_run_once_and_edits_apply_without_restart(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path)
    clock = FakeClock()
    calls: list[str] = []
    sched = Scheduler(settings, {ScheduleAction.NOOP: recorder(calls)}, clock=clock)
    store.add_schedule(sched.sessions, "beat", ScheduleAction.NOOP, make_spec(every="1m"), T0)

    assert sched.run_once() == []  # not due before its first slot
    clock.advance(10 * 60 + 5)  # ten slots pass while the scheduler is "down"
    [outcome] = sched.run_once()
    assert outcome.status == RunStatus.DONE and outcome.slot_at == T0 + timedelta(minutes=1)
    assert sched.run_once() == []  # the other nine missed slots do not run
    clock.advance(60)
    [outcome] = sched.run_once()
    assert outcome.slot_at == T0 + timedelta(minutes=11)
    assert calls == ["beat", "beat"]

    # Edited by another process (the CLI) while the loop runs: read again at each tick.
    store.set_schedule_paused(sched.sessions, "beat", True, clock())
    clock.advance(300)
    assert sched.run_once() == []
    store.set_schedule_paused(sched.sessions, "beat", False, clock())
    assert sched.run_once() == []  # slots declined while paused are not run on resume
    clock.advance(60)
    assert len(sched.run_once()) == 1
    runs = store.list_runs(sched.sessions, "beat")
    assert [r.status for r in runs] == [RunStatus.DONE] * 3
    assert {r.fencing_token for r in runs} == {1}


def test_a_failing_action_is_recorded_and_the_others_still_run(tmp_path: Path) -> None:
    clock = FakeClock()
    calls: list[str] = []

    def broken(_settings: Settings, _schedule: ScheduleView) -> None:
        raise RuntimeError("disk on fire")

    sched = Scheduler(
        sqlite_settings(tmp_path, scheduler_parallel=4, broker_url="redis://unused"),
        {ScheduleAction.TRAIN: broken, ScheduleAction.NOOP: recorder(calls)},
        clock=clock,
    )
    store.add_schedule(sched.sessions, "a-train", ScheduleAction.TRAIN, make_spec(every="1m"), T0)
    store.add_schedule(sched.sessions, "b-beat", ScheduleAction.NOOP, make_spec(every="1m"), T0)
    clock.advance(61)
    outcomes = {o.schedule: o for o in sched.run_once()}
    assert outcomes["a-train"].status == RunStatus.FAILED
    assert outcomes["a-train"].error == "RuntimeError: disk on fire"
    assert outcomes["b-beat"].status == RunStatus.DONE and calls == ["b-beat"]
    [failed] = store.list_runs(sched.sessions, "a-train")
    assert failed.status == RunStatus.FAILED and failed.error == "RuntimeError: disk on fire"
    assert failed.finished_at is not None
    clock.advance(60)
    assert {o.schedule for o in sched.run_once()} == {"a-train", "b-beat"}  # loop goes on


def test_a_running_action_is_not_started_again(tmp_path: Path) -> None:
    clock = FakeClock()
    release = threading.Event()
    started: list[str] = []

    def slow(_settings: Settings, schedule: ScheduleView) -> None:
        started.append(schedule.name)
        assert release.wait(30)

    sched = Scheduler(sqlite_settings(tmp_path), {ScheduleAction.NOOP: slow}, clock=clock)
    store.add_schedule(sched.sessions, "slow", ScheduleAction.NOOP, make_spec(every="1m"), T0)
    clock.advance(60)
    [(first_run, thread)] = sched.tick()
    clock.advance(60)
    assert sched.tick() == []  # due again while still running: skipped, not started
    release.set()
    thread.join(10)
    assert started == ["slow"]
    runs = {r.id: r for r in store.list_runs(sched.sessions, "slow")}
    assert runs[first_run].status == RunStatus.DONE
    [skipped] = [r for r in runs.values() if r.id != first_run]
    assert skipped.status == RunStatus.SKIPPED and "still running" in (skipped.error or "")
    assert skipped.slot_at == T0 + timedelta(minutes=2)
    clock.advance(60)
    assert len(sched.run_once()) == 1  # and runs again once it ended


def test_lease_takeover_bumps_the_token_and_fences_the_old_leader(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path, scheduler_lease_s=10, scheduler_tick_s=1)
    clock = FakeClock()
    calls: list[str] = []
    actions = {ScheduleAction.NOOP: recorder(calls)}
    a = Scheduler(settings, actions, clock=clock, holder="host-a")
    b = Scheduler(settings, actions, clock=clock, holder="host-b")
    store.add_schedule(a.sessions, "beat", ScheduleAction.NOOP, make_spec(every="1s"), T0)

    clock.advance(1)
    assert len(a.run_once()) == 1 and a.lease is not None and a.lease.token == 1
    clock.advance(1)
    assert b.run_once() == [] and b.lease is None  # a's lease is live: b only waits
    old = a.lease

    clock.advance(11)  # a stalls past its lease (a GC pause, a network cut)
    assert len(b.run_once()) == 1 and b.lease is not None and b.lease.token == 2
    # a, still believing it leads, can neither renew nor claim a due slot.
    with session_scope(a.sessions) as session:
        assert leader.renew(session, old, 10, clock()) is None
    clock.advance(1)
    [due] = store.due_schedules(a.sessions, clock())
    slot = due.next_run_at
    assert slot is not None
    assert (
        store.claim_slot(a.sessions, old, due, slot, slot + timedelta(seconds=1), clock()) is None
    )
    assert a.run_once() == [] and a.lease is None  # a learns it lost at its next tick
    assert len(b.run_once()) == 1

    runs = store.list_runs(a.sessions, "beat", limit=100)
    assert Counter((r.schedule_id, r.slot_at) for r in runs).most_common(1)[0][1] == 1
    assert sorted((r.leader, r.fencing_token) for r in runs) == [
        ("host-a", 1),
        ("host-b", 2),
        ("host-b", 2),
    ]
    # Handing over on stop: the next process leads at once, not a lease later.
    b.shutdown()
    assert a.run_once() == [] and a.lease is not None and a.lease.token == 3


def test_runs_of_a_dead_leader_are_abandoned_not_blocking(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path, scheduler_lease_s=10, scheduler_tick_s=1)
    clock = FakeClock()
    hung = threading.Event()

    def hangs(_settings: Settings, _schedule: ScheduleView) -> None:
        hung.wait(30)

    a = Scheduler(settings, {ScheduleAction.NOOP: hangs}, clock=clock, holder="host-a")
    store.add_schedule(a.sessions, "beat", ScheduleAction.NOOP, make_spec(every="1s"), T0)
    clock.advance(1)
    assert len(a.tick()) == 1  # a starts a run, then "dies" with it running
    clock.advance(11)
    b = Scheduler(settings, {ScheduleAction.NOOP: recorder([])}, clock=clock, holder="host-b")
    [outcome] = b.run_once()
    assert outcome.status == RunStatus.DONE
    statuses = Counter(r.status for r in store.list_runs(b.sessions, "beat"))
    assert statuses == {RunStatus.ABANDONED: 1, RunStatus.DONE: 1}
    hung.set()


def test_piece_count_schedule_and_scheduled_rescan_in_embedded_mode(
    embedded_env: dict[str, str], tmp_path: Path
) -> None:
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    for i, tune in enumerate(TUNES[:2]):
        (catalog / f"tune{i}.abc").write_text(tune, encoding="utf-8")
    settings = settings_from_env(embedded_env)
    settings.data_dir.mkdir(parents=True)
    # Real time: piece rows are stamped by the database layer's own clock.
    clock = FakeClock(datetime.now(UTC))
    trained: list[str] = []
    actions = {**DEFAULT_ACTIONS, ScheduleAction.TRAIN: recorder(trained)}
    sched = Scheduler(settings, actions, clock=clock)
    store.add_source(sched.sessions, "folk", catalog, make_spec(every="1h"), clock())
    store.add_schedule(
        sched.sessions, "retrain", ScheduleAction.TRAIN, make_spec(after_pieces=3), clock()
    )

    clock.advance(3600)
    [first] = sched.run_once()
    assert (first.schedule, first.status) == ("folk", RunStatus.DONE), first.error
    counts = job_counts(sched.sessions, first.job_id)
    assert counts is not None and (counts.indexed, counts.failed) == (2, 0)
    assert sched.run_once() == [] and trained == []  # 2 changed pieces: not yet 3

    (catalog / "tune2.abc").write_text(TUNES[2], encoding="utf-8")
    clock.advance(3600)
    outcomes = {o.schedule: o for o in sched.run_once()}
    assert outcomes["folk"].job_id not in (None, first.job_id)
    counts = job_counts(sched.sessions, outcomes["folk"].job_id)
    assert counts is not None
    assert (counts.indexed, counts.skipped, counts.failed) == (1, 2, 0)  # only the new file
    [rescan_run] = [r for r in store.list_runs(sched.sessions, "folk") if r.job_id == counts.job_id]
    assert rescan_run.status == RunStatus.DONE
    clock.advance(1)
    [retrain] = sched.run_once()  # 3 pieces changed since the schedule was created
    assert retrain.schedule == "retrain" and trained == ["retrain"]
    clock.advance(1)
    assert sched.run_once() == []  # the count starts again from that run


# ---- the CLI ----


def test_sources_and_schedules_round_trip_through_the_cli(
    embedded_env: dict[str, str], tmp_path: Path
) -> None:
    catalog = tmp_path / "catalog"
    catalog.mkdir()

    def ok(*args: str) -> object:
        result = run_cli([*args, "--json"], embedded_env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    added = ok("sources", "add", "folk", str(catalog), "--every", "1h")
    assert added["path"] == str(catalog) and added["when"] == "every 1h"
    assert not added["paused"]
    ok("sources", "add", "nightly", str(catalog), "--cron", "0 3 * * *")
    ok("schedules", "add", "retrain", "--action", "train", "--after-pieces", "500")
    listed = ok("sources", "list")
    assert [s["name"] for s in listed] == ["folk", "nightly"]
    assert ok("sources", "pause", "folk")["paused"] is True
    assert [s["paused"] for s in ok("sources", "list")] == [True, False]
    assert ok("sources", "resume", "folk")["paused"] is False
    schedules = {s["name"]: s for s in ok("schedules", "list")}
    assert schedules["nightly"]["cron"] == "0 3 * * *"
    assert schedules["folk"]["action"] == "rescan" and schedules["folk"]["source"] == "folk"
    assert schedules["retrain"]["after_pieces"] == 500
    assert ok("schedules", "pause", "retrain")["paused"] is True

    env = embedded_env
    line = one_error_line(
        run_cli(["sources", "add", "x", str(tmp_path / "nope"), "--every", "1h"], env)
    )
    assert "does not exist" in line
    file = catalog / "a.abc"
    file.write_text(TUNES[0], encoding="utf-8")
    line = one_error_line(run_cli(["sources", "add", "x", str(file), "--every", "1h"], env))
    assert "is not a directory" in line
    line = one_error_line(run_cli(["sources", "add", "folk", str(catalog), "--every", "1h"], env))
    assert "already used" in line
    line = one_error_line(
        run_cli(["schedules", "add", "folk", "--action", "train", "--every", "1d"], env)
    )
    assert "already used" in line
    line = one_error_line(run_cli(["sources", "remove", "ghost"], env))
    assert "no source named 'ghost'" in line
    line = one_error_line(run_cli(["schedules", "resume", "ghost"], env))
    assert "no schedule named 'ghost'" in line
    line = one_error_line(run_cli(["sources", "add", "y", str(catalog), "--every", "1x"], env), 2)
    assert "bad interval" in line
    line = one_error_line(run_cli(["sources", "add", "y", str(catalog)], env), 2)
    assert "--every" in line
    bad_cron = ["schedules", "add", "r", "--action", "reindex", "--cron", "0 3 * *"]
    assert "5 fields" in one_error_line(run_cli(bad_cron, env), 2)
    bad_action = ["schedules", "add", "r", "--action", "explode", "--every", "1h"]
    assert "unknown action" in one_error_line(run_cli(bad_action, env), 2)

    assert run_cli(["sources", "remove", "folk"], env).returncode == 0
    assert [s["name"] for s in ok("sources", "list")] == ["nightly"]
    assert sorted(s["name"] for s in ok("schedules", "list")) == ["nightly", "retrain"]
    assert run_cli(["schedules", "remove", "retrain"], env).returncode == 0
    assert [s["name"] for s in ok("schedules", "list")] == ["nightly"]


# ---- two real scheduler processes on Postgres ----


def _spawn_scheduler(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(CLI), "scheduler", "--tick", "0.2"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


@pytest.mark.services
@pytest.mark.slow
def test_two_scheduler_processes_never_run_a_slot_twice_and_fail_over(
    postgres_url: str, tmp_path: Path
) -> None:
    every_s, lease_s = 1.0, 2.0
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAMP_INDEX_")}
    env.update(
        CLAMP_INDEX_DATA_DIR=str(tmp_path / "state"),
        CLAMP_INDEX_DATABASE_URL=postgres_url,
        CLAMP_INDEX_SCHEDULER_LEASE_S=str(lease_s),
    )
    added = run_cli(["schedules", "add", "beat", "--action", "noop", "--every", "1s"], env)
    assert added.returncode == 0, added.stderr
    sessions = session_factory(postgres_url)

    def runs() -> list[store.RunView]:
        return store.list_runs(sessions, "beat", limit=100_000)

    procs = [_spawn_scheduler(env, tmp_path / f"scheduler{i}.log") for i in range(2)]
    try:
        _wait_for(lambda: len(runs()) >= 4, 60, "the first runs")
        time.sleep(3)  # both are up (startup is the slow part): now they compete
        assert all(p.poll() is None for p in procs), "a scheduler exited early"
        lease = store.current_lease(sessions, leader.SCHEDULER_ROLE)
        assert lease is not None
        old_holder = lease.holder
        victim = next(p for p in procs if f":{p.pid}:" in old_holder)
        survivor = next(p for p in procs if p is not victim)
        before_kill = runs()
        assert {r.leader for r in before_kill} == {old_holder}  # one leader ran everything
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        _wait_for(
            lambda: sum(r.leader != old_holder for r in runs()) >= 4, 30, "the new leader's runs"
        )
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)

    final = runs()
    per_slot = Counter((r.schedule_id, r.slot_at) for r in final)
    duplicates = sum(n - 1 for n in per_slot.values())
    old = [r for r in final if r.leader == old_holder]
    new = [r for r in final if r.leader != old_holder]
    takeover_s = (min(r.started_at for r in new) - max(r.started_at for r in old)).total_seconds()
    # Every slot on the 1 s grid runs once, except slots that passed while nobody led
    # (starting up, taking over): those run once together, as their earliest, and the next
    # run is the first slot after that. Startup catch-up is the first gap; skip it.
    slots = sorted(r.slot_at for r in final)
    gaps = [round((b - a).total_seconds() / every_s) for a, b in pairwise(slots[1:])]
    coalesced = [g - 1 for g in gaps if g > 1]
    print(
        f"\nscheduler failover: runs={len(final)} duplicates={duplicates} "
        f"distinct_slots={len(per_slot)} old_leader_runs={len(old)} new_leader_runs={len(new)} "
        f"slots_coalesced_at_takeover={sum(coalesced)} takeover_s={takeover_s:.2f} "
        f"bound_s={2 * max(every_s, lease_s):.1f}"
    )
    assert duplicates == 0
    assert len({r.leader for r in new}) == 1
    assert min(r.fencing_token for r in new) > max(r.fencing_token for r in old)
    assert takeover_s <= 2 * max(every_s, lease_s)
    assert all(g >= 1 for g in gaps)
    assert len(coalesced) <= 1 and sum(coalesced) <= takeover_s / every_s + 1
    assert all(r.status in (RunStatus.DONE, RunStatus.ABANDONED) for r in final)
    released = store.current_lease(sessions, leader.SCHEDULER_ROLE)
    assert released is not None and released.until <= datetime.now(UTC)  # handed back on stop


@pytest.mark.services
def test_concurrent_acquires_on_postgres_elect_one_leader(postgres_url: str) -> None:
    sessions = session_factory(postgres_url)
    now = datetime.now(UTC)
    barrier = threading.Barrier(8)
    won: list[leader.Lease] = []

    def contend(i: int) -> None:
        barrier.wait()
        lease = store.acquire_lease(sessions, "contest", f"holder-{i}", 30, now)
        if lease is not None:
            won.append(lease)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(won) == 1 and won[0].token == 1
    # Expired: the next taker bumps the token, exactly once among many.
    later = now + timedelta(seconds=31)
    barrier = threading.Barrier(8)
    won.clear()

    def contend_later(i: int) -> None:
        barrier.wait()
        lease = store.acquire_lease(sessions, "contest", f"other-{i}", 30, later)
        if lease is not None:
            won.append(lease)

    threads = [threading.Thread(target=contend_later, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(won) == 1 and won[0].token == 2
