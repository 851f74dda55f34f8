"""The one query implementation behind the CLI, the HTTP API and the tests."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from schemas.collection import point_id
from workers import sinks
from workers.abc import ParsedPiece, encode_patches, parse_abc_text
from workers.database import session_scope
from workers.errors import BadArgumentError, UserError
from workers.runtime import WorkerContext
from workers.sinks import piece_id_for
from workers.stages import read_as_abc, read_source

if TYPE_CHECKING:
    from workers.clamp import ClampEncoder


class EmptyIndexError(UserError, LookupError):
    pass


class QueryInputError(BadArgumentError, ValueError):
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


# The reference turns cosine similarities into label probabilities with softmax(cos * e).
ZERO_SHOT_LOGIT_SCALE = math.e


@dataclass(frozen=True)
class LabelResult:
    piece_id: str
    source: str
    index_in_file: int
    title: str | None
    label: str
    scores: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def label_prompts(labels: Sequence[str], template: str) -> list[str]:
    if "{label}" not in template:
        raise QueryInputError(f"the template {template!r} has no {{label}} placeholder")
    cleaned = [label.strip() for label in labels if label.strip()]
    if len(cleaned) < 2:
        raise QueryInputError("zero-shot classification needs at least two labels")
    if len(set(cleaned)) != len(cleaned):
        raise QueryInputError("the labels contain duplicates")
    return [template.format(label=label) for label in cleaned]


def zero_shot_scores(music: np.ndarray, prompts: np.ndarray) -> np.ndarray:
    """Rows of label probabilities from unit music vectors [N, D] and prompt vectors [L, D]."""
    logits = (music @ prompts.T) * ZERO_SHOT_LOGIT_SCALE
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


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
        self.ctx.refuse_unknown_model(name)
        return name

    @property
    def encoder(self) -> ClampEncoder:
        """The model of the serving collection (queries must be in its vector space)."""
        try:
            return self.ctx.encoder_for(self.collection())
        except EmptyIndexError:
            return self.ctx.encoder  # classifying files needs no index

    def search_text(
        self, query: str, k: int = 10, filters: Mapping[str, Any] | None = None
    ) -> list[SearchHit]:
        if not query.strip():
            raise QueryInputError("the search text is empty")
        collection = self.collection()
        vector = self.ctx.encoder_for(collection).encode_texts([query])[0]
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
        encoder = self.ctx.encoder_for(collection)
        patches = encode_patches(piece.music_text, encoder.patch_limit)
        vector = encoder.encode_music([patches])[0]
        return self._query(collection, vector, k, filters)

    def similar_file(
        self, path: Path, k: int = 10, filters: Mapping[str, Any] | None = None, tune: int = 0
    ) -> list[SearchHit]:
        return self.similar_abc(self._read_abc(path), k, filters, tune)

    def classify_files(
        self, paths: Sequence[Path], labels: Sequence[str], template: str = "a {label}"
    ) -> list[LabelResult]:
        """Zero-shot labels for every tune of the given files (indexed or not)."""
        prompts = label_prompts(labels, template)
        encoder = self.encoder
        rows: list[tuple[str, str, int, str | None]] = []
        patches: list[np.ndarray] = []
        for path in paths:
            uri = str(path.absolute())
            for piece in parse_abc_text(self._read_abc(path)):
                if isinstance(piece, ParsedPiece):
                    rows.append(
                        (piece_id_for(uri, piece.index), uri, piece.index, piece.header.title)
                    )
                    patches.append(encode_patches(piece.music_text, encoder.patch_limit))
        if not rows:
            raise QueryInputError("no readable ABC tune in the given files")
        return self._label(rows, encoder.encode_music(patches), labels, prompts)

    def classify_indexed(
        self, labels: Sequence[str], template: str = "a {label}", batch: int = 1024
    ) -> Iterator[LabelResult]:
        """Zero-shot labels for every indexed piece, from the vectors already stored."""
        prompts = label_prompts(labels, template)
        collection = self.collection()
        with session_scope(self.ctx.sessions) as session:
            rows = sinks.indexed_piece_rows(session, collection)
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            found = self.ctx.store.retrieve_vectors(collection, [point_id(r[0]) for r in chunk])
            present = [r for r in chunk if point_id(r[0]) in found]
            if present:
                vectors = np.stack([found[point_id(r[0])] for r in present])
                yield from self._label(present, vectors, labels, prompts)

    def _label(
        self,
        rows: Sequence[tuple[str, str, int, str | None]],
        vectors: np.ndarray,
        labels: Sequence[str],
        prompts: Sequence[str],
    ) -> list[LabelResult]:
        names = [label.strip() for label in labels if label.strip()]
        probs = zero_shot_scores(vectors, self.encoder.encode_texts(list(prompts)))
        return [
            LabelResult(
                piece_id=pid,
                source=uri,
                index_in_file=index,
                title=title,
                label=names[int(np.argmax(p))],
                scores={name: round(float(x), 6) for name, x in zip(names, p, strict=True)},
            )
            for (pid, uri, index, title), p in zip(rows, probs, strict=True)
        ]

    def _read_abc(self, path: Path) -> str:
        """A query file as ABC, by the same rules (and converters) as ingest."""
        limits = self.ctx.settings
        try:
            data = read_source(path, limits.max_file_bytes)
            return read_as_abc(data, path.suffix, limits.parse_timeout_s)[0]
        except (OSError, ValueError) as exc:  # decode, size and conversion errors alike
            raise QueryInputError(f"{path}: {exc}") from exc

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
