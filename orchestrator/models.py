"""The model registry's commands: register a checkpoint, resolve, list, show, retire."""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from schemas.db import ModelRecord, ModelStatus
from schemas.settings import Settings
from workers import registry
from workers.database import session_factory, session_scope
from workers.errors import UserError


def model_path(record: ModelRecord) -> Path:
    return Path(record.path)


def register_dir(
    session: Session,
    settings: Settings,
    model_dir: Path,
    *,
    copy: bool = True,
    status: str = ModelStatus.CANDIDATE,
    tokenizer_dir: Path | None = None,
    notes: str | None = None,
) -> ModelRecord:
    """Register a checkpoint directory (copied into the model store unless `copy` is off).

    The copy is what every worker reads; a directory outside the store must stay where it
    is, readable from every worker, for as long as a collection uses it.
    """
    from workers.clamp.loading import describe_model

    model_dir = Path(model_dir).resolve()
    info = describe_model(model_dir)  # refuses what load_clamp would refuse, with the reason
    existing = registry.by_path(session, str(model_dir))
    if existing is not None:
        return existing
    path = model_dir
    if copy:
        path = settings.models_dir.resolve() / f"{info['name']}-{info['version']}"
        if not path.exists():
            staging = path.with_name(path.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(model_dir, staging)
            staging.rename(path)  # readers never see a half-copied model
    params: dict[str, Any] = {"source_dir": str(model_dir)}
    if tokenizer_dir is not None:
        params["tokenizer_dir"] = str(Path(tokenizer_dir).resolve())
    return registry.register(
        session,
        name=str(info["name"]),
        version=str(info["version"]),
        kind=str(info["kind"]),
        path=str(path),
        status=status,
        params=params,
        metrics=dict(info.get("metrics") or {}),
        notes=notes,
    )


def resolve(session: Session, settings: Settings, ref: str) -> ModelRecord:
    """A registered model by id / name[:version], or a checkpoint directory (registered)."""
    as_dir = Path(ref).expanduser()
    if as_dir.is_dir():
        return register_dir(session, settings, as_dir, copy=False)
    return registry.find(session, ref)


@dataclass(frozen=True)
class ModelInfo:
    id: int
    name: str
    version: str
    kind: str
    status: str
    path: str
    parent_id: int | None
    data_snapshot: dict[str, Any]
    params: dict[str, Any]
    metrics: dict[str, Any]
    notes: str | None
    collections: list[str]
    created_at: datetime
    promoted_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["created_at"] = self.created_at.isoformat()
        out["promoted_at"] = self.promoted_at.isoformat() if self.promoted_at else None
        return out


def _info(session: Session, record: ModelRecord) -> ModelInfo:
    return ModelInfo(
        id=record.id,
        name=record.name,
        version=record.version,
        kind=record.kind,
        status=record.status,
        path=record.path,
        parent_id=record.parent_id,
        data_snapshot=dict(record.data_snapshot or {}),
        params=dict(record.params or {}),
        metrics=dict(record.metrics or {}),
        notes=record.notes,
        collections=registry.in_use(session, record.id),
        created_at=record.created_at,
        promoted_at=record.promoted_at,
    )


def list_models(settings: Settings) -> list[ModelInfo]:
    with session_scope(session_factory(settings.resolved_database_url())) as session:
        return [_info(session, r) for r in registry.list_models(session)]


def show(settings: Settings, ref: str) -> ModelInfo:
    with session_scope(session_factory(settings.resolved_database_url())) as session:
        return _info(session, registry.find(session, ref))


def register(
    settings: Settings, model_dir: Path, *, copy: bool, tokenizer_dir: Path | None = None
) -> ModelInfo:
    if not Path(model_dir).is_dir():
        raise UserError(f"no such model directory: {model_dir}")
    with session_scope(session_factory(settings.resolved_database_url())) as session:
        record = register_dir(session, settings, model_dir, copy=copy, tokenizer_dir=tokenizer_dir)
        return _info(session, record)


def retire(settings: Settings, ref: str) -> ModelInfo:
    """Mark a model retired; the active one cannot be (promote or roll back first)."""
    with session_scope(session_factory(settings.resolved_database_url())) as session:
        record = registry.find(session, ref)
        if record.status == ModelStatus.ACTIVE:
            raise UserError(
                f"model {record.name}:{record.version} is serving queries: promote another "
                "model or `clamp-index rollback` first"
            )
        registry.set_status(session, record.id, ModelStatus.RETIRED, notes="retired by hand")
        session.flush()
        session.refresh(record)
        return _info(session, record)
