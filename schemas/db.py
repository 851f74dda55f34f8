"""SQLAlchemy 2.0 tables: files, pieces, jobs, work, failures, vectors, models, schedules."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """A stored time with its zone: SQLite returns naive datetimes, all of them UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class FileStatus:
    PENDING = "pending"
    PARSED = "parsed"
    FAILED = "failed"
    DELETED = "deleted"


class PieceStatus:
    PARSED = "parsed"
    INDEXED = "indexed"
    FAILED = "failed"
    DELETED = "deleted"

    # A tune the catalogue holds: every serving or building collection must have it.
    LIVE = (PARSED, INDEXED)


class JobStatus:
    # Still recording its files: workers may already run its first batches, but it cannot
    # be done before its scan is.
    SCANNING = "scanning"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # stopped by Ctrl-C / SIGTERM or a dead process; resumable

    ENDED = (DONE, FAILED, INTERRUPTED)


class JobKind:
    INGEST = "ingest"
    RETRY = "retry"
    # Fills a new collection from the pieces in the database, then swaps the alias: it
    # ends when the swap is done, not when its ledger work is.
    REINDEX = "reindex"
    # Trains a candidate, gates it, and starts its reindex if it wins; ends by itself.
    TRAIN = "train"

    CLOSED_BY_HANDLER = (REINDEX, TRAIN)


class WorkState:
    PENDING = "pending"
    LEASED = "leased"
    DONE = "done"
    FAILED = "failed"
    # Taken over by a later job (a resumed ingest); the later job's row does the work.
    SUPERSEDED = "superseded"

    OPEN = (PENDING, LEASED)


class WorkKind:
    PARSE = "parse"  # item_key: source file id
    ENCODE = "encode"  # item_key: piece id
    DELETE = "delete"  # item_key: piece id whose point must go
    TRAIN = "train"  # item_key: the train job's id (one item: the whole run, under a lease)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.RUNNING)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    files_total: Mapped[int] = mapped_column(Integer, default=0)
    files_skipped: Mapped[int] = mapped_column(Integer, default=0)
    files_failed: Mapped[int] = mapped_column(Integer, default=0)
    pieces_total: Mapped[int] = mapped_column(Integer, default=0)
    pieces_indexed: Mapped[int] = mapped_column(Integer, default=0)
    pieces_failed: Mapped[int] = mapped_column(Integer, default=0)
    # Vectors computed, vectors taken from identical music, points removed (deleted tunes).
    pieces_encoded: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    pieces_reused: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    pieces_removed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SourceFile(Base):
    __tablename__ = "source_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uri: Mapped[str] = mapped_column(Text, unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime: Mapped[float] = mapped_column(Float)
    sha256: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(16), default="abc")
    encoding: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=FileStatus.PENDING)
    piece_count: Mapped[int] = mapped_column(Integer, default=0)
    last_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    __table_args__ = (Index("ix_source_files_job_status", "last_job_id", "status"),)


class Piece(Base):
    __tablename__ = "pieces"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("source_files.id", ondelete="CASCADE"))
    index_in_file: Mapped[int] = mapped_column(Integer)
    x_number: Mapped[str | None] = mapped_column(String(32))
    title: Mapped[str | None] = mapped_column(Text)
    composer: Mapped[str | None] = mapped_column(Text)
    origin: Mapped[str | None] = mapped_column(Text)
    rhythm: Mapped[str | None] = mapped_column(Text)
    meter: Mapped[str | None] = mapped_column(String(64))
    unit_length: Mapped[str | None] = mapped_column(String(32))
    key: Mapped[str | None] = mapped_column(String(64))
    tempo: Mapped[str | None] = mapped_column(String(128))
    extra_fields: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # What the file was and what turned it into ABC, so results can be traced and re-made.
    source_format: Mapped[str] = mapped_column(String(16), default="abc", server_default="abc")
    converter: Mapped[str | None] = mapped_column(String(128))
    abc_text: Mapped[str] = mapped_column(Text)  # the ABC we read (converted if not ABC)
    music_text: Mapped[str] = mapped_column(Text)
    content_sha256: Mapped[str] = mapped_column(String(64), index=True)
    patch_count: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=PieceStatus.PARSED)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    __table_args__ = (
        UniqueConstraint("file_id", "index_in_file", name="uq_pieces_file_index"),
        Index("ix_pieces_job_status", "job_id", "status"),
    )


class Failure(Base):
    __tablename__ = "failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    file_id: Mapped[int | None] = mapped_column(ForeignKey("source_files.id", ondelete="CASCADE"))
    piece_id: Mapped[str | None] = mapped_column(String(32))
    uri: Mapped[str] = mapped_column(Text)
    stage: Mapped[str] = mapped_column(String(16))
    error_class: Mapped[str] = mapped_column(String(128))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class IndexState(Base):
    """Which model's vector of a piece sits in which collection."""

    __tablename__ = "index_state"

    piece_id: Mapped[str] = mapped_column(
        ForeignKey("pieces.id", ondelete="CASCADE"), primary_key=True
    )
    collection: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64))
    content_sha256: Mapped[str] = mapped_column(String(64))
    indexed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_index_state_collection_sha", "collection", "content_sha256"),)


