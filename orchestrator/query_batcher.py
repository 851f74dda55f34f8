"""Micro-batching of concurrent query texts: one encoder forward for many requests.

Under concurrent load each request encoding its own text runs dozens of small forwards at
once, every one with all of torch's threads, on a few cores. Gathering the texts that arrive
while a forward runs and encoding them together costs little more than one forward, and keeps
torch on one thread of control.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

EncodeTexts = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class _Request:
    encode: EncodeTexts
    text: str
    result: Future[np.ndarray]


class TextBatcher:
    """encode(fn, text) from many threads; one background thread runs fn on batches."""

    def __init__(self, max_batch: int = 64) -> None:
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches = 0  # forwards run, for tests and metrics
        self.texts = 0

    def encode(self, encode: EncodeTexts, text: str) -> np.ndarray:
        self._ensure_started()
        request = _Request(encode, text, Future())
        self._queue.put(request)
        return request.result.result()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(10)
            self._thread = None

    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="text-batcher", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            waiting = [first]
            # No timer: whatever queued up during the previous forward is the next batch, so
            # a lone request never waits and a busy server batches by itself.
            while len(waiting) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                waiting.append(item)
            for group in _by_encoder(waiting):
                self._run(group)

    def _run(self, group: list[_Request]) -> None:
        try:
            vectors = group[0].encode([r.text for r in group])
        except BaseException as exc:
            for request in group:
                request.result.set_exception(exc)
            return
        self.batches += 1
        self.texts += len(group)
        for request, vector in zip(group, vectors, strict=True):
            request.result.set_result(vector)


def _by_encoder(requests: list[_Request]) -> list[list[_Request]]:
    """Requests grouped by encoder (a reindex may swap models between two requests)."""
    groups: list[list[_Request]] = []
    for request in requests:
        # Bound methods of one encoder compare equal; of two encoders, not.
        same = next((g for g in groups if g[0].encode == request.encode), None)
        if same is None:
            groups.append([request])
        else:
            same.append(request)
    return groups
