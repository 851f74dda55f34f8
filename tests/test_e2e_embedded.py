"""Embedded end to end on all of WikiMT: counts agree everywhere, every tune finds itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from orchestrator.search import SearchService
from schemas.db import Piece, PieceStatus
from tests.conftest import run_cli, settings_from_env, wikimt_entries
from workers.abc import ParsedPiece, parse_abc_text
from workers.database import session_scope
from workers.runtime import close_contexts, get_context

pytestmark = pytest.mark.slow


def test_wikimt_ingest_counts_and_self_retrieval(
    wikimt_dir: Path, embedded_env: dict[str, str]
) -> None:
    n = len(wikimt_entries())
    result = run_cli(["ingest", str(wikimt_dir), "--json"], embedded_env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["files"] == n and summary["pieces"] == n
    assert summary["indexed"] == n and summary["failed"] == 0

    close_contexts()
    settings = settings_from_env(embedded_env)
    ctx = get_context(settings)
    try:
        collection = ctx.store.resolve_alias(settings.collection_alias)
        assert collection is not None
        assert ctx.store.count(collection) == n
        with session_scope(ctx.sessions) as session:
            indexed = session.scalar(
                select(func.count()).select_from(Piece).where(Piece.status == PieceStatus.INDEXED)
            )
            sha_of = dict(session.execute(select(Piece.id, Piece.content_sha256)).all())
        assert indexed == n

        service = SearchService(ctx)
        misses = []
        for path in sorted(wikimt_dir.glob("*.abc")):
            piece = next(
                p
                for p in parse_abc_text(path.read_text(encoding="utf-8"))
                if isinstance(p, ParsedPiece)
            )
            top = service.similar_piece(piece, k=1).hits[0]
            # WikiMT holds a few tunes with identical music: any of them at rank 1 is right.
            if top.source != str(path) and sha_of[top.piece_id] != piece.content_sha256:
                misses.append((path.name, top.source, top.score))
        assert misses == []
    finally:
        close_contexts()
