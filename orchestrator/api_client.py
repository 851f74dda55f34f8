"""The CLI's way to a running `clamp-index serve` that owns an embedded index.

The embedded vector engine admits one process. While `serve` runs it records its address
(and, unless a token is configured, a token it made) in the data dir; the CLI's ingest,
search, similar and classify find that record and send their work over HTTP instead of
failing on the store's lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from schemas.queries import ClassifyResult, LabelResult, SearchResult
from schemas.settings import Settings
from workers.errors import BadArgumentError, UserError
from workers.job_state import JobCounts
from workers.sinks import piece_id_for

SERVER_FILE = "server.json"
_ENDED = {"done", "failed", "interrupted"}


@dataclass(frozen=True)
class ServerRecord:
    url: str
    pid: int
    token: str | None


def server_file(settings: Settings) -> Path:
    return settings.data_dir / SERVER_FILE


def new_token() -> str:
    return secrets.token_urlsafe(32)


def record_server(settings: Settings, url: str, token: str | None) -> Path:
    """Write the address file, readable by its owner only (it may hold the token)."""
    path = server_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url, "pid": os.getpid(), "token": token}, fh)
    os.replace(tmp, path)
    return path


def forget_server(settings: Settings) -> None:
    """Remove the address file if it is this process's."""
    found = _read_record(server_file(settings))
    if found is not None and found.pid == os.getpid():
        server_file(settings).unlink(missing_ok=True)


def running_server(settings: Settings) -> ServerRecord | None:
    """The server recorded in the data dir, if it is alive and answers /health."""
    if settings.qdrant_url:
        return None  # a Qdrant server admits every process: no need to go through serve
    found = _read_record(server_file(settings))
    if found is None or not _alive(found.pid):
        return None
    try:
        httpx.get(f"{found.url}/health", timeout=2.0).raise_for_status()
    except httpx.HTTPError:
        return None
    return found


def _read_record(path: Path) -> ServerRecord | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ServerRecord(str(data["url"]), int(data["pid"]), data.get("token"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ServerError(UserError):
    pass


class ApiClient:
    """The SearchService's query methods and ingest, answered by a running server."""

    def __init__(self, record: ServerRecord, settings: Settings, timeout_s: float = 600.0):
        self.record = record
        self.settings = settings
        token = record.token or (
            settings.api_token.get_secret_value() if settings.api_token else None
        )
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=record.url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServerError(
                f"the clamp-index server at {self.record.url} did not answer ({exc}); "
                f"is `clamp-index serve` still running? (its address is in "
                f"{server_file(self.settings)})"
            ) from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:500]
            error = BadArgumentError if response.status_code in (400, 413, 422) else ServerError
            raise error(f"{message} (via the server at {self.record.url})")
        return response.json()

    def search_text(
        self,
        query: str,
        k: int = 10,
        filters: Mapping[str, str | None] | None = None,
        offset: int = 0,
    ) -> SearchResult:
        params = {"q": query, "k": k, "offset": offset, **_present(filters)}
        return SearchResult.model_validate(self._call("GET", "/search", params=params))

    def similar_file(
        self,
        path: Path,
        k: int = 10,
        filters: Mapping[str, str | None] | None = None,
        tune: int = 0,
        offset: int = 0,
    ) -> SearchResult:
        form = {"k": k, "offset": offset, "tune": tune, **_present(filters)}
        files = {"file": (path.name, self._read(path))}
        return SearchResult.model_validate(self._call("POST", "/similar", data=form, files=files))

    def classify_files(
        self, paths: Sequence[Path], labels: Sequence[str], templates: Sequence[str] | None
    ) -> ClassifyResult:
        merged: ClassifyResult | None = None
        for path in paths:
            form = _classify_form(labels, templates)
            files = {"file": (path.name, self._read(path))}
            result = ClassifyResult.model_validate(
                self._call("POST", "/classify", data=form, files=files)
            )
            uri = str(path.absolute())
            # The server saw bytes, not a path: name the tunes as a local run would.
            for row in result.results:
                row.source = uri
                row.piece_id = piece_id_for(uri, row.index_in_file)
            if merged is None:
                merged = result
            else:
                merged.results.extend(result.results)
                merged.latency_ms += result.latency_ms
        if merged is None:
            raise BadArgumentError("no files to classify")
        return merged

    def classify_indexed(
        self, labels: Sequence[str], templates: Sequence[str] | None
    ) -> Iterator[LabelResult]:
        form = {**_classify_form(labels, templates), "indexed": "true"}
        result = ClassifyResult.model_validate(self._call("POST", "/classify", data=form))
        yield from result.results

    def ingest(self, paths: Sequence[Path]) -> int:
        body = {"paths": [str(Path(p).resolve()) for p in paths]}
        return int(self._call("POST", "/ingest", json=body)["job_id"])

    def job(self, job_id: int) -> JobCounts:
        return JobCounts.from_dict(self._call("GET", f"/jobs/{job_id}"))

    def wait_for(self, job_id: int, on_update: Any = None, poll_s: float = 0.5) -> JobCounts:
        while True:
            counts = self.job(job_id)
            if on_update is not None:
                on_update(counts)
            if counts.status in _ENDED:
                return counts
            time.sleep(poll_s)

    def _read(self, path: Path) -> bytes:
        cap = self.settings.api_max_upload_bytes
        try:
            with path.open("rb") as fh:
                data = fh.read(cap + 1)
        except OSError as exc:
            raise BadArgumentError(f"{path}: {exc.strerror or exc}") from None
        if len(data) > cap:
            raise BadArgumentError(f"{path}: over the server's upload limit of {cap:,} bytes")
        return data


def _present(filters: Mapping[str, str | None] | None) -> dict[str, str]:
    return {k: v for k, v in (filters or {}).items() if v is not None}


@contextlib.contextmanager
def server_client(settings: Settings) -> Iterator[ApiClient | None]:
    """A client for the server running on this data dir, or None when none runs."""
    record = running_server(settings)
    if record is None:
        yield None
        return
    client = ApiClient(record, settings)
    try:
        yield client
    finally:
        client.close()


def _classify_form(labels: Sequence[str], templates: Sequence[str] | None) -> dict[str, str]:
    """POST /classify's form; without templates the server applies its own defaults."""
    form = {"labels": ",".join(labels)}
    if templates is not None:
        form["templates"] = "|".join(templates)
    return form
