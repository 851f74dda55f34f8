"""The plain functions each task runs: parse files into pieces, encode pieces into vectors."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas.collection import point_id
from schemas.db import FileStatus, Piece, SourceFile
from schemas.filters import filter_payload
from workers import collection_rows, sinks
from workers.abc import (
    AbcDecodeError,
    ParsedPiece,
    PieceError,
    decode_abc_bytes,
    parse_abc_text,
)
from workers.convert import SUPPORTED_SUFFIXES, ConversionError, convert_to_abc
from workers.database import session_scope
from workers.limits import ItemTimeoutError, time_limit
from workers.runtime import WorkerContext


class FileTooLargeError(ValueError):
    pass


def read_source(path: Path, max_bytes: int) -> bytes:
    """Read a source file, refusing ones over the size limit before loading them."""
    size = path.stat().st_size
    if size > max_bytes:
        raise FileTooLargeError(
            f"file is {size:,} bytes, over the limit of {max_bytes:,} (CLAMP_INDEX_MAX_FILE_BYTES)"
        )
    with path.open("rb") as fh:
        return fh.read(max_bytes + 1)


@dataclass(frozen=True)
class ParseOutcome:
    to_encode: list[str]
    removed: list[str]
    pieces: int
    failures: int


def parse_files(
    ctx: WorkerContext,
    job_id: int,
    file_ids: Sequence[int],
    finish: Callable[[Session, ParseOutcome], None] | None = None,
) -> ParseOutcome:
    """Parse each file on its own: one bad file or tune never stops the others.

    Files are read and parsed before any write, so SQLite's write lock is held for the
    short final transaction only, not while converters run. That transaction takes only
    files still pending (another job may have parsed one meanwhile), and runs `finish`, so
    the ledger records the work as done exactly when the parse results commit.
    """
    with session_scope(ctx.sessions) as session:
        found = session.scalars(select(SourceFile).where(SourceFile.id.in_(list(file_ids))))
        sources = [s for s in found if s.status == FileStatus.PENDING]
    order = {file_id: i for i, file_id in enumerate(file_ids)}
    sources.sort(key=lambda s: order[s.id])
    results = [_parse_one(ctx, source) for source in sources]
    with session_scope(ctx.sessions) as session:
        still_pending = set(
            session.scalars(
                select(SourceFile.id)
                .where(
                    SourceFile.id.in_([s.id for s in sources]),
                    SourceFile.status == FileStatus.PENDING,
                )
                .with_for_update(key_share=True)
            )
        )
        results = [r for r in results if r.mark.file_id in still_pending]
        # Earlier failures of these files are superseded by what this attempt finds.
        sinks.resolve_failures(session, file_ids=[r.mark.file_id for r in results])
        for result in results:
            for failure in result.failures:
                sinks.record_failure(session, job_id=job_id, **failure)
        parsed = [r.parsed for r in results if r.parsed is not None]
        to_encode, removed = sinks.upsert_pieces(session, job_id=job_id, files=parsed)
        sinks.mark_files(session, [r.mark for r in results])
        outcome = ParseOutcome(
            to_encode=to_encode,
            removed=removed,
            pieces=sum(len(p.pieces) for p in parsed),
            failures=sum(len(r.failures) for r in results),
        )
        if finish is not None:
            finish(session, outcome)
    return outcome


@dataclass(frozen=True)
class _FileResult:
    mark: sinks.FileMark
    parsed: sinks.ParsedFile | None
    failures: list[dict[str, Any]]  # keyword arguments of sinks.record_failure


def _parse_one(ctx: WorkerContext, source: SourceFile) -> _FileResult:
    """Read, convert and parse one file; every problem becomes a failure, never a raise."""
    where = {"file_id": source.id, "uri": source.uri}
    try:
        with time_limit(ctx.settings.parse_timeout_s, "reading and parsing this file"):
            data = read_source(Path(source.uri), ctx.settings.max_file_bytes)
            text, encoding, origin = read_as_abc(
                data, Path(source.uri).suffix, ctx.settings.parse_timeout_s
            )
            results = parse_abc_text(text)
    except (OSError, FileTooLargeError, AbcDecodeError, ConversionError, ItemTimeoutError) as exc:
        failure = {
            **where,
            "stage": _failed_stage(exc),
            "error_class": type(exc).__name__,
            "message": _describe(exc),
        }
        return _FileResult(sinks.FileMark(source.id, FileStatus.FAILED), None, [failure])
    good = [r for r in results if isinstance(r, ParsedPiece)]
    failures = [
        {**where, "stage": "parse", "error_class": bad.error_class, "message": bad.message}
        for bad in results
        if isinstance(bad, PieceError)
    ]
    mark = sinks.FileMark(
        source.id,
        FileStatus.PARSED if good else FileStatus.FAILED,
        encoding=encoding,
        piece_count=len(good),
    )
    return _FileResult(mark, sinks.ParsedFile(source, good, origin), failures)


def read_as_abc(
    data: bytes, suffix: str, timeout_s: float
) -> tuple[str, str | None, sinks.SourceOrigin]:
    """ABC text of a source file (converting MusicXML/MIDI), its text encoding, its origin."""
    source_format = SUPPORTED_SUFFIXES.get(suffix.lower(), "abc")
    if source_format == "abc":
        text, encoding = decode_abc_bytes(data)
        return text, encoding, sinks.SourceOrigin("abc", None)
    converted = convert_to_abc(data, suffix, timeout_s=timeout_s or 60.0)
    return (
        converted.abc_text,
        None,
        sinks.SourceOrigin(converted.source_format, converted.converter),
    )


def _failed_stage(exc: BaseException) -> str:
    if isinstance(exc, ConversionError):
        return "convert"
    if isinstance(exc, ItemTimeoutError):
        return "parse"
    return "read"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot read file: {exc.strerror}"
    return str(exc) or type(exc).__name__


def piece_payload(piece: Piece, uri: str) -> dict[str, object]:
    """What a query returns without touching the database, and what filters can use."""
    return {
        "piece_id": piece.id,
        "source": uri,
        "index_in_file": piece.index_in_file,
        "x_number": piece.x_number,
        "title": piece.title,
        "composer": piece.composer,
        "origin": piece.origin,
        "rhythm": piece.rhythm,
        "meter": piece.meter,
        "key": piece.key,
        "file_name": os.path.basename(uri),
        **filter_payload(
            uri=uri,
            source_format=piece.source_format,
            key=piece.key,
            meter=piece.meter,
            rhythm=piece.rhythm,
            composer=piece.composer,
            origin=piece.origin,
        ),
    }


@dataclass(frozen=True)
class EncodeOutcome:
    indexed: list[str]  # piece ids now in the collection
    failures: int
    collection: str
    fresh: frozenset[str]  # of those, the ones whose vector was computed (not reused)


def encode_pieces(
    ctx: WorkerContext,
    piece_jobs: Mapping[str, int],
    collection: str | None = None,
    finish: Callable[[Session, EncodeOutcome], None] | None = None,
) -> EncodeOutcome:
    """Encode pieces (id -> job) in model batches, upsert their points, mark them indexed.

    The points go in first (idempotent: deterministic ids), then one transaction records
    the outcome and runs `finish` (the ledger's completion), so work is only ever marked
    done after its vectors are stored.
    """
    # Work for no collection feeds whichever serves when it runs. Work for a named one (a
    # reindex, a repair) takes any live piece, and sets pieces' status only if it serves.
    explicit = collection is not None
    collection = collection or ctx.active_collection()
    if explicit:
        ctx.ensure_collection(collection)
    serving = not explicit or ctx.store.resolve_alias(ctx.settings.collection_alias) == collection
    encoder = ctx.encoder_for(collection)
    piece_ids = list(piece_jobs)
    with session_scope(ctx.sessions) as session:
        rows = sinks.load_pieces(session, piece_ids, any_live=explicit)
    vectors_by_sha = _known_vectors(ctx, collection, {p.content_sha256 for p, _ in rows})
    patches: dict[str, np.ndarray] = {}
    failed_sha: dict[str, Exception] = {}
    fresh: list[str] = []  # pieces whose vector is computed here; the rest reuse one
    for piece, _ in rows:
        sha = piece.content_sha256
        if sha in vectors_by_sha or sha in patches or sha in failed_sha:
            continue  # identical music is encoded once
        fresh.append(piece.id)
        try:
            if ctx.settings.crash_on_piece and piece.id == ctx.settings.crash_on_piece:
                os._exit(70)  # fault injection for tests: a piece that kills its worker
            patches[sha] = encoder.music_patches(piece.music_text)
        except Exception as exc:  # a piece that cannot be patched must not sink its batch
            failed_sha[sha] = exc
    if patches:
        encoded = encode_halving(encoder.encode_music, list(patches.values()))
        for sha, vector in zip(patches, encoded, strict=True):
            if np.isfinite(vector).all() and np.any(vector):
                vectors_by_sha[sha] = vector
            else:  # one bad vector must fail its piece, not the store's whole batch
                failed_sha[sha] = ValueError(
                    "the model produced a non-finite or zero vector for this piece; with "
                    "CLAMP_INDEX_PRECISION=fast on an fp16 GPU, try exact"
                )
    ok_rows = [(p, uri) for p, uri in rows if p.content_sha256 in vectors_by_sha]
    bad_rows = [(p, uri) for p, uri in rows if p.content_sha256 in failed_sha]
    store = ctx.store
    step = ctx.settings.upsert_batch
    for start in range(0, len(ok_rows), step):
        chunk = ok_rows[start : start + step]
        store.upsert(
            collection,
            [point_id(p.id) for p, _ in chunk],
            np.stack([vectors_by_sha[p.content_sha256] for p, _ in chunk]),
            [piece_payload(p, uri) for p, uri in chunk],
        )
    with session_scope(ctx.sessions) as session:
        for piece, uri in bad_rows:
            exc = failed_sha[piece.content_sha256]
            sinks.fail_piece(
                session, piece_jobs[piece.id], piece, uri, exc, str(exc), primary=serving
            )
        marked, deleted = sinks.mark_indexed(
            session,
            pieces=[p for p, _ in ok_rows],
            collection=collection,
            model_version=encoder.manifest.version,
            any_live=explicit,
            set_status=serving,
        )
        outcome = EncodeOutcome(
            indexed=marked,
            failures=len(bad_rows),
            collection=collection,
            fresh=frozenset(fresh) - {p.id for p, _ in bad_rows},
        )
        if finish is not None:
            finish(session, outcome)
    if deleted:  # deleted while being encoded: the point just written must not answer
        store.delete(collection, [point_id(pid) for pid in deleted])
    return outcome


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)


def encode_halving(
    encode: Callable[[list[np.ndarray]], np.ndarray], pieces: list[np.ndarray]
) -> np.ndarray:
    """encode(pieces), halving the batch on a device out-of-memory error until it fits.

    A single piece that still does not fit raises: its work item is then retried in a
    smaller claim and, if it keeps failing alone, recorded as a failure; never dropped.
    """
    try:
        return encode(pieces)
    except Exception as exc:
        if len(pieces) <= 1 or not is_out_of_memory(exc):
            raise
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # free the failed batch's activations before retrying
    middle = len(pieces) // 2
    return np.concatenate(
        [encode_halving(encode, pieces[:middle]), encode_halving(encode, pieces[middle:])]
    )


def _known_vectors(ctx: WorkerContext, collection: str, shas: set[str]) -> dict[str, np.ndarray]:
    """Vectors this collection already holds for identical music (same model by construction)."""
    if not shas:
        return {}
    with session_scope(ctx.sessions) as session:
        donors = sinks.indexed_pieces_by_content(session, collection, shas)
    if not donors:
        return {}
    found = ctx.store.retrieve_vectors(collection, [point_id(pid) for pid in donors.values()])
    return {sha: found[point_id(pid)] for sha, pid in donors.items() if point_id(pid) in found}


def delete_points(
    ctx: WorkerContext,
    piece_ids: Sequence[str],
    finish: Callable[[Session], None] | None = None,
) -> None:
    """Remove the points of deleted pieces from the active collection.

    Only pieces still deleted at commit time lose their point: a tune that came back (and
    may be re-indexed already) keeps it.
    """
    with session_scope(ctx.sessions) as session:
        gone = sinks.still_deleted(session, piece_ids)
        if gone:
            # The serving collection and any a reindex is building: a deleted tune must
            # not come back with the next swap.
            targets = set(collection_rows.live_names(session))
            alias_target = ctx.store.resolve_alias(ctx.settings.collection_alias)
            targets |= {alias_target} if alias_target else set()
            for target in sorted(targets):
                if ctx.store.collection_exists(target):
                    ctx.store.delete(target, [point_id(p) for p in gone])
        sinks.forget_index_state(session, gone)
        if finish is not None:
            finish(session)
