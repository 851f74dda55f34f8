"""Database reads of catalogue pieces for consumers outside the pipeline (training, queries)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas.db import Piece, PieceStatus, SourceFile

# Pieces whose music is current: parsed (awaiting a vector) or indexed. Failed and deleted
# pieces are not part of the catalogue.


@dataclass(frozen=True)
class PieceText:
    """A live piece's metadata and music, detached from the session."""

    id: str
    uri: str
    title: str | None
    composer: str | None
    origin: str | None
    rhythm: str | None
    meter: str | None
    unit_length: str | None
    key: str | None
    tempo: str | None
    music_text: str
    content_sha256: str
    patch_count: int
    extra_fields: dict[str, Any] = field(default_factory=dict)


def live_pieces(session: Session) -> list[PieceText]:
    """Every parsed or indexed piece with its file's uri, in piece id order."""
    rows = session.execute(
        select(Piece, SourceFile.uri)
        .join(SourceFile, SourceFile.id == Piece.file_id)
        .where(Piece.status.in_(PieceStatus.LIVE))
        .order_by(Piece.id)
    )
    return [
        PieceText(
            id=piece.id,
            uri=uri,
            title=piece.title,
            composer=piece.composer,
            origin=piece.origin,
            rhythm=piece.rhythm,
            meter=piece.meter,
            unit_length=piece.unit_length,
            key=piece.key,
            tempo=piece.tempo,
            music_text=piece.music_text,
            content_sha256=piece.content_sha256,
            patch_count=piece.patch_count,
            extra_fields=dict(piece.extra_fields or {}),
        )
        for piece, uri in rows
    ]


def piece_detail(session: Session, piece_id: str) -> tuple[Piece, str] | None:
    """One piece (any status) and its file's uri, or None."""
    row = session.execute(
        select(Piece, SourceFile.uri)
        .join(SourceFile, SourceFile.id == Piece.file_id)
        .where(Piece.id == piece_id)
    ).first()
    return (row[0], row[1]) if row else None
