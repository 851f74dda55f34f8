"""`python -m orchestrator.training`: train the shipped model's recipe on music21's corpus."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Literal

from orchestrator.training.augment import BASE_OPS, OPS
from orchestrator.training.catalogue import data_snapshot
from orchestrator.training.config import VIEW_RECIPE, TrainConfig
from orchestrator.training.data import corpus_stats, load_corpus, split_records
from orchestrator.training.eval import evaluate_heldout
from orchestrator.training.export import save_model
from orchestrator.training.loop import train
from orchestrator.training.model import in_memory_clamp
from orchestrator.training.roundtrip import default_cache_dir, filled_cache
from orchestrator.training.sources import (
    HELDOUT_COLLECTIONS,
    SOURCES,
    licence_table,
    training_collections,
)
from orchestrator.training.views import RoundTrips
from workers.abc.profiles import (
    CANONICAL_DUPLE_PROFILE,
    CANONICAL_DUPLE_SOUNDING_PROFILE,
    INPUT_PROFILES,
    REFERENCE_PROFILE,
    RHYTHM_SUMMARY_PROFILE,
    SOUNDING_SUMMARY_PROFILE,
)
from workers.clamp import ClampEncoder
from workers.clamp.loading import load_tokenizer
from workers.clamp.minilm import minilm_dir

PROG = "python -m orchestrator.training"
DESCRIPTION = (
    "Contrastive training of a small CLaMP-layout model (frozen MiniLM text side) on music21 "
    "ABC: only sources whose licence allows redistributing the weights, unless told otherwise."
)
log = logging.getLogger(__name__)


def _processes(value: str) -> int | Literal["auto"]:
    """`auto` or a whole number of processes, at least 1."""
    if value == "auto":
        return "auto"
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number >= 1, not {value!r}")
    return count


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="time budget for training (default 50); with --steps the run ends at whichever "
        "comes first, and the manifest says which",
    )
    parser.add_argument("--steps", type=int, default=None, help="fixed schedule length")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--bf16", action="store_true", default=None, help="bf16 autocast")
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--config", type=Path, help="JSON file with TrainConfig fields")
    parser.add_argument(
        "--include-restricted",
        action="append",
        default=[],
        metavar="COLLECTION",
        choices=sorted(c for c, s in SOURCES.items() if not s.redistributable),
        help="opt in to a source whose licence forbids commercial use or binds derived works "
        "(essenFolksong: non-commercial; josquin: GPL). The weights are then NOT "
        "redistributable under the project's licence; the manifest says so.",
    )
    parser.add_argument(
        "--heldout-collection",
        action="append",
        default=None,
        metavar="COLLECTION",
        choices=sorted(SOURCES),
        help=f"collection kept out of training for evaluation (default: {HELDOUT_COLLECTIONS})",
    )
    parser.add_argument("--no-heldout-collection", action="store_true", help="train on all")
    parser.add_argument(
        "--roundtrip-cache",
        type=Path,
        default=None,
        help=f"converter round-trip cache folder (default {default_cache_dir()})",
    )
    parser.add_argument(
        "--no-roundtrips", action="store_true", help="no MusicXML/MIDI round-trip views"
    )
    parser.add_argument(
        "--convert-workers",
        type=_processes,
        default="auto",
        help="converter processes for the round trips (default auto: one per usable CPU, "
        "at most 32)",
    )
    parser.add_argument(
        "--augment-op",
        action="append",
        default=[],
        metavar="OP",
        choices=sorted(set(OPS) - set(BASE_OPS)),
        help="add an augmentation to the recipe's (meter_spelling: reels and hornpipes "
        "written as 2/4 with L:1/16 or as cut time with L:1/8, both ways; slurs: slurs "
        "removed from slurred tunes, added to others)",
    )
    parser.add_argument(
        "--input-profile",
        default=None,
        choices=sorted(INPUT_PROFILES),
        help="how music text is rewritten before patching, in training and by every user of "
        f"the model (default {REFERENCE_PROFILE}: the reference text; "
        f"{RHYTHM_SUMMARY_PROFILE}: a line of spelling-free rhythm statistics added; "
        f"{CANONICAL_DUPLE_PROFILE}: that, and every duple meter written one way; "
        f"{SOUNDING_SUMMARY_PROFILE}: the statistics of sounding note lengths, read without "
        "bar lines, which survive MusicXML and MIDI round trips; "
        f"{CANONICAL_DUPLE_SOUNDING_PROFILE}: that, and every duple meter written one way)",
    )
    parser.add_argument(
        "--rhythm-words",
        action="store_true",
        default=None,
        help="add words for each tune's rhythm to its training texts ('dotted rhythms', "
        "'phrases ending on three long notes', 'even running notes')",
    )
    parser.add_argument(
        "--rhythm-words-p",
        type=float,
        default=None,
        metavar="P",
        help="with --rhythm-words: the share of text draws offered those words (default 1)",
    )
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> TrainConfig:
    """Recipe defaults, then --config's JSON, then flags."""
    values: dict[str, Any] = dict(VIEW_RECIPE)
    if args.config:
        values.update(json.loads(args.config.read_text()))
    heldout = (
        []
        if args.no_heldout_collection
        else (args.heldout_collection or values.get("heldout_collections", HELDOUT_COLLECTIONS))
    )
    values["heldout_collections"] = list(heldout)
    values["collections"] = training_collections(args.include_restricted, heldout)
    if args.augment_op:
        ops = values.get("augment_ops", list(BASE_OPS))
        values["augment_ops"] = [*ops, *(op for op in args.augment_op if op not in ops)]
    for key, value in (
        ("minutes", args.minutes),
        ("max_steps", args.steps),
        ("seed", args.seed),
        ("threads", args.threads),
        ("bf16", args.bf16),
        ("eval_every", args.eval_every),
        ("input_profile", args.input_profile),
        ("text_rhythm_words", args.rhythm_words),
        ("text_rhythm_words_p", args.rhythm_words_p),
    ):
        if value is not None:
            values[key] = value
    return TrainConfig(**values)


