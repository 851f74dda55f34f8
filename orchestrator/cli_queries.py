"""`clamp-index search | similar | classify | serve`: queries, here or through a running server."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Protocol

import typer
from rich.table import Table

from orchestrator.cli_options import DataDirOpt, FilterOpt, JsonOpt, TopKOpt, command_settings
from schemas.queries import ClassifyResult, Hit, LabelResult, SearchResult
from schemas.settings import Settings, load_settings
from workers.database import require_existing
from workers.errors import BadArgumentError

OffsetOpt = Annotated[
    int, typer.Option("--offset", min=0, max=10_000, help="Results to skip (next pages).")
]


class Queries(Protocol):
    """What the CLI asks of the local SearchService or of a running server's API."""

    def search_text(
        self, query: str, k: int, filters: Mapping[str, str | None] | None, offset: int
    ) -> SearchResult: ...

    def similar_file(
        self,
        path: Path,
        k: int,
        filters: Mapping[str, str | None] | None,
        tune: int,
        offset: int,
    ) -> SearchResult: ...

    def classify_files(
        self, paths: Sequence[Path], labels: Sequence[str], templates: Sequence[str] | None
    ) -> ClassifyResult: ...

    def classify_indexed(
        self, labels: Sequence[str], templates: Sequence[str] | None
    ) -> Iterator[LabelResult]: ...


@contextmanager
def open_queries(settings: Settings, *, needs_index: bool = True) -> Iterator[Queries]:
    """The running server of this data dir if there is one, else the service in-process."""
    from orchestrator.api_client import server_client

    with server_client(settings) as server:
        if server is not None:
            yield server
            return
    from orchestrator.search import SearchService
    from workers.runtime import get_context

    if needs_index:
        require_existing(settings.resolved_database_url())  # nothing ingested: say so
    yield SearchService(get_context(settings))


def parse_filters(raw: list[str] | None) -> dict[str, str | None]:
    filters: dict[str, str | None] = {}
    for item in raw or []:
        field, sep, value = item.partition("=")
        if not sep or not field.strip():
            raise BadArgumentError(f"bad --filter {item!r}: expected FIELD=VALUE, e.g. key=D")
        filters[field.strip()] = value
    return filters


def _short_source(uri: str) -> str:
    """The file and its folder: enough to tell collections apart in a narrow table."""
    path = Path(uri)
    return str(Path(path.parent.name) / path.name) if path.parent.name else path.name


def print_hits(hits: list[Hit], as_json: bool) -> None:
    from orchestrator.cli import out

    if as_json:
        print(json.dumps([h.model_dump() for h in hits], ensure_ascii=False))
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


def register(app: typer.Typer) -> None:
    """Add the query commands to the main app."""

    @app.command()
    def search(
        text: Annotated[str, typer.Argument(help='What to look for, e.g. "a lively jig in D".')],
        data_dir: DataDirOpt = None,
        k: TopKOpt = 10,
        offset: OffsetOpt = 0,
        as_json: JsonOpt = False,
        filters: FilterOpt = None,
    ) -> None:
        """Text -> music: pieces whose CLaMP vector is closest to the text's."""
        with open_queries(load_settings(data_dir)) as queries:
            result = queries.search_text(text, k, parse_filters(filters), offset)
        print_hits(result.hits, as_json)

    @app.command()
    def similar(
        file: Annotated[Path, typer.Argument(help="ABC, MusicXML or MIDI; a tune is the query.")],
        data_dir: DataDirOpt = None,
        k: TopKOpt = 10,
        offset: OffsetOpt = 0,
        as_json: JsonOpt = False,
        tune: Annotated[int, typer.Option(min=0, help="Which tune of the file (0-based).")] = 0,
        filters: FilterOpt = None,
    ) -> None:
        """Music -> music: indexed pieces closest to a tune."""
        with open_queries(load_settings(data_dir)) as queries:
            result = queries.similar_file(file, k, parse_filters(filters), tune, offset)
        print_hits(result.hits, as_json)

    @app.command()
    def classify(
        paths: Annotated[
            list[Path] | None, typer.Argument(help="Files to label (or use --indexed).")
        ] = None,
        labels: Annotated[
            str, typer.Option(help='Comma-separated labels, e.g. "jig,reel,waltz".')
        ] = "",
        templates: Annotated[
            list[str] | None,
            typer.Option(
                "--template",
                help='Prompt per label, e.g. "a {label}"; repeat it for an ensemble '
                "(each label's prompts are averaged). Default: the "
                "CLAMP_INDEX_CLASSIFY_TEMPLATES setting, and for the labels it names "
                "CLAMP_INDEX_CLASSIFY_LABEL_PROMPTS' own prompts.",
            ),
        ] = None,
        indexed: Annotated[
            bool, typer.Option("--indexed", help="Label every indexed piece.")
        ] = False,
        data_dir: DataDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Zero-shot classification: label probabilities for each tune."""
        from orchestrator.search import request_prompts

        if bool(paths) == indexed:
            raise BadArgumentError("give either PATH... or --indexed")
        settings = load_settings(data_dir)
        label_list = labels.split(",")
        # No --template: the settings' templates and per-label prompts, here or on a server.
        template_list = list(templates) if templates else None
        names, _ = request_prompts(settings, label_list, template_list)  # bad input: exit 2
        # Labelling files needs only the model; labelling the index needs the index.
        with open_queries(settings, needs_index=indexed) as queries:
            if indexed:
                results = list(queries.classify_indexed(label_list, template_list))
            else:
                results = queries.classify_files(paths or [], label_list, template_list).results
        _print_labels(results, names, as_json)

    @app.command()
    def serve(
        data_dir: DataDirOpt = None,
        host: Annotated[
            str | None, typer.Option(help="Address to listen on (CLAMP_INDEX_API_HOST).")
        ] = None,
        port: Annotated[
            int | None, typer.Option(help="Port (CLAMP_INDEX_API_PORT; 0: any free one).")
        ] = None,
        roots: Annotated[
            list[Path] | None,
            typer.Option("--root", help="A catalogue folder POST /ingest may read; repeatable."),
        ] = None,
    ) -> None:
        """HTTP API and web page. Embedded mode: owns the index, and the CLI goes through it."""
        from orchestrator.serve import run_server

        settings = command_settings(data_dir, writes=True)
        updates: dict[str, object] = {}
        if host is not None:
            updates["api_host"] = host
        if port is not None:
            updates["api_port"] = port
        if roots:
            updates["catalogue_roots"] = [*settings.catalogue_roots, *roots]
        run_server(settings.model_copy(update=updates))


def _print_labels(results: list[LabelResult], names: list[str], as_json: bool) -> None:
    from orchestrator.cli import out

    if as_json:
        print(json.dumps([r.model_dump() for r in results], ensure_ascii=False))
        return
    table = Table("title", "source", "tune", "label", *names)
    for r in results:
        table.add_row(
            r.title or "",
            os.path.basename(r.source or ""),
            str(r.index_in_file),
            r.label,
            *(f"{r.probabilities[n]:.3f}" for n in names),
        )
    out.print(table)
