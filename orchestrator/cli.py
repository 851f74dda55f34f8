"""`clamp-index` command line: ingest and retry, queries, status and failures, workers."""

from __future__ import annotations

import functools
import json
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from orchestrator import cli_lifecycle, cli_queries, jobs
from orchestrator.cli_options import DataDirOpt, JsonOpt
from orchestrator.cli_options import command_settings as _settings
from orchestrator.cli_schedules import scheduler, schedules_app, sources_app
from schemas.db import JobKind
from schemas.settings import load_settings
from workers.database import session_factory
from workers.errors import UserError
from workers.job_state import JobCounts

app = typer.Typer(
    help="Index symbolic-music catalogs (ABC) with CLaMP vectors and search them by meaning.",
    no_args_is_help=True,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _print_counts(c: JobCounts) -> None:
    table = Table(title=f"job {c.job_id} ({c.kind}): {c.status}", show_header=False)
    for label, value in [
        ("files to parse", c.files),
        ("files unchanged (skipped)", c.skipped),
        ("pieces", c.pieces),
        ("indexed", c.indexed),
        ("  vectors computed", c.encoded),
        ("  reused (same music)", c.reused),
        ("removed (deleted tunes)", c.removed),
        ("pending", c.files_pending + c.pieces_pending),
        ("failures", c.failed),
    ]:
        table.add_row(label, str(value))
    if c.progress:
        table.add_row("phase", describe_progress(c.progress))
    out.print(table)
    if c.failed:
        out.print("[yellow]see `clamp-index failures` for what failed and why[/]")


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not enabled,
        transient=False,
    )


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or directories to index.")],
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
    wait: Annotated[
        bool | None,
        typer.Option("--wait/--no-wait", help="Distributed mode: wait for the job to finish."),
    ] = None,
) -> None:
    """Scan PATHS, parse and encode new or changed files, and write their vectors."""
    resume = " ".join(["clamp-index ingest", *(shlex.quote(str(p)) for p in paths)])
    _run_ingest(paths, data_dir, as_json, wait, resume, reparse=False)


def _run_ingest(
    paths: list[Path],
    data_dir: Path | None,
    as_json: bool,
    wait: bool | None,
    resume: str,
    reparse: bool,
) -> None:
    settings = load_settings(data_dir)
    if data_dir is not None:
        resume += f" --data-dir {shlex.quote(str(data_dir))}"
    show = not as_json and err.is_terminal
    if not reparse:
        from orchestrator.api_client import server_client

        with server_client(settings) as server:
            if server is not None:
                jobs.require_paths(paths)
                job_id = server.ingest(paths)
                err.print(f"job {job_id} runs in the server at {server.record.url}")
                with _progress(show) as progress:
                    counts = server.wait_for(job_id, _JobBars(progress).update)
                _report(counts, as_json)
                return
    with _progress(show) as progress, _stop_signals():
        counts = jobs.ingest(
            settings,
            paths,
            wait=bool(wait),
            on_progress=_JobBars(progress).update,
            resume=resume,
            reparse=reparse,
        )
    _report(counts, as_json)


def describe_progress(progress: dict[str, Any]) -> str:
    """A long job's own report in one line: "training 350/2000, loss 2.0134"."""
    text = str(progress.get("phase", ""))
    if progress.get("total"):
        text += f" {progress.get('done', 0)}/{progress['total']}"
    if "loss" in progress:
        text += f", loss {progress['loss']}"
    return text


class _PhaseBar:
    """One bar that follows a long job's phases (round trips, then training steps...)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = progress.add_task("waiting for a worker", total=None)

    def update(self, c: JobCounts) -> None:
        if not c.progress:
            return
        total = c.progress.get("total") or None
        self.progress.update(
            self.task,
            completed=c.progress.get("done", 0),
            total=total,
            description=describe_progress({**c.progress, "total": 0}),
        )


class _JobBars:
    """Two progress bars, parse and encode, drawn from the ledger's counts."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.parse = progress.add_task("parse files", total=None)
        self.encode = progress.add_task("encode pieces", total=None)

    def update(self, c: JobCounts) -> None:
        def label(stage: str, kind: str) -> str:
            in_flight = c.stages.get(kind, {}).get("leased", 0)
            return f"{stage} ({in_flight} in flight)" if in_flight else stage

        self.progress.update(
            self.parse,
            completed=c.files - c.files_pending,
            total=c.files,
            description=label("parse files", "parse"),
        )
        self.progress.update(
            self.encode,
            completed=c.pieces - c.pieces_pending,
            total=max(c.pieces, 1),
            description=label("encode pieces", "encode"),
        )