def parse_config(argv: list[str] | None = None) -> tuple[Path, TrainConfig]:
    """(output directory, config) from the command line."""
    args = parse_args(argv)
    return args.out, build_config(args)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = build_config(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    restricted = [c for c in cfg.collections or [] if not SOURCES[c].redistributable]
    if restricted:
        print(
            f"warning: training on {restricted}: their licences forbid redistributing these "
            "weights under the project's licence; the manifest marks them not redistributable",
            file=sys.stderr,
        )
    records = load_corpus(collections=cfg.collections)
    train_set, heldout = split_records(records, cfg.split_salt_bytes())
    roundtrips: RoundTrips | None = None
    trip_counts: dict[str, int] = {}
    if not args.no_roundtrips:
        cache, trip_counts = filled_cache(
            args.roundtrip_cache or default_cache_dir(),
            [(r.key_hash, r.music_text) for r in train_set],
            args.convert_workers,
        )
        roundtrips = cache.views
    model, _, history = train(cfg, records, roundtrips=roundtrips)
    metrics = evaluate_heldout(
        ClampEncoder(
            in_memory_clamp(model, load_tokenizer(minilm_dir()), cfg.name, cfg.input_profile)
        ),
        heldout,
    )
    stats = corpus_stats(records)
    training = {
        "sources": licence_table(cfg.collections or []),
        "redistributable": not restricted,
        "heldout_collections": cfg.heldout_collections,
        "tunes": stats["tunes"],
        "per_collection": stats["per_collection"],
        "corpus_sha256": data_snapshot(records)["sha256"],
        "roundtrips": trip_counts,
        **{
            k: history[k]
            for k in (
                "steps",
                "stopped_by_time_budget",
                "epochs",
                "seconds",
                "temperature",
                "music_views",
            )
        },
        "train_tunes": history["train_tunes"],
        "heldout_tunes": history["heldout_tunes"],
        "loss_curve": history["loss"][-20:],
    }
    save_model(model, args.out, cfg=cfg, metrics={"heldout": metrics}, training=training)
    print(json.dumps({"heldout": metrics, "history_evals": history["evals"]}, indent=2))
