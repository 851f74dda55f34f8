"""Training records from the catalogue's live pieces: metadata text paired with their music."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy.orm import Session

from orchestrator.training.data import TuneRecord, has_text, record_from_header
from workers.abc import AbcHeader
from workers.piece_reads import PieceText, live_pieces


def header_of(piece: PieceText) -> AbcHeader:
    """The stored header fields of a piece, as the ABC reader produced them."""
    extra = {
        str(k): [str(v) for v in (values if isinstance(values, list) else [values])]
        for k, values in piece.extra_fields.items()
    }
    return AbcHeader(
        title=piece.title,
        composer=piece.composer,
        origin=piece.origin,
        rhythm=piece.rhythm,
        meter=piece.meter,
        unit_length=piece.unit_length,
        key=piece.key,
        tempo=piece.tempo,
        extra=extra,
    )


def record_from_row(piece: PieceText) -> TuneRecord:
    # No collection: a catalogue folder name says nothing a query would name, and the
    # music21 collection quirks (Essen's key-signature-only K:) must not apply to it.
    return record_from_header(
        header_of(piece), piece.music_text, piece.patch_count, collection="", source=piece.uri
    )


def records_from_rows(pieces: Iterable[PieceText]) -> list[TuneRecord]:
    """One record per distinct tune (first copy wins), only tunes with some text to pair."""
    seen: set[str] = set()
    records: list[TuneRecord] = []
    for piece in pieces:
        record = record_from_row(piece)
        if record.key_hash in seen or not has_text(record):
            continue
        seen.add(record.key_hash)
        records.append(record)
    return records


def records_from_pieces(session: Session) -> list[TuneRecord]:
    """Training records of every live (parsed or indexed) piece of the catalogue."""
    return records_from_rows(live_pieces(session))


def data_snapshot(records: Sequence[TuneRecord]) -> dict[str, Any]:
    """Which tunes a run saw: their count and a sha256 over their sorted content keys."""
    keys = sorted(r.key_hash for r in records)
    return {"pieces": len(keys), "sha256": hashlib.sha256("".join(keys).encode()).hexdigest()}
