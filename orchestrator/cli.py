"""`clamp-index` command line: ingest and retry, queries, status and failures, workers."""

from __future__ import annotations

import json
import os
import sys
import time
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

from orchestrator import jobs
from schemas.settings import Settings, load_settings
from workers.database import session_factory
from workers.sinks import JobCounts

app = typer.Typer(
    help="Index symbolic-music catalogs (ABC) with CLaMP vectors and search them by meaning.",
    no_args_is_help=True,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)

DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="State directory (default ./.clamp-index or CLAMP_INDEX_DATA_DIR)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
TopKOpt = Annotated[int, typer.Option("-k", "--top-k", min=1, max=1000, help="Results to return.")]
FilterOpt = Annotated[
    list[str] | None,
    typer.Option("--filter", "-f", help="Payload filter FIELD=VALUE (e.g. meter=6/8); repeatable."),
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def _user_errors() -> tuple[type[BaseException], ...]:
    from orchestrator.search import EmptyIndexError, QueryInputError
    from workers.runtime import ModelMismatchError, ModelNotConfiguredError
    from workers.vectors import StoreLockedError, VectorStoreError

    errors: list[type[BaseException]] = [
        ModelMismatchError,
        ModelNotConfiguredError,
        StoreLockedError,
        VectorStoreError,
        EmptyIndexError,
        QueryInputError,
    ]
    try:
        from workers.clamp import CheckpointError

        errors.append(CheckpointError)
    except ImportError:  # pragma: no cover - torch missing
        pass
    return tuple(errors)


def _settings(data_dir: Path | None) -> Settings:
    settings = load_settings(data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


def _counts_dict(c: JobCounts) -> dict[str, Any]:
    return {
        "job_id": c.job_id,
        "kind": c.kind,
        "status": c.status,
        "files": c.files,
        "pieces": c.pieces,
        "indexed": c.indexed,
        "failed": c.failed,
        "skipped": c.skipped,
        "files_pending": c.files_pending,
        "pieces_pending": c.pieces_pending,
        "created_at": c.created_at.isoformat(),
        "finished_at": c.finished_at.isoformat() if c.finished_at else None,
    }


def _print_counts(c: JobCounts) -> None:
    table = Table(title=f"job {c.job_id} ({c.kind}): {c.status}", show_header=False)
    for label, value in [
        ("files to parse", c.files),
        ("files unchanged (skipped)", c.skipped),
        ("pieces", c.pieces),
        ("indexed", c.indexed),
        ("pending", c.files_pending + c.pieces_pending),
        ("failures", c.failed),
    ]:
        table.add_row(label, str(value))
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
    settings = _settings(data_dir)
    sessions = session_factory(settings.resolved_database_url())
    show = not as_json and err.is_terminal
    try:
        plan = jobs.plan_ingest(sessions, settings, paths)
        if settings.embedded_queue:
            _run_embedded(settings, plan, show)
        else:
            from workers.celery_app import CeleryDispatcher, make_celery

            jobs.dispatch_plan(plan, settings, CeleryDispatcher(make_celery(settings)))
            if wait:
                _wait_for(sessions, plan.job_id, show)
    except _user_errors() as exc:
        raise _fail(str(exc)) from exc
    counts = jobs.job_counts(sessions, plan.job_id)
    assert counts is not None
    if as_json:
        print(json.dumps(_counts_dict(counts)))
    else:
        _print_counts(counts)


def _run_embedded(settings: Settings, plan: jobs.IngestPlan, show: bool) -> None:
    from schemas.messages import EncodePiecesMessage, ParseFilesMessage
    from workers.inprocess import InProcessDispatcher
    from workers.runtime import get_context

    ctx = get_context(settings)
    with _progress(show) as progress:
        files_bar = progress.add_task("parse files", total=len(plan.file_ids))
        pieces_bar = progress.add_task("encode pieces", total=0)

        def on_done(msg: object) -> None:
            if isinstance(msg, ParseFilesMessage):
                progress.advance(files_bar, len(msg.file_ids))
            elif isinstance(msg, EncodePiecesMessage):
                progress.advance(pieces_bar, len(msg.piece_ids))

        dispatcher = InProcessDispatcher(ctx, on_done)
        original_encode = dispatcher.encode

        def count_encode(msg: EncodePiecesMessage) -> None:
            task = progress.tasks[pieces_bar]
            progress.update(pieces_bar, total=(task.total or 0) + len(msg.piece_ids))
            original_encode(msg)

        dispatcher.encode = count_encode  # type: ignore[method-assign]
        jobs.dispatch_plan(plan, settings, dispatcher)
        dispatcher.drain()


def _wait_for(sessions: Any, job_id: int, show: bool, poll_s: float = 1.0) -> JobCounts:
    with _progress(show) as progress:
        bar = progress.add_task(f"job {job_id}", total=None)
        while True:
            counts = jobs.job_counts(sessions, job_id)
            assert counts is not None
            done = counts.indexed + counts.failed
            progress.update(
                bar, completed=done, total=max(done, counts.pieces + counts.files_pending)
            )
            if counts.finished:
                return counts
            time.sleep(poll_s)


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
        counts = _wait_for(sessions, counts.job_id, not as_json)
    if as_json:
        print(json.dumps(_counts_dict(counts)))
    else:
        _print_counts(counts)


def _parse_filters(raw: list[str] | None) -> dict[str, Any] | None:
    if not raw:
        return None
    filters: dict[str, Any] = {}
    for item in raw:
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise _fail(f"bad --filter {item!r}: expected FIELD=VALUE", 2)
        filters[field.strip()] = int(value) if field.strip() == "index_in_file" else value
    return filters


def _short_source(uri: str) -> str:
    """The file and its folder: enough to tell collections apart in a narrow table."""
    path = Path(uri)
    return str(Path(path.parent.name) / path.name) if path.parent.name else path.name


def _print_hits(hits: list[Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps([h.to_dict() for h in hits], ensure_ascii=False))
        return
    # piece_id stays in --json: the table is for reading, the ids for scripts.
    table = Table("#", "score", "title", "rhythm", "key", "meter", "source", "tune")
    for h in hits:
        table.add_row(
            str(h.rank),
            f"{h.score:.4f}",
            h.title or "",
            h.rhythm or "",
            h.key or "",
            h.meter or "",
            _short_source(h.source),
            str(h.index_in_file),
        )
    out.print(table)


@app.command()
def search(
    text: Annotated[str, typer.Argument(help='What to look for, e.g. "a lively jig in D".')],
    data_dir: DataDirOpt = None,
    k: TopKOpt = 10,
    as_json: JsonOpt = False,
    filters: FilterOpt = None,
) -> None:
    """Text -> music: pieces whose CLaMP vector is closest to the text's."""
    from orchestrator.search import SearchService
    from workers.runtime import get_context

    settings = _settings(data_dir)
    try:
        hits = SearchService(get_context(settings)).search_text(text, k, _parse_filters(filters))
    except _user_errors() as exc:
        raise _fail(str(exc)) from exc
    _print_hits(hits, as_json)


@app.command()
def similar(
    file: Annotated[Path, typer.Argument(help="An ABC file; its first tune is the query.")],
    data_dir: DataDirOpt = None,
    k: TopKOpt = 10,
    as_json: JsonOpt = False,
    tune: Annotated[int, typer.Option(min=0, help="Which tune of the file (0-based).")] = 0,
    filters: FilterOpt = None,
) -> None:
    """Music -> music: indexed pieces closest to a tune."""
    from orchestrator.search import SearchService
    from workers.runtime import get_context

    settings = _settings(data_dir)
    try:
        hits = SearchService(get_context(settings)).similar_file(
            file, k, _parse_filters(filters), tune
        )
    except _user_errors() as exc:
        raise _fail(str(exc)) from exc
    _print_hits(hits, as_json)


@app.command()
def classify(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="ABC files to label (or use --indexed).")
    ] = None,
    labels: Annotated[
        str, typer.Option(help='Comma-separated labels, e.g. "jig,reel,waltz".')
    ] = "",
    template: Annotated[str, typer.Option(help="Prompt per label.")] = "a {label}",
    indexed: Annotated[bool, typer.Option("--indexed", help="Label every indexed piece.")] = False,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Zero-shot classification: the label whose prompt is closest to each tune."""
    from orchestrator.search import SearchService
    from workers.runtime import get_context

    if bool(paths) == indexed:
        raise _fail("give either PATH... or --indexed", 2)
    settings = _settings(data_dir)
    label_list = labels.split(",")
    try:
        service = SearchService(get_context(settings))
        if indexed:
            results = list(service.classify_indexed(label_list, template))
        else:
            results = service.classify_files(paths or [], label_list, template)
    except _user_errors() as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        print(json.dumps([r.to_dict() for r in results], ensure_ascii=False))
        return
    names = [n.strip() for n in label_list if n.strip()]
    table = Table("title", "source", "tune", "label", *names)
    for r in results:
        table.add_row(
            r.title or "",
            os.path.basename(r.source),
            str(r.index_in_file),
            r.label,
            *(f"{r.scores[n]:.3f}" for n in names),
        )
    out.print(table)


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
    sessions = session_factory(settings.resolved_database_url())
    uris = sorted({f.uri for f in jobs.list_failures(sessions)})
    if not uris:
        if as_json:
            print(json.dumps({"job_id": None, "files": 0}))
        else:
            out.print("nothing to retry")
        return
    ingest([Path(u) for u in uris], data_dir, as_json, wait)


@app.command()
def worker(
    data_dir: DataDirOpt = None,
    queues: Annotated[
        str, typer.Option(help="Comma-separated queues to consume.")
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
    if data_dir is not None:
        # The worker's task code reads settings from the environment.
        os.environ["CLAMP_INDEX_DATA_DIR"] = str(data_dir)
    settings = _settings(data_dir)
    if settings.embedded_queue:
        raise _fail("CLAMP_INDEX_BROKER_URL is not set: a worker needs a broker (redis://...)", 2)
    import workers.tasks  # noqa: F401  (registers the tasks)
    from workers.celery_app import app as celery_app
    from workers.runtime import get_context

    if "encode" in queues.split(","):
        try:
            # Load once before consuming: a missing model fails here, not on every task.
            get_context().encoder  # noqa: B018
        except _user_errors() as exc:
            raise _fail(str(exc)) from exc
    celery_app.worker_main(
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

    settings = _settings(data_dir)
    try:
        info = describe_model(model_dir_of(settings))
    except _user_errors() as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        print(json.dumps(info))
        return
    table = Table("field", "value", show_header=False)
    for key in ("name", "version", "kind", "dim", "max_patches", "model_dir"):
        table.add_row(key, str(info[key]))
    for key, value in _headline_metrics(info["metrics"]):
        table.add_row(key, f"{value:.3f}")
    out.print(table)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)


if __name__ == "__main__":
    main()
