"""What a query returns: one shape for the service, the CLI's --json and the HTTP API."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Hit(BaseModel):
    rank: int = Field(description="1-based, counted from the first result of the page")
    piece_id: str
    score: float = Field(description="cosine similarity to the query")
    title: str | None = None
    key: str | None = None
    meter: str | None = None
    rhythm: str | None = None
    composer: str | None = None
    origin: str | None = None
    source: str
    index_in_file: int = 0
    format: str = "abc"


class SearchResult(BaseModel):
    hits: list[Hit]
    k: int
    offset: int
    latency_ms: float = Field(description="time spent in the service, encoding included")
    collection: str
    model: str = Field(description="name and version of the model behind the collection")


class LabelResult(BaseModel):
    piece_id: str | None = Field(description="null for a tune that is not indexed")
    source: str | None = None
    index_in_file: int = 0
    title: str | None = None
    label: str = Field(description="the most probable label")
    probabilities: dict[str, float]


class ClassifyResult(BaseModel):
    labels: list[str]
    templates: list[str]
    # Each label's prompts as sent to the text encoder: the templates filled with it, or
    # its own prompts (CLAMP_INDEX_CLASSIFY_LABEL_PROMPTS) when the request named none.
    prompts: dict[str, list[str]] = {}
    results: list[LabelResult]
    latency_ms: float


class PieceDetail(BaseModel):
    piece_id: str
    title: str | None = None
    composer: str | None = None
    origin: str | None = None
    rhythm: str | None = None
    meter: str | None = None
    key: str | None = None
    unit_length: str | None = None
    tempo: str | None = None
    source: str
    index_in_file: int
    format: str
    status: str
    abc: str = Field(description="the tune as ABC (converted when the source was not ABC)")
