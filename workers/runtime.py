"""Per-process resources of a worker: settings, DB sessions, the vector store and the model."""

from __future__ import annotations

import atexit
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from schemas.collection import INPUT_PROFILE_META, CollectionSpec, collection_name
from schemas.db import ModelStatus
from schemas.filters import FILTER_PAYLOAD_VERSION, FILTER_VERSION_META
from schemas.settings import Settings
from workers import collection_rows, registry, sinks
from workers.aliases import SqlAliasRegistry
from workers.database import session_factory, session_scope
from workers.errors import UserError
from workers.vectors import CollectionNotFoundError, VectorStore, open_vector_store

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


def _encoder_key(settings: Settings, model: ModelSource) -> str:
    fields = ("device", "precision", "patch_budget", "long_piece", "torch_threads")
    return repr(
        [str(model.path), str(model.tokenizer_dir)] + [str(getattr(settings, f)) for f in fields]
    )


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: a checkpoint directory and, if separate, its tokenizer."""

    path: Path
    tokenizer_dir: Path | None = None


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
        """The configured model (CLAMP_INDEX_MODEL_DIR, else the shipped one)."""
        return self._load(ModelSource(model_dir_of(self.settings), self.settings.tokenizer_dir))

    def encoder_for(self, collection: str) -> ClampEncoder:
        """The model whose vectors fill `collection`: its registry entry, else the configured.

        Either way its manifest must still match what the collection recorded: files edited
        in place under a registered path (a hand-changed `input_profile`) would otherwise
        write vectors of another input into the same collection.
        """
        source = self.model_of(collection)
        # Built before the registry: it must be the configured model.
        encoder = self.encoder if source is None else self._load(source)
        key = (collection, encoder.manifest)
        with self._models_lock:
            checked = key in self._checked_models
        if not checked:
            check_same_model(
                self.store.collection_meta(collection),
                collection,
                self.settings.collection_alias,
                encoder.manifest,
            )
            with self._models_lock:
                self._checked_models.add(key)
        return encoder

    def model_of(self, collection: str) -> ModelSource | None:
        with self._models_lock:
            if collection not in self._collection_models:
                with session_scope(self.sessions) as session:
                    self._collection_models[collection] = _registered_model(session, collection)
            return self._collection_models[collection]

    @cached_property
    def _collection_models(self) -> dict[str, ModelSource | None]:
        return {}  # a collection's model never changes: looked up once per process

    @cached_property
    def _checked_models(self) -> set[tuple[str, ModelManifest]]:
        return set()  # (collection, manifest) pairs check_same_model passed: once per process

    @cached_property
    def _models_lock(self) -> threading.Lock:
        return threading.Lock()

    def _load(self, model: ModelSource) -> ClampEncoder:
        key = _encoder_key(self.settings, model)
        with _resources_lock:
            if key not in _encoders:
                _encoders[key] = load_encoder(self.settings, model)
            return _encoders[key]

    def active_collection(self) -> str:
        """The alias's collection, created for the configured model on first use."""
        store = self.store
        alias = self.settings.collection_alias
        name = store.resolve_alias(alias)
        if name is not None:
            self.refuse_unknown_model(name)
            return name
        encoder = self.encoder
        manifest = encoder.manifest
        name = collection_name(alias, manifest.name, manifest.version)
        meta = collection_meta(manifest, encoder)
        store.create_collection(CollectionSpec(name=name, dim=manifest.dim, meta=meta))
        with session_scope(self.sessions) as session:
            # The first model becomes the registry's active one, so that a later reindex,
            # rollback or promotion knows which files made these vectors.
            record = registry.register(
                session,
                name=manifest.name,
                version=manifest.version,
                kind=manifest.kind,
                path=str(encoder.loaded.model_dir.resolve()),
                status=ModelStatus.ACTIVE,
                params=_tokenizer_param(self.settings.tokenizer_dir),
            )
            if record.status != ModelStatus.ACTIVE:
                registry.make_active(session, record.id)
            sinks.register_collection(
                session,
                name=name,
                model_name=manifest.name,
                model_version=manifest.version,
                dim=manifest.dim,
                meta=meta,
                model_id=record.id,
            )
            collection_rows.mark_activated(session, name)
        store.set_alias(alias, name)
        return name

    def ensure_collection(self, name: str) -> None:
        """Create a collection a reindex planned (planners need not reach the store)."""
        if self.store.collection_exists(name):
            return
        with session_scope(self.sessions) as session:
            row = collection_rows.get(session, name)
            if row is None:
                raise CollectionNotFoundError(f"collection {name!r} is not in the database")
            spec = CollectionSpec(name=name, dim=row.dim, meta=dict(row.meta))
        self.store.create_collection(spec)

    def refuse_unknown_model(self, collection: str) -> None:
        """A configured model the registry never saw must not write into this collection."""
        if self.model_of(collection) is None:
            self.encoder_for(collection)  # built before the registry: same model or refused
            return
        if self.settings.model_dir is None:
            return  # the registry decides which model serves
        with session_scope(self.sessions) as session:
            known = registry.by_path(session, str(self.settings.model_dir.resolve()))
        if known is None:
            check_same_model(
                self.store.collection_meta(collection),
                collection,
                self.settings.collection_alias,
                self.encoder.manifest,
            )


