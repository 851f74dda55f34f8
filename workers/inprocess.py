"""Embedded mode's dispatcher: runs the same task handlers synchronously in this process."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from schemas.messages import DeletePointsMessage, EncodePiecesMessage, ParseFilesMessage
from workers import tasks
from workers.runtime import WorkerContext

Message = ParseFilesMessage | EncodePiecesMessage | DeletePointsMessage


class InProcessDispatcher:
    """A FIFO of messages drained in this process, parse before encode like the queues."""

    def __init__(
        self, ctx: WorkerContext, on_done: Callable[[Message], None] | None = None
    ) -> None:
        self.ctx = ctx
        self.pending: deque[Message] = deque()
        self.on_done = on_done

    def parse(self, msg: ParseFilesMessage) -> None:
        self.pending.append(msg)

    def encode(self, msg: EncodePiecesMessage) -> None:
        self.pending.append(msg)

    def delete(self, msg: DeletePointsMessage) -> None:
        self.pending.append(msg)

    def drain(self) -> None:
        while self.pending:
            msg = self.pending.popleft()
            try:
                if isinstance(msg, ParseFilesMessage):
                    tasks.handle_parse(self.ctx, msg, self)
                elif isinstance(msg, EncodePiecesMessage):
                    tasks.handle_encode(self.ctx, msg)
                else:
                    tasks.handle_delete(self.ctx, msg)
            except Exception as exc:
                # Nothing retries in-process: record what this and every queued message
                # would have done, so the job ends (failed) instead of pending forever.
                for undone in (msg, *self.pending):
                    tasks.record_message_failure(self.ctx, undone, exc)
                self.pending.clear()
                raise
            if self.on_done is not None:
                self.on_done(msg)
        self.ctx.store.flush()
