"""Ingest jobs submitted over HTTP: where their files may come from, and who runs them.

Embedded mode: the server owns the vector store, so its own background thread drains the
ledger, one job after another, while queries go on. (Distributed mode needs nothing here:
`jobs.ingest` plans and wakes the Celery workers.)
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from schemas.settings import Settings
from workers.database import session_factory
from workers.errors import BadArgumentError, UserError

log = logging.getLogger("clamp_index.api")

_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")


class PathNotAllowedError(UserError):
    """A request named a path outside every catalogue root (HTTP 403)."""


def allowed_paths(settings: Settings, raw: Sequence[str]) -> list[Path]:
    """The request's paths, resolved, each under a catalogue root, or an error saying why."""
    if not raw:
        raise BadArgumentError("give at least one path to ingest")
    roots = [root.resolve() for root in settings.catalogue_roots]
    if not roots:
        raise PathNotAllowedError(
            "ingest by path is off on this server: no catalogue root is configured; start it "
            "with `clamp-index serve --root DIR` (or CLAMP_INDEX_CATALOGUE_ROOTS='[\"DIR\"]'), "
            "or upload the files to POST /ingest/files"
        )
    paths: list[Path] = []
    for text in raw:
        if "\0" in text or not text.strip():
            raise BadArgumentError(f"not a usable path: {text!r}")
        path = Path(text)
        if not path.is_absolute():
            raise BadArgumentError(f"paths must be absolute, got {text!r}")
        # resolve() follows symlinks and '..', so a link inside a root cannot lead outside.
        resolved = path.resolve()
        if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
            raise PathNotAllowedError(
                f"{text} is not under a catalogue root of this server "
                f"({', '.join(map(str, roots))}); add one with `clamp-index serve --root DIR`"
            )
        if not resolved.exists():
            raise BadArgumentError(f"no such file or directory: {text}")
        paths.append(resolved)
    return paths


def save_uploads(settings: Settings, files: Sequence[tuple[str, bytes]]) -> Path:
    """Write uploaded files into a fresh folder of the data dir; names are sanitised."""
    if not files:
        raise BadArgumentError("no files were uploaded")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    folder = settings.data_dir.resolve() / "uploads" / f"{stamp}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    used: set[str] = set()
    for index, (name, data) in enumerate(files):
        base = _UNSAFE.sub("_", Path(name or "upload").name).strip(" .") or "upload"
        if base in used:
            base = f"{index}-{base}"
        used.add(base)
        (folder / base).write_bytes(data)
    return folder


class EmbeddedJobRunner:
    """One background thread that drains the ledger whenever a job is submitted."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._submit_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="embedded-jobs", daemon=True)

    def start(self) -> None:
        self._wake.set()  # work an earlier process left in the ledger is taken up at once
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)

    def submit(self, paths: Sequence[Path]) -> int:
        """Plan an ingest of paths and have the thread run it; returns the job id."""
        from orchestrator.jobs import plan_ingest

        sessions = session_factory(self.settings.resolved_database_url())
        with self._submit_lock:  # two plans at once would both take over dead jobs
            plan = plan_ingest(sessions, self.settings, paths, resume_dead_jobs=True)
        self._wake.set()
        return plan.job_id

    def _loop(self) -> None:
        from orchestrator.jobs import drain_embedded

        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                drain_embedded(self.settings, self._stop)
            except Exception:
                # The work stays in the ledger; the next submission (or restart) resumes it.
                log.exception("embedded ingest stopped")
