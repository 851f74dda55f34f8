"""What every HTTP request passes through: errors as JSON, the bearer token, upload limits."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import FastAPI, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.api_jobs import PathNotAllowedError
from orchestrator.search import EmptyIndexError, PieceNotFoundError
from schemas.http import ApiError
from workers.errors import JobNotFoundError, UserError

log = logging.getLogger("clamp_index.api")

# Multipart framing around an upload; requests larger than the cap plus this are refused
# before their body is read.
FORM_OVERHEAD = 64 * 1024

_ERRORS = {400: "bad request", 401: "unauthorized", 403: "forbidden", 404: "not found"}
RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ApiError, "description": text} for code, text in _ERRORS.items()
}
UPLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    **RESPONSES,
    413: {"model": ApiError, "description": "upload too large"},
}


def status_of(exc: UserError) -> int:
    if isinstance(exc, PathNotAllowedError):
        return 403
    if isinstance(exc, PieceNotFoundError | JobNotFoundError | EmptyIndexError):
        return 404
    return 400


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


class Refused(Exception):
    """A request turned away before it reached the service (auth, size)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UserError)
    async def user_error(_: Request, exc: UserError) -> JSONResponse:
        return error_response(status_of(exc), str(exc))

    @app.exception_handler(Refused)
    async def refused(_: Request, exc: Refused) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        response = error_response(exc.status, str(exc))
        response.headers.update(headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        return error_response(422, f"invalid request: {problems}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def crashed(_: Request, exc: Exception) -> JSONResponse:
        from workers.vectors import VectorStoreError

        if isinstance(exc, VectorStoreError):
            return error_response(503, f"the vector store refused the request: {exc}")
        log.exception("unhandled error")
        return error_response(500, "internal error; the server log has the details")


def install_upload_cap(app: FastAPI, max_bytes: int) -> None:
    @app.middleware("http")
    async def refuse_big_bodies(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_bytes + FORM_OVERHEAD:
            return error_response(413, f"request body over the upload limit of {max_bytes:,} bytes")
        return await call_next(request)


async def read_upload(upload: UploadFile, max_bytes: int) -> bytes:
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise Refused(
            413,
            f"{upload.filename}: over the upload limit of {max_bytes:,} bytes "
            "(CLAMP_INDEX_API_MAX_UPLOAD_BYTES)",
        )
    return data


def check_token(expected: str | None, presented: str | None) -> None:
    """Writes need the server's token; with none configured they are off."""
    if expected is None:
        raise Refused(403, "writes are disabled: set CLAMP_INDEX_API_TOKEN on the server")
    if presented is None or not secrets.compare_digest(presented.encode(), expected.encode()):
        raise Refused(401, "this endpoint needs the header `Authorization: Bearer TOKEN`")
