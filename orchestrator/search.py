"""The one query implementation behind the CLI, the HTTP API and the tests."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from schemas.collection import point_id
from schemas.filters import (
    FILTER_VERSION_META,
    UnknownFilterError,
    normalise_rhythm,
    store_conditions,
)
from schemas.queries import ClassifyResult, Hit, LabelResult, PieceDetail, SearchResult
from schemas.settings import CLASSIFY_TEMPLATES, Settings
from workers import piece_reads, sinks
from workers.abc import ParsedPiece, parse_abc_text
from workers.database import session_scope
from workers.errors import BadArgumentError, UserError
from workers.runtime import WorkerContext
from workers.sinks import piece_id_for
from workers.stages import read_as_abc, read_source
from workers.vectors import TextMatch

if TYPE_CHECKING:
    from workers.clamp import ClampEncoder

# Deep pages cost a k+offset nearest-neighbour search; past this, narrow the query instead.
MAX_OFFSET = 10_000
MAX_K = 1_000
DEFAULT_TEMPLATES = CLASSIFY_TEMPLATES
# The reference turns cosine similarities into label probabilities with softmax(cos * e).
ZERO_SHOT_LOGIT_SCALE = math.e


class EmptyIndexError(UserError, LookupError):
    pass


class QueryInputError(BadArgumentError, ValueError):
    pass


class PieceNotFoundError(UserError, LookupError):
    pass


def label_prompts(
    labels: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    per_label: Mapping[str, Sequence[str]] | None = None,
) -> tuple[list[str], list[list[str]]]:
    """(clean labels, each label's prompts): its own templates in `per_label` (matched by
    schemas.filters.normalise_rhythm: "Slip-Jig" finds "slip jig") or else `templates`,
    filled with the label."""
    own = {normalise_rhythm(label): list(t) for label, t in (per_label or {}).items()}
    for template in [*templates, *(t for group in own.values() for t in group)]:
        if "{label}" not in template:
            raise QueryInputError(f"the template {template!r} has no {{label}} placeholder")
    if not templates or not all(own.values()):
        raise QueryInputError("give at least one prompt template")
    cleaned = [label.strip() for label in labels if label.strip()]
    if len(cleaned) < 2:
        raise QueryInputError("zero-shot classification needs at least two labels")
    if len(set(cleaned)) != len(cleaned):
        raise QueryInputError("the labels contain duplicates")
    return cleaned, [
        [t.replace("{label}", label) for t in own.get(normalise_rhythm(label), templates)]
        for label in cleaned
    ]


def request_prompts(
    settings: Settings, labels: Sequence[str], templates: Sequence[str] | None
) -> tuple[list[str], list[list[str]]]:
    """label_prompts for a request: its templates alone when it names some; else the
    settings' templates with their per-label prompts (CLAMP_INDEX_CLASSIFY_LABEL_PROMPTS)."""
    if templates is not None:
        return label_prompts(labels, templates)
    return label_prompts(labels, settings.classify_templates, settings.classify_label_prompts)