@contextmanager
def _stop_signals() -> Iterator[None]:
    """Ctrl-C and SIGTERM stop an embedded run: batch handed back, job resumable."""
    from workers.runner import stop_signals

    with stop_signals():
        yield


def _report(counts: JobCounts, as_json: bool) -> None:
    if as_json:
        print(json.dumps(counts.to_dict()))
    else:
        _print_counts(counts)


@app.command()
def status(
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
    job: Annotated[int | None, typer.Option(help="Job id (default: the latest).")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Follow the job until it ends.")] = False,
) -> None:
    """Counts of the latest (or a given) job."""
    settings = _settings(data_dir)
    sessions = session_factory(settings.resolved_database_url())
    counts = jobs.job_counts(sessions, job)
    if counts is None:
        raise _fail("no job has run yet: start one with `clamp-index ingest PATH`")
    if watch:
        with _progress(not as_json and err.is_terminal) as progress:
            bars = _PhaseBar(progress) if counts.kind == JobKind.TRAIN else _JobBars(progress)
            counts = jobs.wait_for(sessions, counts.job_id, bars.update)
    _report(counts, as_json)


@app.command()
def failures(
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
    job: Annotated[int | None, typer.Option(help="Only this job's failures.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Include resolved failures.")] = False,
) -> None:
    """What failed, where and why."""
    settings = _settings(data_dir)
    rows = jobs.list_failures(session_factory(settings.resolved_database_url()), job, all_)
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "id": f.id,
                        "job_id": f.job_id,
                        "uri": f.uri,
                        "piece_id": f.piece_id,
                        "stage": f.stage,
                        "error_class": f.error_class,
                        "message": f.message,
                        "created_at": f.created_at.isoformat(),
                        "resolved": f.resolved_at is not None,
                    }
                    for f in rows
                ],
                ensure_ascii=False,
            )
        )
        return
    if not rows:
        out.print("no failures")
        return
    table = Table("job", "stage", "error", "file", "message")
    for f in rows:
        table.add_row(str(f.job_id), f.stage, f.error_class, f.uri, f.message)
    out.print(table)


@app.command()
def retry(
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
    wait: Annotated[bool | None, typer.Option("--wait/--no-wait")] = None,
) -> None:
    """Re-run the files behind unresolved failures (after fixing them)."""
    settings = _settings(data_dir)
    present, gone = jobs.retry_targets(session_factory(settings.resolved_database_url()))
    for path in gone:
        err.print(f"skipped (no longer exists): {path}", highlight=False, soft_wrap=True)
    if not present:
        if as_json:
            print(json.dumps({"job_id": None, "files": 0}))
        else:
            out.print("nothing to retry")
        return
    # Unchanged files are parsed again: a limit or the code may have changed since.
    _run_ingest(present, data_dir, as_json, wait, "clamp-index retry", reparse=True)


