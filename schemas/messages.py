"""Pydantic payloads of every Celery task (versioned: workers reject versions they do not know)."""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict


class TaskMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WakeMessage(TaskMessage):
    """Job J has work on queue Q: drain it from the ledger.

    The message carries no work: losing, duplicating or reordering wake-ups never loses or
    duplicates any, because the work is rows in the ledger that workers claim.
    """

    v: Literal[1] = 1
    queue: Literal["parse", "encode", "train"]
    job_id: int


class Waker(Protocol):
    """How producers tell workers of a queue that it has work."""

    def wake(self, queue: str, job_id: int) -> None: ...
