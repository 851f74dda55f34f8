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
        # Parse tasks each hand over a few dozen pieces; the encoder wants big length-sorted
        # batches, so encode work is pooled per (job, collection) up to pieces_per_encode_task.
        self._encode_pool: dict[tuple[int, str | None], list[str]] = {}

    def parse(self, msg: ParseFilesMessage) -> None:
        self.pending.append(msg)

    def encode(self, msg: EncodePiecesMessage) -> None:
        key = (msg.job_id, msg.collection)
        pool = self._encode_pool.setdefault(key, [])
        pool.extend(msg.piece_ids)
        if len(pool) >= self.ctx.settings.pieces_per_encode_task:
            self._release(key)

    def _release(self, key: tuple[int, str | None]) -> None:
        piece_ids = self._encode_pool.pop(key, [])
        step = self.ctx.settings.pieces_per_encode_task
        for start in range(0, len(piece_ids), step):
            self.pending.append(
                EncodePiecesMessage(
                    job_id=key[0], collection=key[1], piece_ids=piece_ids[start : start + step]
                )
            )

    def delete(self, msg: DeletePointsMessage) -> None:
        self.pending.append(msg)

    def drain(self) -> None:
        while self.pending or self._encode_pool:
            if not self.pending:
                for key in list(self._encode_pool):
                    self._release(key)
                continue
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
                for key in list(self._encode_pool):
                    self._release(key)
                for undone in (msg, *self.pending):
                    tasks.record_message_failure(self.ctx, undone, exc)
                self.pending.clear()
                raise
            if self.on_done is not None:
                self.on_done(msg)
        self.ctx.store.flush()
