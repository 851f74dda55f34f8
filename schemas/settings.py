"""Runtime settings, read from CLAMP_INDEX_* environment variables or a config file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The default prompt ensemble of zero-shot classification, chosen on the shipped model's
# held-out split of its training collections (see its model card); CLIP-style averaging.
CLASSIFY_TEMPLATES = (
    "the dance tune of a {label}",
    "a traditional {label}",
    "an Irish {label}",
    "music for a {label}",
)
# Labels whose music a model can be told in words: these prompts replace the templates for
# them (a request that names its own templates uses those alone). A meter for the dances
# that have one; for reels and hornpipes, which share one, the rhythm that tells them apart,
# in the words of models trained with --rhythm-words (orchestrator.training.rhythm_words).
CLASSIFY_LABEL_PROMPTS: dict[str, tuple[str, ...]] = {
    "jig": ("a {label} in 6/8",),
    "slip jig": ("a {label} in 9/8",),
    "waltz": ("a {label} in 3/4",),
    "reel": ("a {label} with even running notes", "a {label}, smooth, even notes"),
    "hornpipe": (
        "a {label} with dotted rhythms",
        "a {label} with strains ending in three long notes",
    ),
}


class Settings(BaseSettings):
    """Every knob of the pipeline; code never hard-codes a deployment choice."""

    model_config = SettingsConfigDict(
        env_prefix="CLAMP_INDEX_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    data_dir: Path = Field(Path(".clamp-index"), description="Embedded state lives here.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; unset = SQLite file in the data dir."
    )
    broker_url: str | None = Field(
        None, description="Celery broker (redis://...); unset = tasks run in-process."
    )
    qdrant_url: str | None = Field(
        None, description="Qdrant server URL; unset = embedded Qdrant engine in the data dir."
    )
    qdrant_api_key: str | None = None
    qdrant_path: Path | None = Field(
        None,
        description="qdrant-client local mode directory (prototype/test stand-in for a server).",
    )
    collection_alias: str = Field("clamp-index", description="Alias queries go through.")
    search_hnsw_ef: int = Field(
        128, ge=1, description="HNSW beam per query: higher finds more true neighbours, slower."
    )
    search_exact: bool = Field(
        False, description="Brute-force queries (exact top k): small collections, recall checks."
    )
    model_dir: Path | None = Field(
        None,
        description="CLaMP checkpoint directory; unset = the shipped clamp-index-minilm-small.",
    )
    tokenizer_dir: Path | None = Field(
        None, description="Text tokenizer directory; unset = the model directory."
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    precision: Literal["auto", "exact", "fast"] = Field(
        "auto", description="exact = fp32; fast = bf16/fp16; auto = fast where bf16 is supported."
    )
    long_piece: Literal["truncate", "windows"] = Field(
        "truncate",
        description="Pieces over max patches: keep the start (reference) or average windows.",
    )
    torch_threads: int | None = Field(None, description="Intra-op threads; unset = torch default.")
    parse_claim_files: int = Field(
        64, ge=1, description="Files a parse worker claims at once (one transaction)."
    )
    patch_budget: int | None = Field(
        None,
        ge=64,
        description="Patches per model forward; unset = 4096 on a CPU (bigger matmuls gain "
        "nothing on few cores), 65536 on a GPU (~500+ pieces per forward). A CUDA "
        "out-of-memory error halves the batch and retries, so too high is safe.",
    )
    upsert_batch: int = Field(512, ge=1)
    max_file_bytes: int = Field(64 * 1024 * 1024, ge=1, description="Larger files fail parse.")
    parse_timeout_s: float = Field(
        60.0, ge=0, description="Wall-clock limit to read+parse one file; 0 = none."
    )
    lease_s: float = Field(
        60.0,
        ge=1,
        description="Work-item lease: a dead worker's claim returns to the pool this long "
        "after its last renewal (renewed every third of it while working).",
    )
    reconcile_interval_s: float = Field(
        15.0, ge=0.5, description="How often idle workers reclaim expired leases and re-wake."
    )
    max_solo_attempts: int = Field(
        2,
        ge=1,
        description="A piece whose worker dies this many times while it is claimed alone "
        "becomes a failure row instead of being retried.",
    )
    encode_claim_pieces: int | None = Field(
        None,
        ge=1,
        description="Pieces an encode worker claims at once; unset = 4096 on a GPU, 1024 on "
        "a CPU (pooled across files and parse tasks).",
    )
    encode_fill_wait_s: float = Field(
        5.0,
        ge=0,
        description="While files are still being parsed, an encode worker waits up to this "
        "long for a full claim, so that forwards stay large.",
    )
    db_outage_s: float = Field(
        300.0, ge=0, description="How long workers retry while the database is unreachable."
    )
    crash_on_piece: str | None = Field(
        None, description="Test-only fault injection: the worker exits when encoding this piece."
    )
    reindex_probes: int = Field(
        16,
        ge=0,
        description="Pieces a reindex encodes again and queries before swapping: each must "
        "come back first from the new collection.",
    )
    reindex_max_failures: int = Field(
        0,
        ge=0,
        description="Pieces a reindex may fail to encode and still swap (they would be "
        "missing from search until fixed).",
    )
    collections_keep: int = Field(
        2,
        ge=1,
        description="Collections kept after a swap, the active one included: the rest are "
        "deleted (2 = one rollback target).",
    )
    model_store_dir: Path | None = Field(
        None,
        description="Where registered and trained models are stored; every worker must be "
        "able to read it (a shared volume). Unset = models/ in the data dir.",
    )
    scheduler_tick_s: float = Field(
        5.0,
        gt=0,
        description="How often the scheduler renews its lease and re-reads the schedules "
        "table (edits apply without a restart); a slot fires at most this late.",
    )
    scheduler_lease_s: float = Field(
        30.0,
        gt=0,
        description="Scheduler leadership lease: if the leader dies, another scheduler takes "
        "over this long after its last renewal. Must exceed twice the tick.",
    )
    scheduler_parallel: int = Field(
        4,
        ge=1,
        description="Scheduled actions running at once in distributed mode (embedded mode "
        "runs one at a time: its ingests share one store).",
    )
    scheduler_stop_grace_s: float = Field(
        10.0,
        ge=0,
        description="On SIGTERM/Ctrl-C, how long the scheduler waits for running actions "
        "before recording them interrupted and handing leadership over.",
    )
    train_steps: int = Field(
        300, ge=1, description="Optimiser steps of a retraining run (`clamp-index train`)."
    )
    train_roundtrip_tunes: int = Field(
        2000,
        ge=0,
        description="Catalogue tunes a retraining run exports to MusicXML and MIDI and reads "
        "back with the ingest converters, as extra views (so the retrained model still finds "
        "converted files' originals); a quarter as many held-out tunes for the gate's "
        "cross-format check. Converted once and cached. 0 = none.",
    )
    train_convert_workers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto",
        description="Processes converting those round trips (0.1-0.6 s a tune); auto = one "
        "per CPU the worker may use, at most 32 (each holds music21, ~250 MB).",
    )
    roundtrip_cache_dir: Path | None = Field(
        None,
        description="Where the round trips are cached. Unset = .roundtrips/ in the model store.",
    )
    train_model_name: str = Field(
        "clamp-index-catalogue", description="Registry name of models trained on the catalogue."
    )
    gate_mrr_margin: float = Field(
        0.01,
        description="A retrained candidate must beat the active model's text->music MRR on "
        "the held-out tunes by this much to be promoted.",
    )
    gate_zero_shot_margin: float = Field(
        0.0,
        description="...and its zero-shot rhythm accuracy by this much, where the held-out "
        "tunes carry two or more rhythm labels (0 = no worse).",
    )
    gate_cross_format_margin: float = Field(
        -0.02,
        description="...and its MusicXML->ABC and MIDI->ABC top-10 rates on the held-out "
        "tunes' round trips by this much, where both models were measured on them "
        "(negative: the loss tolerated).",
    )
    gate_min_heldout: int = Field(
        10,
        ge=1,
        description="Held-out tunes the gate needs to judge a candidate, and pieces each of its "
        "checks needs to count. A catalogue with fewer held-out tunes is not trained (one tune's "
        "rank would decide); a check measured on fewer is left out of the decision.",
    )
    api_host: str = Field("127.0.0.1", description="`serve` listens here (0.0.0.0: all).")
    api_port: int = Field(8765, ge=0, le=65535, description="`serve` port (0: any free one).")
    api_token: SecretStr | None = Field(
        None,
        description="Bearer token the HTTP write endpoints (/ingest) require. Unset in "
        "embedded mode: `serve` makes one and keeps it in the data dir for the CLI; unset "
        "in distributed mode: writes are refused.",
    )
    api_max_upload_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1,
        description="Largest upload an HTTP request may carry (all its files together).",
    )
    catalogue_roots: list[Path] = Field(
        default_factory=list,
        description="Folders whose files HTTP /ingest may read (JSON list); a path outside "
        "all of them is refused. Empty: ingest by path over HTTP is off.",
    )
    classify_templates: list[str] = Field(
        default_factory=lambda: list(CLASSIFY_TEMPLATES),
        description="Prompt templates `classify` averages per label when a request gives "
        "none (JSON list; each holds {label}).",
    )
    classify_label_prompts: dict[str, list[str]] = Field(
        default_factory=lambda: {k: list(v) for k, v in CLASSIFY_LABEL_PROMPTS.items()},
        description="Prompts that replace classify_templates for a label when a request "
        "gives no templates (JSON object: label -> list, each holding {label}; labels match "
        "whatever their case, spaces and hyphens; {} turns this off).",
    )
    file_globs: list[str] = Field(
        default_factory=lambda: ["*.abc", "*.xml", "*.musicxml", "*.mxl", "*.mid", "*.midi"],
        description="Files a directory scan picks up (matched case-insensitively).",
    )

    @field_validator(
        "database_url",
        "broker_url",
        "qdrant_url",
        "qdrant_api_key",
        "qdrant_path",
        "model_dir",
        "tokenizer_dir",
        "torch_threads",
        "encode_claim_pieces",
        "crash_on_piece",
        "patch_budget",
        "model_store_dir",
        "roundtrip_cache_dir",
        "api_token",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # `export CLAMP_INDEX_BROKER_URL=` must mean "unset", not "the empty URL" or Path(".").
        return None if isinstance(value, str) and not value.strip() else value

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'clamp-index.db').resolve()}"

    @property
    def embedded_queue(self) -> bool:
        return not self.broker_url

    @property
    def vectors_dir(self) -> Path:
        return self.data_dir / "vectors"

    @property
    def models_dir(self) -> Path:
        return self.model_store_dir or self.data_dir / "models"

    @property
    def roundtrips_dir(self) -> Path:
        return self.roundtrip_cache_dir or self.models_dir / ".roundtrips"


def load_settings(data_dir: Path | None = None) -> Settings:
    """Settings from the environment, with the CLI's --data-dir taking precedence."""
    if data_dir is None:
        return Settings()
    return Settings(data_dir=data_dir)
