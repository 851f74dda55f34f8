"""Per-item wall-clock limits, so one pathological file cannot stall a worker."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class ItemTimeoutError(RuntimeError):
    """Not a TimeoutError on purpose: the input is slow, not the infrastructure; never retried."""


@contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise ItemTimeoutError if the block runs longer than `seconds`.

    Uses SIGALRM, so it applies on the main thread only (embedded CLI, solo and prefork
    workers); elsewhere the block runs unbounded and Celery's task time limit is the backstop.
    """
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    message = (
        f"{what} took longer than {seconds:g} s (CLAMP_INDEX_PARSE_TIMEOUT_S); "
        "the file is probably pathological"
    )
    fired = False

    def on_alarm(_signum: int, _frame: FrameType | None) -> None:
        nonlocal fired
        fired = True
        raise ItemTimeoutError(message)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    # The alarm can land inside a finalizer, which swallows the exception: still fail.
    if fired:
        raise ItemTimeoutError(message)
