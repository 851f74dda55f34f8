"""The HTTP API and web page (`clamp-index serve`): FastAPI routes over orchestrator.search."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from orchestrator import api_guards, api_jobs
from orchestrator.api_guards import RESPONSES, UPLOAD_RESPONSES, read_upload
from orchestrator.search import DEFAULT_TEMPLATES, MAX_K, MAX_OFFSET, SearchService
from orchestrator.text_encoder_process import ServerTextEncoding
from schemas.filters import FILTER_FIELDS
from schemas.http import FailureRow, Health, IngestRequest, JobAccepted, JobReport, Readiness
from schemas.queries import ClassifyResult, PieceDetail, SearchResult
from schemas.settings import Settings
from workers.errors import BadArgumentError, JobNotFoundError

log = logging.getLogger("clamp_index.api")

MAX_ID = 2**63 - 1  # the databases' integer keys
# Each query read the alias from the database (~1 ms, 8% of the GIL under load); a swap is
# seen this much later instead.
ALIAS_TTL_S = 1.0


@dataclass
class ServerState:
    """What the routes share: the service, and who runs submitted jobs."""

    settings: Settings
    service: SearchService
    token: str | None
    jobs: api_jobs.EmbeddedJobRunner | None  # None: distributed, the workers run jobs


def create_app(settings: Settings, *, token: str | None = None) -> FastAPI:
    """The app for one data dir / deployment. `token` overrides settings.api_token."""
    from workers.runtime import get_context

    secret = token or (settings.api_token.get_secret_value() if settings.api_token else None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = get_context(settings)
        runner = api_jobs.EmbeddedJobRunner(settings) if settings.embedded_queue else None
        texts = ServerTextEncoding(settings)
        service = SearchService(ctx, texts, alias_ttl_s=ALIAS_TTL_S)
        app.state.server = ServerState(settings, service, secret, runner)
        # Own the store and load the models before the first query.
        texts.warm(ctx, ctx.store.resolve_alias(settings.collection_alias))
        _ = ctx.encoder
        if runner is not None:
            runner.start()
        try:
            yield
        finally:
            texts.close()
            if runner is not None:
                runner.stop()

    app = FastAPI(
        title="clamp-index",
        summary="Search symbolic-music catalogues by meaning (CLaMP vectors).",
        version="1",
        lifespan=lifespan,
        responses=RESPONSES,
    )
    api_guards.install_error_handlers(app)
    api_guards.install_upload_cap(app, settings.api_max_upload_bytes)
    _add_query_routes(app)
    _add_job_routes(app)
    _add_page(app)
    return app


def _state(request: Request) -> ServerState:
    return request.app.state.server  # type: ignore[no-any-return]


State = Annotated[ServerState, Depends(_state)]
_bearer = HTTPBearer(auto_error=False, description="the server's API token")


def _require_writer(
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    api_guards.check_token(state.token, credentials.credentials if credentials else None)


_KNOWN_SEARCH_PARAMS = {"q", "k", "offset", *FILTER_FIELDS}


def _filters(**values: str | None) -> dict[str, str | None]:
    return {name: value for name, value in values.items() if value not in (None, "")}


def _add_query_routes(app: FastAPI) -> None:
    k_query = Query(10, ge=1, le=MAX_K, description="results per page")
    offset_query = Query(0, ge=0, le=MAX_OFFSET, description="results to skip")

    @app.get("/search", response_model=SearchResult, tags=["queries"])
    def search(
        request: Request,
        state: State,
        q: Annotated[str, Query(min_length=1, max_length=2000, description="what to look for")],
        k: int = k_query,
        offset: int = offset_query,
        key: str | None = Query(None, description=FILTER_FIELDS["key"].help),
        meter: str | None = Query(None, description=FILTER_FIELDS["meter"].help),
        rhythm: str | None = Query(None, description=FILTER_FIELDS["rhythm"].help),
        composer: str | None = Query(None, description=FILTER_FIELDS["composer"].help),
        origin: str | None = Query(None, description=FILTER_FIELDS["origin"].help),
        source: str | None = Query(None, description=FILTER_FIELDS["source"].help),
        format: str | None = Query(None, description=FILTER_FIELDS["format"].help),
    ) -> SearchResult:
        """Text -> music: pieces whose vector is closest to the text's."""
        unknown = sorted(set(request.query_params) - _KNOWN_SEARCH_PARAMS)
        if unknown:
            raise BadArgumentError(
                f"unknown filter field {unknown[0]!r}; filterable fields: "
                f"{', '.join(FILTER_FIELDS)} (other parameters: q, k, offset)"
            )
        filters = _filters(
            key=key,
            meter=meter,
            rhythm=rhythm,
            composer=composer,
            origin=origin,
            source=source,
            format=format,
        )
        return state.service.search_text(q, k, filters, offset)

    @app.post("/similar", response_model=SearchResult, tags=["queries"], responses=UPLOAD_RESPONSES)
    async def similar(
        state: State,
        piece_id: Annotated[str | None, Form(description="an indexed piece (left out)")] = None,
        file: Annotated[UploadFile | None, File(description="ABC, MusicXML or MIDI")] = None,
        k: Annotated[int, Form(ge=1, le=MAX_K)] = 10,
        offset: Annotated[int, Form(ge=0, le=MAX_OFFSET)] = 0,
        tune: Annotated[int, Form(ge=0, le=10_000, description="tune of the file")] = 0,
        key: Annotated[str | None, Form()] = None,
        meter: Annotated[str | None, Form()] = None,
        rhythm: Annotated[str | None, Form()] = None,
        composer: Annotated[str | None, Form()] = None,
        origin: Annotated[str | None, Form()] = None,
        source: Annotated[str | None, Form()] = None,
        format: Annotated[str | None, Form()] = None,
    ) -> SearchResult:
        """Music -> music, from an uploaded file or an indexed piece id."""
        filters = _filters(
            key=key,
            meter=meter,
            rhythm=rhythm,
            composer=composer,
            origin=origin,
            source=source,
            format=format,
        )
        if (file is None) == (not piece_id):
            raise BadArgumentError("give either piece_id or file, not both and not neither")
        if file is not None:
            data = await read_upload(file, state.settings.api_max_upload_bytes)
            return await _in_thread(
                state.service.similar_upload,
                data,
                file.filename or "upload.abc",
                k,
                filters,
                tune,
                offset,
            )
        assert piece_id is not None
        return await _in_thread(state.service.similar_to_indexed, piece_id, k, filters, offset)

    @app.post(
        "/classify", response_model=ClassifyResult, tags=["queries"], responses=UPLOAD_RESPONSES
    )
    async def classify(
        state: State,
        labels: Annotated[str, Form(description="comma-separated, two or more")],
        templates: Annotated[
            str | None,
            Form(
                description="prompt templates separated by '|' (default: the "
                f"CLAMP_INDEX_CLASSIFY_TEMPLATES setting, {DEFAULT_TEMPLATES}, with "
                "CLAMP_INDEX_CLASSIFY_LABEL_PROMPTS' own prompts for the labels it names)"
            ),
        ] = None,
        piece_id: Annotated[str | None, Form(description="an indexed piece")] = None,
        file: Annotated[UploadFile | None, File(description="ABC, MusicXML or MIDI")] = None,
        indexed: Annotated[bool, Form(description="label every indexed piece")] = False,
    ) -> ClassifyResult:
        """Zero-shot labels (probabilities) for an upload's tunes, a piece, or the index."""
        label_list = labels.split(",")
        # None: the settings' templates and per-label prompts (search.request_prompts).
        template_list = [t for t in templates.split("|") if t.strip()] if templates else None
        if sum([file is not None, bool(piece_id), indexed]) != 1:
            raise BadArgumentError("give exactly one of piece_id, file or indexed=true")
        if indexed:
            return await _in_thread(state.service.classify_all, label_list, template_list)
        if file is not None:
            data = await read_upload(file, state.settings.api_max_upload_bytes)
            name = file.filename or "upload.abc"
            return await _in_thread(
                state.service.classify_upload, data, name, label_list, template_list
            )
        assert piece_id is not None
        return await _in_thread(
            state.service.classify_pieces, [piece_id], label_list, template_list
        )

    @app.get("/pieces/{piece_id}", response_model=PieceDetail, tags=["queries"])
    def piece(state: State, piece_id: str) -> PieceDetail:
        """A piece's metadata and its ABC text (what the page renders and plays)."""
        return state.service.piece(piece_id)