@app.command()
def worker(
    data_dir: DataDirOpt = None,
    queues: Annotated[
        str,
        typer.Option(help="Comma-separated queues to consume: parse, encode, train (GPU nodes)."),
    ] = "parse,encode",
    pool: Annotated[
        str,
        typer.Option(
            help="solo for GPU/encode workers (one model per process); prefork for parse."
        ),
    ] = "solo",
    concurrency: Annotated[int, typer.Option(min=1)] = 1,
    loglevel: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Start a Celery worker (distributed mode: CLAMP_INDEX_BROKER_URL must be set)."""
    settings = _settings(data_dir, writes=True)
    if settings.embedded_queue:
        raise _fail("CLAMP_INDEX_BROKER_URL is not set: a worker needs a broker (redis://...)", 2)
    from workers.celery_app import check_broker
    from workers.runtime import get_context
    from workers.tasks import create_worker_app

    check_broker(settings)
    # Migrate and connect before consuming: a wrong database fails here, once.
    session_factory(settings.resolved_database_url())
    if "encode" in queues.split(",") and pool != "prefork":
        # Load once before consuming: a missing model fails here, not on every task. Not
        # before forking a prefork pool: CUDA must never be initialised before a fork.
        get_context(settings).encoder  # noqa: B018
    from orchestrator.lifecycle import work_handlers

    create_worker_app(settings, work_handlers()).worker_main(
        [
            "worker",
            f"--queues={queues}",
            f"--pool={pool}",
            f"--concurrency={concurrency}",
            f"--loglevel={loglevel}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


HEADLINE_METRICS = ("mrr", "hr@1", "hr@10", "accuracy")


def _headline_metrics(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    """Leaf figures worth a line (MRR, hit rates, accuracies), with dotted paths."""
    rows: list[tuple[str, float]] = []
    for key, value in metrics.items():
        if "random" in key:  # baselines belong in the model card, not the summary
            continue
        if isinstance(value, dict):
            rows += _headline_metrics(value, f"{prefix}{key}.")
        elif key in HEADLINE_METRICS and isinstance(value, int | float):
            rows.append((f"{prefix}{key}", float(value)))
    return rows


@app.command("model")
def model_info(data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """The configured model: name, version, directory and its recorded quality."""
    from workers.clamp.loading import describe_model
    from workers.runtime import model_dir_of

    info = describe_model(model_dir_of(load_settings(data_dir)))
    if as_json:
        print(json.dumps(info))
        return
    table = Table("field", "value", show_header=False)
    for key in ("name", "version", "kind", "dim", "max_patches", "model_dir"):
        table.add_row(key, str(info[key]))
    for key, value in _headline_metrics(info["metrics"]):
        table.add_row(key, f"{value:.3f}")
    out.print(table)


@app.command()
def doctor(data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Check the database, broker, vector store, model and disk; exit 0 only if all pass."""
    from orchestrator.doctor import run_checks

    checks = run_checks(load_settings(data_dir))
    healthy = all(c.ok for c in checks)
    if as_json:
        print(json.dumps({"ok": healthy, "checks": [c.to_dict() for c in checks]}))
    else:
        table = Table("check", "", "detail", "fix")
        for c in checks:
            mark = "[green]ok[/]" if c.ok else "[bold red]error[/]"
            table.add_row(c.name, mark, c.detail, c.fix)
        out.print(table)
    if not healthy:
        raise typer.Exit(1)


@app.command()
def verify(
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
    repair: Annotated[
        bool, typer.Option("--repair", help="Re-queue missing/stale pieces, delete orphans.")
    ] = False,
) -> None:
    """Compare the database with the vector store (and repair with --repair)."""
    from orchestrator.verify import verify as run_verify

    report = run_verify(_settings(data_dir), repair)
    if as_json:
        print(json.dumps(report.to_dict()))
        return
    table = Table(title=f"collection {report.collection}", show_header=False)
    for key in ("checked", "missing", "orphaned", "stale", "repaired"):
        table.add_row(key, str(getattr(report, key)))
    out.print(table)


@app.command()
def migrate(data_dir: DataDirOpt = None) -> None:
    """Bring the database schema to the current version (workers also do this on start)."""
    settings = _settings(data_dir, writes=True)
    session_factory(settings.resolved_database_url())
    out.print("database schema is current")


def _exit_code(exc: Exception) -> int | None:
    """The exit code of an error a person can fix (None: a bug, keep the traceback)."""
    if isinstance(exc, UserError):
        return exc.exit_code
    from workers.vectors import VectorStoreError  # a store that refuses a write or query

    return 1 if isinstance(exc, VectorStoreError) else None


def _one_line_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """User errors end the command with one line on stderr and their exit code, no traceback."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except Exception as exc:
            code = _exit_code(exc)
            if code is None:
                raise
            raise _fail(str(exc), code) from None

    return run


app.add_typer(sources_app, name="sources")
app.add_typer(schedules_app, name="schedules")
app.command("scheduler")(scheduler)


def _wrap_commands(group: typer.Typer) -> None:
    """Give every command, in sub-apps too, the one-line error handling."""
    for command in group.registered_commands:
        assert command.callback is not None
        command.callback = _one_line_errors(command.callback)
    for sub in group.registered_groups:
        assert sub.typer_instance is not None
        _wrap_commands(sub.typer_instance)


cli_queries.register(app)
cli_lifecycle.register(app)
_wrap_commands(app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)


if __name__ == "__main__":
    main()
