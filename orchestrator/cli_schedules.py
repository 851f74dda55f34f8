"""`clamp-index sources|schedules|scheduler`: catalogue roots, schedules, and the loop."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import schedule_store as store
from orchestrator.cli_options import DataDirOpt, JsonOpt
from orchestrator.cli_options import command_settings as _settings
from orchestrator.schedule_store import ScheduleView
from orchestrator.schedules import make_spec, system_clock
from schemas.db import ScheduleAction
from workers.database import session_factory
from workers.errors import BadArgumentError

sources_app = typer.Typer(
    help="Catalogue roots rescanned on a schedule (incremental ingests).", no_args_is_help=True
)
schedules_app = typer.Typer(
    help="When rescans, reindexes and retraining run (the scheduler re-reads them each tick).",
    no_args_is_help=True,
)
out = Console()

NameArg = Annotated[str, typer.Argument(help="The source's or schedule's name.")]
EveryOpt = Annotated[
    str | None, typer.Option("--every", help="Interval: 30s, 15m, 1h, 1d or seconds.")
]
CronOpt = Annotated[
    str | None, typer.Option("--cron", help='Five-field cron line in UTC, e.g. "0 3 * * *".')
]


def _sessions(data_dir: Path | None, *, writes: bool) -> sessionmaker[Session]:
    return session_factory(_settings(data_dir, writes=writes).resolved_database_url())


def _when(s: ScheduleView) -> str:
    return s.spec.describe() + (" [paused]" if s.paused else "")


def _last(s: ScheduleView | None) -> str:
    if s is None or s.last_run is None:
        return "never"
    run = s.last_run
    job = f" job {run.job_id}" if run.job_id is not None else ""
    return f"{run.status}{job} at {run.started_at:%Y-%m-%d %H:%M:%S}"


def _next(s: ScheduleView | None) -> str:
    if s is None or s.next_run_at is None or s.paused:
        return "-"
    return f"{s.next_run_at:%Y-%m-%d %H:%M:%S}"


def _say(as_json: bool, document: dict[str, Any], text: str) -> None:
    if as_json:
        print(json.dumps(document))
    else:
        out.print(text)


# ---- sources ----


@sources_app.command("add")
def sources_add(
    name: NameArg,
    path: Annotated[Path, typer.Argument(help="Directory to rescan.")],
    every: EveryOpt = None,
    cron: CronOpt = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a catalogue root and its rescan schedule (named like the source)."""
    if every is None and cron is None:
        raise BadArgumentError("say when to rescan: --every 1h or --cron '0 3 * * *'")
    spec = make_spec(every=every, cron=cron)
    source = store.add_source(_sessions(data_dir, writes=True), name, path, spec, system_clock())
    _say(as_json, source.to_dict(), f"source {name}: {source.path}, rescanned {spec.describe()}")


