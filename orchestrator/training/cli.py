"""`python -m orchestrator.training`: train the shipped model's recipe on music21's corpus."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from orchestrator.training.catalogue import data_snapshot
from orchestrator.training.config import TrainConfig
from orchestrator.training.data import corpus_stats, load_corpus, split_records
from orchestrator.training.eval import evaluate_heldout
from orchestrator.training.export import save_model
from orchestrator.training.loop import train
from orchestrator.training.model import in_memory_clamp
from workers.clamp import ClampEncoder
from workers.clamp.loading import load_tokenizer
from workers.clamp.minilm import minilm_dir

PROG = "python -m orchestrator.training"
DESCRIPTION = (
    "Contrastive training of a small CLaMP-layout model (frozen MiniLM text side) on music21 ABC."
)


def parse_config(argv: list[str] | None = None) -> tuple[Path, TrainConfig]:
    """(output directory, config) from the command line; flags override --config's JSON."""
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=None, help="time budget for training")
    parser.add_argument("--steps", type=int, default=None, help="fixed schedule length")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--bf16", action="store_true", default=None, help="bf16 autocast")
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--config", type=Path, help="JSON file with TrainConfig fields")
    args = parser.parse_args(argv)
    values: dict[str, Any] = json.loads(args.config.read_text()) if args.config else {}
    for key, value in (
        ("minutes", args.minutes),
        ("max_steps", args.steps),
        ("seed", args.seed),
        ("threads", args.threads),
        ("bf16", args.bf16),
        ("eval_every", args.eval_every),
    ):
        if value is not None:
            values[key] = value
    return args.out, TrainConfig(**values)


def main(argv: list[str] | None = None) -> None:
    out, cfg = parse_config(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    records = load_corpus()
    model, _, history = train(cfg, records)
    _, heldout = split_records(records)
    metrics = evaluate_heldout(
        ClampEncoder(in_memory_clamp(model, load_tokenizer(minilm_dir()), cfg.name)), heldout
    )
    stats = corpus_stats(records)
    training = {
        "tunes": stats["tunes"],
        "per_collection": stats["per_collection"],
        "corpus_sha256": data_snapshot(records)["sha256"],
        **{k: history[k] for k in ("steps", "epochs", "seconds", "temperature")},
        "train_tunes": history["train_tunes"],
        "heldout_tunes": history["heldout_tunes"],
        "loss_curve": history["loss"][-20:],
    }
    save_model(model, out, cfg=cfg, metrics={"heldout": metrics}, training=training)
    print(json.dumps({"heldout": metrics, "history_evals": history["evals"]}, indent=2))