class CollectionState:
    BUILDING = "building"  # a reindex is filling it; queries never see it
    READY = "ready"  # complete; active when the alias names it, else a rollback target
    FAILED = "failed"  # its reindex failed a check; never swapped in
    REMOVED = "removed"  # dropped from the store by retention or by hand

    LIVE = (BUILDING, READY)


class VectorCollection(Base):
    """Every collection ever built and the model that filled it."""

    __tablename__ = "vector_collections"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    dim: Mapped[int] = mapped_column(Integer)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The registered model that fills it (None: the configured model, before the registry).
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"))
    state: Mapped[str] = mapped_column(
        String(16), default=CollectionState.READY, server_default=CollectionState.READY
    )
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class VectorAlias(Base):
    """The embedded store's alias: one row naming the active collection (shard directory)."""

    __tablename__ = "vector_aliases"

    alias: Mapped[str] = mapped_column(String(128), primary_key=True)
    collection: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class WorkItem(Base):
    """One unit of work in the ledger: claimed under a lease, completed under its token.

    The queue only wakes workers; this row is the truth about what is left to do.
    """

    __tablename__ = "work_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    queue: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    item_key: Mapped[str] = mapped_column(String(64))
    # Encode work: the collection to write (None: the alias's active one at encode time).
    collection: Mapped[str | None] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), default=WorkState.PENDING)
    holder: Mapped[str | None] = mapped_column(String(128))
    claim_token: Mapped[str | None] = mapped_column(String(32))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Size of the claim this item was last taken in, and the largest claim it may join
    # after its holder died with it (halved each time: bisecting for a poison item).
    batch_size: Mapped[int] = mapped_column(Integer, default=0)
    claim_limit: Mapped[int | None] = mapped_column(Integer)
    lost_leases: Mapped[int] = mapped_column(Integer, default=0)
    solo_losses: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("job_id", "kind", "item_key", name="uq_work_items_job_kind_key"),
        Index("ix_work_items_queue_state", "queue", "state", "claim_limit", "id"),
        Index("ix_work_items_job_state", "job_id", "state"),
        Index("ix_work_items_state_lease", "state", "lease_until"),
    )


class ModelStatus:
    CANDIDATE = "candidate"  # trained or registered, not serving
    ACTIVE = "active"  # its collection answers queries
    RETIRED = "retired"  # replaced or withdrawn; its files may be pruned
    REJECTED = "rejected"  # lost the evaluation gate (the reason is in `notes`)


class ModelRecord(Base):
    """A model in the registry: where its files are, where it came from, how good it is."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)  # checkpoint directory every worker can read
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"))
    status: Mapped[str] = mapped_column(String(16), default=ModelStatus.CANDIDATE)
    # The catalogue the model saw: {"pieces": n, "sha256": hash of the sorted content hashes}.
    data_snapshot: Mapped[dict[str, Any]] = mapped_column(default=dict)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    notes: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (UniqueConstraint("name", "version", name="uq_models_name_version"),)


class Source(Base):
    """A catalogue root that is rescanned incrementally on its schedule."""

    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ScheduleAction:
    RESCAN = "rescan"  # ingest a source's root again (incremental)
    REINDEX = "reindex"  # blue/green rebuild of the active collection
    TRAIN = "train"  # retrain, gate, promote
    # Runs nothing and records a run: checks that a scheduler deployment fires (and is what
    # the leader-election tests schedule). Never implied: it must be asked for by name.
    NOOP = "noop"

    ALL = (RESCAN, REINDEX, TRAIN, NOOP)


class RunStatus:
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    # Not run: the schedule's previous run was still going when this slot came due.
    SKIPPED = "skipped"
    # The process stopped (SIGTERM) before the action ended.
    INTERRUPTED = "interrupted"
    # Started by a leader that lost its lease before recording an end (it died or hung).
    ABANDONED = "abandoned"

    ENDED = (DONE, FAILED, SKIPPED, INTERRUPTED, ABANDONED)


class Schedule(Base):
    """When an action runs: every N seconds, on a cron line, or after N new pieces."""

    __tablename__ = "schedules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    action: Mapped[str] = mapped_column(String(16))
    source_id: Mapped[int | None] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"))
    every_s: Mapped[float | None] = mapped_column(Float)
    cron: Mapped[str | None] = mapped_column(String(128))
    after_pieces: Mapped[int | None] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    next_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class ScheduleRun(Base):
    """One firing of a schedule; unique per slot, so two leaders can never both run it."""

    __tablename__ = "schedule_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    schedule_id: Mapped[int] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"))
    slot_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    leader: Mapped[str] = mapped_column(String(128))
    fencing_token: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.RUNNING)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("schedule_id", "slot_at", name="uq_schedule_runs_slot"),
        # Each tick asks which schedules still have a run going.
        Index("ix_schedule_runs_status", "status", "schedule_id"),
    )


class LeaderLease(Base):
    """Who leads a role (the scheduler) until when; the token grows at every change of hands."""

    __tablename__ = "leader_leases"

    role: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    fencing_token: Mapped[int] = mapped_column(Integer)
    lease_until: Mapped[datetime] = mapped_column(DateTime(timezone=True))
