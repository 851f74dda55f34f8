"""Pydantic payloads of every Celery task (versioned: workers reject versions they do not know)."""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field


class TaskMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParseFilesMessage(TaskMessage):
    """Parse these recorded source files into pieces, then queue their encoding."""

    v: Literal[1] = 1
    job_id: int
    file_ids: list[int] = Field(min_length=1)


class EncodePiecesMessage(TaskMessage):
    """Encode these parsed pieces and write their vectors into the collection."""

    v: Literal[1] = 1
    job_id: int
    # None: the alias's active collection; a reindex names its new collection explicitly.
    collection: str | None = None
    piece_ids: list[str] = Field(min_length=1)


class DeletePointsMessage(TaskMessage):
    """Remove the points of pieces that no longer exist (file deleted or tune removed)."""

    v: Literal[1] = 1
    piece_ids: list[str] = Field(min_length=1)


class Dispatcher(Protocol):
    """Where producers send work: Celery queues, or the in-process runner (embedded mode)."""

    def parse(self, msg: ParseFilesMessage) -> None: ...
    def encode(self, msg: EncodePiecesMessage) -> None: ...
    def delete(self, msg: DeletePointsMessage) -> None: ...