def collection_meta(manifest: ModelManifest, encoder: ClampEncoder) -> dict[str, Any]:
    """What a collection records about the vectors in it."""
    return {
        "model_name": manifest.name,
        "model_version": manifest.version,
        "model_kind": manifest.kind,
        INPUT_PROFILE_META: manifest.input_profile,
        "dim": str(manifest.dim),
        "max_patches": str(manifest.max_patches),
        "precision": encoder.precision,
        "long_piece": encoder.long_piece,
        FILTER_VERSION_META: FILTER_PAYLOAD_VERSION,
    }


def _tokenizer_param(tokenizer_dir: Path | None) -> dict[str, Any]:
    return {"tokenizer_dir": str(tokenizer_dir.resolve())} if tokenizer_dir else {}


def _registered_model(session: Session, collection: str) -> ModelSource | None:
    row = collection_rows.get(session, collection)
    if row is None or row.model_id is None:
        return None
    record = registry.get(session, row.model_id)
    if record is None:
        return None
    tokenizer = (record.params or {}).get("tokenizer_dir")
    return ModelSource(Path(record.path), Path(tokenizer) if tokenizer else None)


def check_same_model(meta: dict[str, str], name: str, alias: str, manifest: ModelManifest) -> None:
    """Refuse to mix vectors of two models in one collection (or compare across them).

    The version comes from the weights, so the input profile is checked apart from it: the
    same weights reading another rewrite of the music make other vectors. Collections made
    before the profile was recorded are checked on the version alone.
    """
    if meta.get("model_version") != manifest.version:
        raise ModelMismatchError(
            f"collection {name!r} (alias {alias!r}) holds vectors of model "
            f"{meta.get('model_name')!r} version {meta.get('model_version')!r}, but the "
            f"configured model is {manifest.name!r} version {manifest.version!r}; vectors of "
            "different models are not comparable. Point CLAMP_INDEX_MODEL_DIR at the original "
            "model, or use another CLAMP_INDEX_COLLECTION_ALIAS."
        )
    recorded = meta.get(INPUT_PROFILE_META)
    if recorded is not None and recorded != manifest.input_profile:
        raise ModelMismatchError(
            f"collection {name!r} (alias {alias!r}) holds vectors of model "
            f"{manifest.name!r} version {manifest.version!r} read with input profile "
            f"{recorded!r}, but its manifest now says input_profile "
            f"{manifest.input_profile!r}; the same weights make other vectors from another "
            f"input. Restore input_profile {recorded!r} in the model's manifest.json, or "
            "train a model with the new profile (its version differs) and reindex."
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


def load_encoder(settings: Settings, model: ModelSource | None = None) -> ClampEncoder:
    # torch is imported here, not at module import: the orchestrator stays torch-free.
    from workers.clamp import ClampEncoder, load_clamp
    from workers.clamp.encoder import bf16_supported, resolve_device

    if model is None:
        model = ModelSource(model_dir_of(settings), settings.tokenizer_dir)
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings.device)
    precision = settings.precision
    if precision == "auto":
        precision = "fast" if bf16_supported(device) else "exact"
    loaded = load_clamp(model.path, model.tokenizer_dir, device=device)
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
