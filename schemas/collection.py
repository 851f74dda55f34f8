"""Vector collection spec: distance, payload indexes, and the point-id and naming rules."""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, field
from typing import Literal

from schemas.filters import FILTER_PAYLOAD_INDEXES, PayloadType

# Fixed forever: changing it would orphan every point already written.
POINT_NAMESPACE = uuid.UUID("6f1c2b9e-4a57-5d2e-9c3b-1a0e7c5d8f42")

# Fields queries filter on (exact ids, and the normalised copies people filter on through
# schemas.filters); each gets a payload index in both stores.
PAYLOAD_INDEXES: dict[str, PayloadType] = {
    "piece_id": "keyword",
    "source": "keyword",
    "index_in_file": "integer",
    **FILTER_PAYLOAD_INDEXES,
}


# The collection meta key for the model's input profile (workers.abc.profiles): the version
# names the weights, and the same weights reading another rewrite of the music differ.
INPUT_PROFILE_META = "input_profile"


def point_id(piece_id: str) -> str:
    """Deterministic point id, so re-upserting a piece overwrites instead of duplicating."""
    return str(uuid.uuid5(POINT_NAMESPACE, piece_id))


def collection_name(
    alias: str, model_name: str, model_version: str, build: int | None = None
) -> str:
    """A store-safe collection name for one model's vectors behind an alias.

    Versions such as "0.1.0+734a6ea8" hold characters stores refuse, and a readable prefix
    alone could make two models collide, so the name ends in a hash of name and version.
    A reindex adds its job number: rebuilding with the same model makes a new collection.
    """
    label = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{model_name}-{model_version}")
    label = re.sub(r"\.{2,}", ".", label).strip("-.")
    digest = hashlib.sha256(f"{model_name}\0{model_version}".encode()).hexdigest()[:8]
    suffix = f"-b{build}" if build is not None else ""
    return f"{alias[:48]}--{label[:56]}-{digest}{suffix}"


@dataclass(frozen=True)
class CollectionSpec:
    name: str
    dim: int
    distance: Literal["cosine"] = "cosine"
    payload_indexes: dict[str, PayloadType] = field(default_factory=lambda: dict(PAYLOAD_INDEXES))
    # Model metadata recorded with the collection (model name, version, precision...).
    meta: dict[str, str] = field(default_factory=dict)
