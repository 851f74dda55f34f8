"""Per-process resources of a worker: settings, DB sessions, the vector store and the model."""

from __future__ import annotations

import atexit
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from schemas.collection import CollectionSpec, collection_name
from schemas.settings import Settings
from workers import sinks
from workers.aliases import SqlAliasRegistry
from workers.database import session_factory, session_scope
from workers.errors import UserError
from workers.vectors import VectorStore, open_vector_store

if TYPE_CHECKING:
    from workers.clamp import ClampEncoder, ModelManifest


class ModelMismatchError(UserError):
    """The active collection was filled by another model than the one configured."""


class ModelNotConfiguredError(UserError):
    pass


def _store_key(settings: Settings) -> str:
    if settings.qdrant_url:
        return f"url:{settings.qdrant_url}"
    if settings.qdrant_path:
        return f"path:{settings.qdrant_path.resolve()}"
    return f"edge:{settings.vectors_dir.resolve()}"


def _encoder_key(settings: Settings) -> str:
    fields = (
        "model_dir",
        "tokenizer_dir",
        "device",
        "precision",
        "patch_budget",
        "data_dir",
        "long_piece",
    )
    return repr([str(getattr(settings, f)) for f in fields])


# A store on disk admits one opener, and a model is loaded once: both are shared per process
# by every context whose settings point at the same store or model.
_stores: dict[str, VectorStore] = {}
_encoders: dict[str, ClampEncoder] = {}
_resources_lock = threading.RLock()


@dataclass
class WorkerContext:
    settings: Settings

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        # Opened on first use: labelling files needs only the model, not a database.
        return session_factory(self.settings.resolved_database_url())

    @property
    def store(self) -> VectorStore:
        key = _store_key(self.settings)
        with _resources_lock:
            if key not in _stores:
                _stores[key] = open_vector_store(self.settings, SqlAliasRegistry(self.sessions))
            return _stores[key]

    @property
    def encoder(self) -> ClampEncoder:
        key = _encoder_key(self.settings)
        with _resources_lock:
            if key not in _encoders:
                _encoders[key] = load_encoder(self.settings)
            return _encoders[key]

    def active_collection(self) -> str:
        """The alias's collection, created for the configured model on first use."""
        manifest = self.encoder.manifest
        store = self.store
        alias = self.settings.collection_alias
        name = store.resolve_alias(alias)
        if name is not None:
            check_same_model(store.collection_meta(name), name, alias, manifest)
            return name
        name = collection_name(alias, manifest.name, manifest.version)
        meta: dict[str, Any] = {
            "model_name": manifest.name,
            "model_version": manifest.version,
            "model_kind": manifest.kind,
            "dim": str(manifest.dim),
            "max_patches": str(manifest.max_patches),
            "precision": self.encoder.precision,
            "long_piece": self.encoder.long_piece,
        }
        store.create_collection(CollectionSpec(name=name, dim=manifest.dim, meta=meta))
        with session_scope(self.sessions) as session:
            sinks.register_collection(
                session,
                name=name,
                model_name=manifest.name,
                model_version=manifest.version,
                dim=manifest.dim,
                meta=meta,
            )
        store.set_alias(alias, name)
        return name


def check_same_model(meta: dict[str, str], name: str, alias: str, manifest: ModelManifest) -> None:
    """Refuse to mix vectors of two models in one collection (or compare across them)."""
    if meta.get("model_version") != manifest.version:
        raise ModelMismatchError(
            f"collection {name!r} (alias {alias!r}) holds vectors of model "
            f"{meta.get('model_name')!r} version {meta.get('model_version')!r}, but the "
            f"configured model is {manifest.name!r} version {manifest.version!r}; vectors of "
            "different models are not comparable. Point CLAMP_INDEX_MODEL_DIR at the original "
            "model, or use another CLAMP_INDEX_COLLECTION_ALIAS."
        )


def model_dir_of(settings: Settings) -> Path:
    """The configured checkpoint directory; unset means the model shipped in the package."""
    if settings.model_dir is None:
        from workers.clamp.pretrained import pretrained_dir

        return pretrained_dir()
    if not settings.model_dir.exists():
        raise ModelNotConfiguredError(
            f"no model at {settings.model_dir}: CLAMP_INDEX_MODEL_DIR must name a CLaMP "
            "checkpoint directory (config.json + weights); unset it to use the shipped model"
        )
    return settings.model_dir


CPU_PATCH_BUDGET = 4096
GPU_PATCH_BUDGET = 65536


def default_patch_budget(device: str) -> int:
    """A forward as large as the device profits from: a GPU wants hundreds of pieces."""
    return GPU_PATCH_BUDGET if device.startswith("cuda") else CPU_PATCH_BUDGET


def load_encoder(settings: Settings) -> ClampEncoder:
    # torch is imported here, not at module import: the orchestrator stays torch-free.
    from workers.clamp import ClampEncoder, load_clamp
    from workers.clamp.encoder import bf16_supported, resolve_device

    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings.device)
    precision = settings.precision
    if precision == "auto":
        precision = "fast" if bf16_supported(device) else "exact"
    loaded = load_clamp(model_dir_of(settings), settings.tokenizer_dir, device=device)
    return ClampEncoder(
        loaded,
        patch_budget=settings.patch_budget or default_patch_budget(device),
        precision=precision,
        device=device,
        long_piece=settings.long_piece,
    )


def get_context(settings: Settings | None = None) -> WorkerContext:
    """A context for these settings; its model and store are loaded once per process."""
    settings = settings or Settings()
    return WorkerContext(settings)


def close_contexts() -> None:
    """Close every open store (releasing its lock) and drop loaded models."""
    with _resources_lock:
        for store in _stores.values():
            store.close()
        _stores.clear()
        _encoders.clear()


atexit.register(close_contexts)
