"""The model registry's rows: register, find, list and change the status of models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from schemas.db import ModelRecord, ModelStatus, VectorCollection, utcnow
from workers.errors import UserError


class ModelNotFoundError(UserError):
    """No registered model answers to the name the user gave."""


def register(
    session: Session,
    *,
    name: str,
    version: str,
    kind: str,
    path: str,
    parent_id: int | None = None,
    status: str = ModelStatus.CANDIDATE,
    data_snapshot: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    notes: str | None = None,
    job_id: int | None = None,
) -> ModelRecord:
    """The model's row, created on first registration (name and version identify it)."""
    existing = session.scalar(
        select(ModelRecord).where(ModelRecord.name == name, ModelRecord.version == version)
    )
    if existing is not None:
        return existing
    record = ModelRecord(
        name=name,
        version=version,
        kind=kind,
        path=path,
        parent_id=parent_id,
        status=status,
        data_snapshot=data_snapshot or {},
        params=params or {},
        metrics=metrics or {},
        notes=notes,
        job_id=job_id,
    )
    session.add(record)
    session.flush()
    return record


def get(session: Session, model_id: int) -> ModelRecord | None:
    return session.get(ModelRecord, model_id)


def find(session: Session, ref: str) -> ModelRecord:
    """A model by id, `name:version`, or name (its newest version)."""
    stmt = select(ModelRecord).order_by(ModelRecord.id.desc())
    if ref.isdigit():
        found = session.get(ModelRecord, int(ref))
    elif ":" in ref:
        name, version = ref.rsplit(":", 1)
        found = session.scalar(
            stmt.where(ModelRecord.name == name, ModelRecord.version == version).limit(1)
        )
    else:
        found = session.scalar(stmt.where(ModelRecord.name == ref).limit(1))
    if found is None:
        raise ModelNotFoundError(
            f"no registered model {ref!r}: `clamp-index models list` shows them; register a "
            "checkpoint directory with `clamp-index models register DIR`"
        )
    return found


def by_path(session: Session, path: str) -> ModelRecord | None:
    return session.scalar(
        select(ModelRecord).where(ModelRecord.path == path).order_by(ModelRecord.id.desc())
    )


def list_models(session: Session, statuses: Sequence[str] | None = None) -> list[ModelRecord]:
    stmt = select(ModelRecord).order_by(ModelRecord.id)
    if statuses:
        stmt = stmt.where(ModelRecord.status.in_(list(statuses)))
    return list(session.scalars(stmt))


def active(session: Session) -> ModelRecord | None:
    return session.scalar(
        select(ModelRecord)
        .where(ModelRecord.status == ModelStatus.ACTIVE)
        .order_by(ModelRecord.promoted_at.desc().nulls_last(), ModelRecord.id.desc())
        .limit(1)
    )


def set_status(session: Session, model_id: int, status: str, notes: str | None = None) -> None:
    values: dict[str, Any] = {"status": status}
    if notes is not None:
        values["notes"] = notes
    if status == ModelStatus.ACTIVE:
        values["promoted_at"] = utcnow()
    session.execute(update(ModelRecord).where(ModelRecord.id == model_id).values(**values))


def make_active(session: Session, model_id: int) -> None:
    """This model serves; any other active one is retired (one collection answers queries)."""
    session.execute(
        update(ModelRecord)
        .where(ModelRecord.status == ModelStatus.ACTIVE, ModelRecord.id != model_id)
        .values(status=ModelStatus.RETIRED)
    )
    set_status(session, model_id, ModelStatus.ACTIVE)


def record_metrics(session: Session, model_id: int, metrics: dict[str, Any]) -> None:
    record = session.get(ModelRecord, model_id)
    if record is not None:
        record.metrics = {**(record.metrics or {}), **metrics}


def in_use(session: Session, model_id: int) -> list[str]:
    """Collections (still in the store) that hold this model's vectors."""
    from schemas.db import CollectionState

    return list(
        session.scalars(
            select(VectorCollection.name).where(
                VectorCollection.model_id == model_id,
                VectorCollection.state.in_(CollectionState.LIVE),
            )
        )
    )
