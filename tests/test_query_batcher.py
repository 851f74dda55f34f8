"""Concurrent query texts share encoder forwards, and each caller gets its own vector back."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from orchestrator.query_batcher import TextBatcher


class SlowEncoder:
    """Vector = [len(text), id]; each forward takes a while, like a real model."""

    def __init__(self, ident: float) -> None:
        self.ident = ident
        self.calls: list[int] = []
        self.lock = threading.Lock()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        with self.lock:
            self.calls.append(len(texts))
        time.sleep(0.02)
        if any(t == "boom" for t in texts):
            raise RuntimeError("encoder failed")
        return np.array([[len(t), self.ident] for t in texts], dtype=np.float32)


def test_concurrent_texts_are_batched_and_answered_in_order() -> None:
    batcher = TextBatcher(max_batch=16)
    first, second = SlowEncoder(1.0), SlowEncoder(2.0)
    texts = ["x" * n for n in range(1, 65)]
    try:
        with ThreadPoolExecutor(32) as pool:
            results = list(
                pool.map(
                    lambda i: batcher.encode((first if i % 2 else second).encode_texts, texts[i]),
                    range(len(texts)),
                )
            )
    finally:
        batcher.close()
    for i, vector in enumerate(results):
        assert vector.tolist() == [len(texts[i]), 1.0 if i % 2 else 2.0]
    forwards = len(first.calls) + len(second.calls)
    assert sum(first.calls) + sum(second.calls) == 64
    assert forwards < 32, (first.calls, second.calls)  # batched, not one forward per text
    assert max(first.calls + second.calls) <= 16


def test_a_failed_forward_fails_its_callers_only() -> None:
    batcher = TextBatcher()
    encoder = SlowEncoder(1.0)
    try:
        with pytest.raises(RuntimeError, match="encoder failed"):
            batcher.encode(encoder.encode_texts, "boom")
        assert batcher.encode(encoder.encode_texts, "fine").tolist() == [4.0, 1.0]
    finally:
        batcher.close()
