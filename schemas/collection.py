"""Vector collection spec: distance, payload indexes, and the point-id rule."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Literal

# Fixed forever: changing it would orphan every point already written.
POINT_NAMESPACE = uuid.UUID("6f1c2b9e-4a57-5d2e-9c3b-1a0e7c5d8f42")

PayloadType = Literal["keyword", "integer", "float", "text"]

# Fields users filter on; each gets a payload index in both stores.
PAYLOAD_INDEXES: dict[str, PayloadType] = {
    "piece_id": "keyword",
    "source": "keyword",
    "key": "keyword",
    "meter": "keyword",
    "rhythm": "keyword",
    "composer": "keyword",
    "origin": "keyword",
    "index_in_file": "integer",
}


def point_id(piece_id: str) -> str:
    """Deterministic point id, so re-upserting a piece overwrites instead of duplicating."""
    return str(uuid.uuid5(POINT_NAMESPACE, piece_id))


@dataclass(frozen=True)
class CollectionSpec:
    name: str
    dim: int
    distance: Literal["cosine"] = "cosine"
    payload_indexes: dict[str, PayloadType] = field(default_factory=lambda: dict(PAYLOAD_INDEXES))
    # Model metadata recorded with the collection (model name, version, precision...).
    meta: dict[str, str] = field(default_factory=dict)