def label_vectors(prompt_vectors: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """One unit vector per label: the mean of its prompts' unit vectors (CLIP's ensemble).

    The first counts[0] rows are the first label's prompts, the next counts[1] the
    second's, and so on.
    """
    unit = prompt_vectors / np.linalg.norm(prompt_vectors, axis=-1, keepdims=True)
    bounds = np.cumsum([0, *counts])
    mean = np.stack([unit[a:b].mean(axis=0) for a, b in itertools.pairwise(bounds)])
    return mean / np.linalg.norm(mean, axis=-1, keepdims=True)


def grouped_label_vectors(
    encode_texts: Callable[[list[str]], np.ndarray], prompts: Sequence[Sequence[str]]
) -> np.ndarray:
    """label_vectors of each label's prompts (label_prompts' second half), one encode call."""
    flat = [prompt for group in prompts for prompt in group]
    return label_vectors(encode_texts(flat), [len(group) for group in prompts])


def zero_shot_scores(music: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Rows of label probabilities from unit music vectors [N, D] and label vectors [L, D]."""
    logits = (music @ labels.T) * ZERO_SHOT_LOGIT_SCALE
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def check_page(k: int, offset: int) -> None:
    if not 1 <= k <= MAX_K:
        raise QueryInputError(f"k must be between 1 and {MAX_K}, got {k}")
    if not 0 <= offset <= MAX_OFFSET:
        raise QueryInputError(f"offset must be between 0 and {MAX_OFFSET}, got {offset}")


def store_filter(filters: Mapping[str, str | None] | None) -> dict[str, Any]:
    """User filters (key=..., source=...) as the vector stores' filter mapping."""
    try:
        conditions = store_conditions(filters or {})
    except UnknownFilterError as exc:
        raise QueryInputError(str(exc)) from None
    return {
        c.payload_field: TextMatch(c.value) if c.match == "text" else c.value for c in conditions
    }


class TextEncoding(Protocol):
    """Another way to encode a query text for a collection (the server's batched child)."""

    def encode(self, ctx: WorkerContext, collection: str, text: str) -> np.ndarray: ...


class SearchService:
    """Text -> music, music -> music and zero-shot labels over the serving collection."""

    def __init__(
        self,
        ctx: WorkerContext,
        texts: TextEncoding | None = None,
        alias_ttl_s: float = 0.0,
    ) -> None:
        self.ctx = ctx
        # A server passes these: query texts batched in a child process, and the alias read
        # at most every alias_ttl_s (a swap is then seen that much later).
        self.texts = texts
        self.alias_ttl_s = alias_ttl_s
        self._alias: tuple[float, str | None] = (-math.inf, None)
        self._metas: dict[str, dict[str, str]] = {}  # collections never change their meta

    def collection(self) -> str:
        """The active collection, refused when its model differs from the query encoder."""
        alias = self.ctx.settings.collection_alias
        read_at, name = self._alias
        if name is None or time.monotonic() - read_at > self.alias_ttl_s:
            name = self.ctx.store.resolve_alias(alias)
            self._alias = (time.monotonic(), name)
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

    # -- search ----------------------------------------------------------------------------

    def search_text(
        self,
        query: str,
        k: int = 10,
        filters: Mapping[str, str | None] | None = None,
        offset: int = 0,
    ) -> SearchResult:
        started = time.perf_counter()
        if not query.strip():
            raise QueryInputError("the search text is empty")
        collection = self.collection()
        encoder = self.ctx.encoder_for(collection)  # also checks the collection's model
        if self.texts is not None:
            vector = self.texts.encode(self.ctx, collection, query)
        else:
            vector = encoder.encode_texts([query])[0]
        return self._search(started, collection, vector, k, offset, filters)

    def similar_to_indexed(
        self,
        piece_id: str,
        k: int = 10,
        filters: Mapping[str, str | None] | None = None,
        offset: int = 0,
    ) -> SearchResult:
        """Pieces closest to an indexed piece, the piece itself left out."""
        started = time.perf_counter()
        collection = self.collection()
        found = self.ctx.store.retrieve_vectors(collection, [point_id(piece_id)])
        if not found:
            raise PieceNotFoundError(
                f"no indexed piece with id {piece_id!r}: ids come from search results"
            )
        vector = next(iter(found.values()))
        return self._search(started, collection, vector, k, offset, filters, exclude=piece_id)

    def similar_abc(
        self,
        abc_text: str,
        k: int = 10,
        filters: Mapping[str, str | None] | None = None,
        tune: int = 0,
        offset: int = 0,
    ) -> SearchResult:
        """Pieces closest to one tune of an ABC text (the first by default)."""
        return self.similar_piece(_pick_tune(abc_text, tune), k, filters, offset)

    def similar_piece(
        self,
        piece: ParsedPiece,
        k: int = 10,
        filters: Mapping[str, str | None] | None = None,
        offset: int = 0,
    ) -> SearchResult:
        started = time.perf_counter()
        collection = self.collection()
        encoder = self.ctx.encoder_for(collection)
        vector = encoder.encode_music([encoder.music_patches(piece.music_text)])[0]
        return self._search(started, collection, vector, k, offset, filters)

    def similar_file(
        self,
        path: Path,
        k: int = 10,
        filters: Mapping[str, str | None] | None = None,
        tune: int = 0,
        offset: int = 0,
    ) -> SearchResult:
        return self.similar_abc(self._read_abc(path), k, filters, tune, offset)

    def similar_upload(
        self,
        data: bytes,
        filename: str,
        k: int = 10,
        filters: Mapping[str, str | None] | None = None,
        tune: int = 0,
        offset: int = 0,
    ) -> SearchResult:
        """Like similar_file, for bytes received over the network (never written to disk)."""
        return self.similar_abc(self._bytes_as_abc(data, filename), k, filters, tune, offset)

    # -- classify --------------------------------------------------------------------------

    def classify_files(
        self,
        paths: Sequence[Path],
        labels: Sequence[str],
        templates: Sequence[str] | None = None,
    ) -> ClassifyResult:
        """Zero-shot labels for every tune of the given files (indexed or not)."""
        texts = [(str(path.absolute()), self._read_abc(path)) for path in paths]
        return self._classify_texts(texts, labels, templates, ids=True)

    def classify_upload(
        self,
        data: bytes,
        filename: str,
        labels: Sequence[str],
        templates: Sequence[str] | None = None,
    ) -> ClassifyResult:
        text = self._bytes_as_abc(data, filename)
        return self._classify_texts([(filename, text)], labels, templates, ids=False)

    def classify_indexed(
        self,
        labels: Sequence[str],
        templates: Sequence[str] | None = None,
        piece_ids: Sequence[str] | None = None,
        batch: int = 1024,
    ) -> Iterator[LabelResult]:
        """Zero-shot labels for indexed pieces (all, or the given ids), from stored vectors."""
        names, prompts = request_prompts(self.ctx.settings, labels, templates)
        collection = self.collection()
        with session_scope(self.ctx.sessions) as session:
            rows = sinks.indexed_piece_rows(session, collection)
        if piece_ids is not None:
            wanted = set(piece_ids)
            rows = [r for r in rows if r[0] in wanted]
            missing = wanted - {r[0] for r in rows}
            if missing:
                raise PieceNotFoundError(f"no indexed piece with id {sorted(missing)[0]!r}")
        targets = self._label_vectors(prompts)
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            found = self.ctx.store.retrieve_vectors(collection, [point_id(r[0]) for r in chunk])
            present = [r for r in chunk if point_id(r[0]) in found]
            if present:
                vectors = np.stack([found[point_id(r[0])] for r in present])
                yield from _label_rows(present, vectors, names, targets)

    def classify_all(
        self, labels: Sequence[str], templates: Sequence[str] | None = None
    ) -> ClassifyResult:
        return self._collect(self.classify_indexed(labels, templates), labels, templates)

    def classify_pieces(
        self,
        piece_ids: Sequence[str],
        labels: Sequence[str],
        templates: Sequence[str] | None = None,
    ) -> ClassifyResult:
        return self._collect(self.classify_indexed(labels, templates, piece_ids), labels, templates)

    def _collect(
        self, rows: Iterator[LabelResult], labels: Sequence[str], templates: Sequence[str] | None
    ) -> ClassifyResult:
        started = time.perf_counter()
        results = list(rows)
        names, prompts = request_prompts(self.ctx.settings, labels, templates)
        return self._classify_result(names, prompts, templates, results, started)

    def _classify_result(
        self,
        names: list[str],
        prompts: list[list[str]],
        templates: Sequence[str] | None,
        results: list[LabelResult],
        started: float,
    ) -> ClassifyResult:
        used = self.ctx.settings.classify_templates if templates is None else templates
        return ClassifyResult(
            labels=names,
            templates=list(used),
            prompts=dict(zip(names, prompts, strict=True)),
            results=results,
            latency_ms=_ms(started),
        )

    # -- pieces ----------------------------------------------------------------------------

    def piece(self, piece_id: str) -> PieceDetail:
        with session_scope(self.ctx.sessions) as session:
            found = piece_reads.piece_detail(session, piece_id)
            if found is None:
                raise PieceNotFoundError(f"no piece with id {piece_id!r}")
            piece, uri = found
            return PieceDetail(
                piece_id=piece.id,
                title=piece.title,
                composer=piece.composer,
                origin=piece.origin,
                rhythm=piece.rhythm,
                meter=piece.meter,
                key=piece.key,
                unit_length=piece.unit_length,
                tempo=piece.tempo,
                source=uri,
                index_in_file=piece.index_in_file,
                format=piece.source_format,
                status=piece.status,
                abc=piece.abc_text,
            )

    # -- internals -------------------------------------------------------------------------

    def _classify_texts(
        self,
        texts: Sequence[tuple[str, str]],
        labels: Sequence[str],
        templates: Sequence[str] | None,
        *,
        ids: bool,
    ) -> ClassifyResult:
        started = time.perf_counter()
        names, prompts = request_prompts(self.ctx.settings, labels, templates)
        encoder = self.encoder
        rows: list[tuple[str | None, str, int, str | None]] = []
        patches: list[np.ndarray] = []
        for uri, text in texts:
            for piece in parse_abc_text(text):
                if isinstance(piece, ParsedPiece):
                    pid = piece_id_for(uri, piece.index) if ids else None
                    rows.append((pid, uri, piece.index, piece.header.title))
                    patches.append(encoder.music_patches(piece.music_text))
        if not rows:
            raise QueryInputError("no readable ABC tune in the given input")
        results = _label_rows(
            rows, encoder.encode_music(patches), names, self._label_vectors(prompts)
        )
        return self._classify_result(names, prompts, templates, results, started)

    def _label_vectors(self, prompts: Sequence[Sequence[str]]) -> np.ndarray:
        return grouped_label_vectors(self.encoder.encode_texts, prompts)

    def _read_abc(self, path: Path) -> str:
        """A query file as ABC, by the same rules (and converters) as ingest."""
        try:
            data = read_source(path, self.ctx.settings.max_file_bytes)
        except (OSError, ValueError) as exc:
            raise QueryInputError(f"{path}: {exc}") from exc
        return self._bytes_as_abc(data, str(path))

    def _bytes_as_abc(self, data: bytes, name: str) -> str:
        if not data.strip():
            raise QueryInputError(f"{name}: the query file is empty")
        try:
            return read_as_abc(data, Path(name).suffix, self.ctx.settings.parse_timeout_s)[0]
        except (OSError, ValueError) as exc:  # decode and conversion errors alike
            raise QueryInputError(f"{name}: {exc}") from exc

    def _search(
        self,
        started: float,
        collection: str,
        vector: Any,
        k: int,
        offset: int,
        filters: Mapping[str, str | None] | None,
        exclude: str | None = None,
    ) -> SearchResult:
        check_page(k, offset)
        conditions = store_filter(filters)
        if conditions:
            self._check_filterable(collection)
        limit = offset + k + (1 if exclude is not None else 0)
        found = self.ctx.store.query(collection, vector, limit, conditions)
        hits = [h for h in found if h.payload.get("piece_id") != exclude][offset : offset + k]
        meta = self._meta(collection)
        return SearchResult(
            hits=[_hit(offset + i + 1, h.score, h.payload) for i, h in enumerate(hits)],
            k=k,
            offset=offset,
            latency_ms=_ms(started),
            collection=collection,
            model=f"{meta.get('model_name', '?')} {meta.get('model_version', '?')}",
        )

    def _meta(self, collection: str) -> dict[str, str]:
        if collection not in self._metas:
            self._metas[collection] = self.ctx.store.collection_meta(collection)
        return self._metas[collection]

    def _check_filterable(self, collection: str) -> None:
        if FILTER_VERSION_META not in self._meta(collection):
            raise UserError(
                f"collection {collection!r} was built before filters compared normalised "
                "values; run `clamp-index reindex` once to rebuild it (queries keep working "
                "meanwhile), or search without filters"
            )


def _pick_tune(abc_text: str, tune: int) -> ParsedPiece:
    pieces = [p for p in parse_abc_text(abc_text) if isinstance(p, ParsedPiece)]
    if not pieces:
        raise QueryInputError("the query contains no readable ABC tune")
    if not 0 <= tune < len(pieces):
        raise QueryInputError(f"tune {tune} requested, but the query has {len(pieces)}")
    return pieces[tune]


def _hit(rank: int, score: float, payload: Mapping[str, Any]) -> Hit:
    return Hit(
        rank=rank,
        piece_id=str(payload.get("piece_id")),
        score=float(score),
        title=payload.get("title"),
        key=payload.get("key"),
        meter=payload.get("meter"),
        rhythm=payload.get("rhythm"),
        composer=payload.get("composer"),
        origin=payload.get("origin"),
        source=str(payload.get("source")),
        index_in_file=int(payload.get("index_in_file", 0)),
        format=str(payload.get("format", "abc")),
    )


def _label_rows(
    rows: Sequence[tuple[str | None, str, int, str | None]],
    vectors: np.ndarray,
    names: Sequence[str],
    targets: np.ndarray,
) -> list[LabelResult]:
    probs = zero_shot_scores(vectors, targets)
    return [
        LabelResult(
            piece_id=pid,
            source=uri,
            index_in_file=index,
            title=title,
            label=names[int(np.argmax(p))],
            probabilities={name: round(float(x), 6) for name, x in zip(names, p, strict=True)},
        )
        for (pid, uri, index, title), p in zip(rows, probs, strict=True)
    ]


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
