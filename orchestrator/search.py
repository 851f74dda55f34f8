"""The one query implementation behind the CLI, the HTTP API and the tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from workers.abc import ParsedPiece, decode_abc_bytes, encode_patches, parse_abc_text
from workers.runtime import ModelMismatchError, WorkerContext
from workers.stages import read_source


class EmptyIndexError(LookupError):
    pass


class QueryInputError(ValueError):
    pass


@dataclass(frozen=True)
class SearchHit:
    rank: int
    piece_id: str
    score: float
    title: str | None
    key: str | None
    meter: str | None
    rhythm: str | None
    composer: str | None
    source: str
    index_in_file: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SearchService:
    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx

    def collection(self) -> str:
        """The active collection, refused when its model differs from the query encoder."""
        alias = self.ctx.settings.collection_alias
        name = self.ctx.store.resolve_alias(alias)
        if name is None:
            raise EmptyIndexError(
                f"nothing is indexed yet under alias {alias!r}: run `clamp-index ingest PATH` first"
            )
        meta = self.ctx.store.collection_meta(name)
        manifest = self.ctx.encoder.manifest
        if meta.get("model_version") != manifest.version:
            raise ModelMismatchError(
                f"collection {name!r} was built with model {meta.get('model_name')!r} "
                f"version {meta.get('model_version')!r}; the query encoder is {manifest.name!r} "
                f"version {manifest.version!r}. Vectors of different models are not comparable."
            )
        return name

    def search_text(
        self, query: str, k: int = 10, filters: Mapping[str, Any] | None = None
    ) -> list[SearchHit]:
        if not query.strip():
            raise QueryInputError("the search text is empty")
        collection = self.collection()
        vector = self.ctx.encoder.encode_texts([query])[0]
        return self._query(collection, vector, k, filters)

    def similar_abc(
        self, abc_text: str, k: int = 10, filters: Mapping[str, Any] | None = None, tune: int = 0
    ) -> list[SearchHit]:
        """Pieces closest to one tune of an ABC text (the first by default)."""
        pieces = [p for p in parse_abc_text(abc_text) if isinstance(p, ParsedPiece)]
        if not pieces:
            raise QueryInputError("the query contains no readable ABC tune")
        if not 0 <= tune < len(pieces):
            raise QueryInputError(f"tune {tune} requested, but the query has {len(pieces)}")
        return self.similar_piece(pieces[tune], k, filters)

    def similar_piece(
        self, piece: ParsedPiece, k: int = 10, filters: Mapping[str, Any] | None = None
    ) -> list[SearchHit]:
        collection = self.collection()
        encoder = self.ctx.encoder
        patches = encode_patches(piece.music_text, encoder.manifest.max_patches)
        vector = encoder.encode_music([patches])[0]
        return self._query(collection, vector, k, filters)

    def similar_file(
        self, path: Path, k: int = 10, filters: Mapping[str, Any] | None = None, tune: int = 0
    ) -> list[SearchHit]:
        try:
            data = read_source(path, self.ctx.settings.max_file_bytes)
            text, _ = decode_abc_bytes(data)
        except (OSError, ValueError) as exc:
            raise QueryInputError(f"{path}: {exc}") from exc
        return self.similar_abc(text, k, filters, tune)

    def _query(
        self, collection: str, vector: Any, k: int, filters: Mapping[str, Any] | None
    ) -> list[SearchHit]:
        if k < 1:
            raise QueryInputError("k must be at least 1")
        hits = self.ctx.store.query(collection, vector, k, filters)
        return [
            SearchHit(
                rank=i + 1,
                piece_id=str(h.payload.get("piece_id")),
                score=float(h.score),
                title=h.payload.get("title"),
                key=h.payload.get("key"),
                meter=h.payload.get("meter"),
                rhythm=h.payload.get("rhythm"),
                composer=h.payload.get("composer"),
                source=str(h.payload.get("source")),
                index_in_file=int(h.payload.get("index_in_file", 0)),
            )
            for i, h in enumerate(hits)
        ]