@sources_app.command("list")
def sources_list(data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Sources, when they are rescanned next, and how their last rescan went."""
    sources = store.list_sources(_sessions(data_dir, writes=False))
    if as_json:
        print(json.dumps([s.to_dict() for s in sources]))
        return
    if not sources:
        out.print("no sources: add one with `clamp-index sources add NAME PATH --every 1h`")
        return
    table = Table("name", "path", "when", "next run (UTC)", "last run")
    for s in sources:
        when = _when(s.schedule) if s.schedule else "-"
        table.add_row(s.name, s.path, when, _next(s.schedule), _last(s.schedule))
    out.print(table)


@sources_app.command("remove")
def sources_remove(name: NameArg, data_dir: DataDirOpt = None) -> None:
    """Forget a source and its schedule (its indexed pieces stay)."""
    store.remove_source(_sessions(data_dir, writes=False), name)
    out.print(f"source {name} removed")


@sources_app.command("pause")
def sources_pause(name: NameArg, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Stop rescanning a source until it is resumed."""
    source = store.set_source_paused(_sessions(data_dir, writes=False), name, True, system_clock())
    _say(as_json, source.to_dict(), f"source {name} paused")


@sources_app.command("resume")
def sources_resume(name: NameArg, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Rescan a paused source again, from its next slot on."""
    source = store.set_source_paused(_sessions(data_dir, writes=False), name, False, system_clock())
    _say(as_json, source.to_dict(), f"source {name} resumed")


# ---- schedules ----

SCHEDULABLE = [a for a in ScheduleAction.ALL if a != ScheduleAction.RESCAN]


@schedules_app.command("add")
def schedules_add(
    name: NameArg,
    action: Annotated[
        str,
        typer.Option(
            "--action",
            help="reindex | train (noop: records runs only, to check a deployment). "
            "Rescans come with `sources add`.",
        ),
    ],
    every: EveryOpt = None,
    cron: CronOpt = None,
    after_pieces: Annotated[
        int | None,
        typer.Option(
            "--after-pieces", help="Run once this many pieces were added or changed since."
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Schedule a reindex or a retraining."""
    spec = make_spec(every=every, cron=cron, after_pieces=after_pieces)
    schedule = store.add_schedule(
        _sessions(data_dir, writes=True), name, action, spec, system_clock()
    )
    _say(as_json, schedule.to_dict(), f"schedule {name}: {action} {spec.describe()}")


@schedules_app.command("list")
def schedules_list(data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Every schedule (source rescans included), its next run and its last run."""
    schedules = store.list_schedules(_sessions(data_dir, writes=False))
    if as_json:
        print(json.dumps([s.to_dict() for s in schedules]))
        return
    if not schedules:
        out.print("no schedules")
        return
    table = Table("name", "action", "when", "next run (UTC)", "last run")
    for s in schedules:
        action = f"{s.action} {s.source_name}" if s.source_name else s.action
        table.add_row(s.name, action, _when(s), _next(s), _last(s))
    out.print(table)


@schedules_app.command("runs")
def schedules_runs(
    name: Annotated[str | None, typer.Argument(help="Only this schedule's runs.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 20,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The latest runs: who ran them (leader, fencing token), how they ended, their job."""
    sessions = _sessions(data_dir, writes=False)
    runs = store.list_runs(sessions, name, limit)
    if as_json:
        print(json.dumps([r.to_dict() for r in runs]))
        return
    names = {s.id: s.name for s in store.list_schedules(sessions)}
    table = Table("run", "schedule", "slot (UTC)", "status", "job", "leader", "token", "error")
    for r in runs:
        table.add_row(
            str(r.id),
            names.get(r.schedule_id, "?"),
            f"{r.slot_at:%Y-%m-%d %H:%M:%S}",
            r.status,
            str(r.job_id or ""),
            r.leader,
            str(r.fencing_token),
            r.error or "",
        )
    out.print(table)


@schedules_app.command("remove")
def schedules_remove(name: NameArg, data_dir: DataDirOpt = None) -> None:
    """Delete a schedule and its run history."""
    store.remove_schedule(_sessions(data_dir, writes=False), name)
    out.print(f"schedule {name} removed")


@schedules_app.command("pause")
def schedules_pause(name: NameArg, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Stop a schedule firing until it is resumed."""
    view = store.set_schedule_paused(_sessions(data_dir, writes=False), name, True, system_clock())
    _say(as_json, view.to_dict(), f"schedule {name} paused")


@schedules_app.command("resume")
def schedules_resume(name: NameArg, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Let a paused schedule fire again, from its next slot on (missed slots are not run)."""
    view = store.set_schedule_paused(_sessions(data_dir, writes=False), name, False, system_clock())
    _say(as_json, view.to_dict(), f"schedule {name} resumed")


# ---- the loop ----


def scheduler(
    data_dir: DataDirOpt = None,
    once: Annotated[
        bool, typer.Option("--once", help="One tick: run what is due, wait for it, exit.")
    ] = False,
    tick: Annotated[
        float | None,
        typer.Option(
            "--tick", min=0.01, help="Seconds between ticks (CLAMP_INDEX_SCHEDULER_TICK_S)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run due schedules; run it on several hosts, one leads at a time (Ctrl-C/SIGTERM stops)."""
    from orchestrator.scheduler import Scheduler

    settings = _settings(data_dir, writes=True)
    if tick is not None:
        settings = settings.model_copy(update={"scheduler_tick_s": tick})
    loop = Scheduler(settings)  # connects and migrates first: its log lines are noise here
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    if once:
        try:
            outcomes = loop.run_once()
        finally:
            loop.shutdown()
        if as_json:
            print(json.dumps([{**o.__dict__, "slot_at": o.slot_at.isoformat()} for o in outcomes]))
        else:
            for o in outcomes:
                out.print(f"{o.schedule}: {o.status}" + (f" ({o.error})" if o.error else ""))
        return

    def stop(_signum: int, _frame: object) -> None:
        loop.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    loop.run_forever()