async def _in_thread(fn: Any, *args: Any) -> Any:
    # Encoding is CPU-bound: keep it off the event loop, like FastAPI does for sync routes.
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


def _add_job_routes(app: FastAPI) -> None:
    from orchestrator.jobs import job_counts, list_failures

    @app.get("/health", response_model=Health, tags=["service"])
    def health() -> Health:
        """The process is up (no dependency is checked)."""
        return Health(status="ok")

    @app.get(
        "/ready",
        response_model=Readiness,
        tags=["service"],
        responses={503: {"model": Readiness, "description": "not ready"}},
    )
    def ready(state: State) -> Any:
        """Database, vector store and model all usable."""
        checks = _readiness(state)
        body = Readiness(ready=all(v == "ok" for v in checks.values()), checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)

    @app.post(
        "/ingest",
        response_model=JobAccepted,
        status_code=202,
        tags=["jobs"],
        responses=UPLOAD_RESPONSES,
        dependencies=[Depends(_require_writer)],
    )
    def ingest(state: State, body: IngestRequest) -> JobAccepted:
        """Index files or folders that lie under a catalogue root of the server."""
        paths = api_jobs.allowed_paths(state.settings, body.paths)
        return _accepted(_submit(state, paths))

    @app.post(
        "/ingest/files",
        response_model=JobAccepted,
        status_code=202,
        tags=["jobs"],
        responses=UPLOAD_RESPONSES,
        dependencies=[Depends(_require_writer)],
    )
    async def ingest_files(
        state: State,
        files: Annotated[list[UploadFile], File(description="ABC, MusicXML or MIDI files")],
    ) -> JobAccepted:
        """Index uploaded files (kept in the server's data dir)."""
        cap = state.settings.api_max_upload_bytes
        received = [(f.filename or "upload", await read_upload(f, cap)) for f in files]
        folder = await _in_thread(api_jobs.save_uploads, state.settings, received)
        return _accepted(await _in_thread(_submit, state, [folder]))

    @app.get("/jobs/{job_id}", response_model=JobReport, tags=["jobs"])
    def job(state: State, job_id: Annotated[int, Path(ge=1, le=MAX_ID)]) -> JobReport:
        """A job's counts and status (scanning, running, done, failed, interrupted)."""
        counts = job_counts(state.service.ctx.sessions, job_id)
        if counts is None:
            raise JobNotFoundError(f"no job with id {job_id}")
        return JobReport.model_validate(counts.to_dict())

    @app.get("/failures", response_model=list[FailureRow], tags=["jobs"])
    def failures(
        state: State,
        job_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> list[FailureRow]:
        """Unresolved failures (all, or one job's), oldest first."""
        rows = list_failures(state.service.ctx.sessions, job_id, limit=limit)
        return [
            FailureRow(
                id=f.id,
                job_id=f.job_id,
                uri=f.uri,
                stage=f.stage,
                error_class=f.error_class,
                message=f.message,
                piece_id=f.piece_id,
                created_at=f.created_at.isoformat(),
            )
            for f in rows
        ]


def _submit(state: ServerState, paths: list[Any]) -> int:
    if state.jobs is not None:
        return state.jobs.submit(paths)
    from orchestrator.jobs import ingest

    # Distributed: plan and wake the workers, exactly as `clamp-index ingest` does.
    return ingest(state.settings, paths).job_id


def _accepted(job_id: int) -> JobAccepted:
    return JobAccepted(job_id=job_id, status_url=f"/jobs/{job_id}")


def _readiness(state: ServerState) -> dict[str, str]:
    from sqlalchemy import text

    checks: dict[str, str] = {}
    try:
        with state.service.ctx.sessions() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {exc}"
    ctx = state.service.ctx
    try:
        ctx.store.list_collections()
        checks["vector_store"] = "ok"
    except Exception as exc:
        checks["vector_store"] = f"unavailable: {exc}"
    try:
        checks["model"] = "ok" if ctx.encoder is not None else "not loaded"
    except Exception as exc:
        checks["model"] = f"cannot load: {exc}"
    return checks


def _add_page(app: FastAPI) -> None:
    from orchestrator import web

    web.mount(app)
