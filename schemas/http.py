"""Bodies of the HTTP API besides query results (schemas.queries): errors, health, jobs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ApiError(BaseModel):
    error: str = Field(description="what went wrong and what to do about it")
    status: int


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str]


class IngestRequest(BaseModel):
    paths: list[str] = Field(
        min_length=1, max_length=1000, description="absolute paths under a catalogue root"
    )


class JobAccepted(BaseModel):
    job_id: int
    status_url: str


class JobReport(BaseModel):
    job_id: int
    kind: str
    status: str = Field(description="scanning, running, done, failed or interrupted")
    files: int = Field(description="files to parse")
    pieces: int
    indexed: int
    failed: int
    skipped: int = Field(description="files unchanged since the last scan")
    encoded: int
    reused: int
    removed: int
    files_pending: int
    files_failed: int
    deletes_pending: int
    pieces_pending: int
    created_at: str
    finished_at: str | None
    pieces_per_s: float
    eta_s: float | None
    stages: dict[str, dict[str, int]]
    progress: dict[str, Any] = Field(
        default_factory=dict,
        description="a train job's phase (round trips, training, gate, reindex), "
        "done and total in it, and the recent training loss",
    )


class FailureRow(BaseModel):
    id: int
    job_id: int | None
    uri: str
    stage: str
    error_class: str
    message: str
    piece_id: str | None = None
    created_at: str
