"""Contrastive training of CLaMP-layout models: music21's corpus or the catalogue's pieces."""

from orchestrator.training.catalogue import data_snapshot, records_from_pieces
from orchestrator.training.config import TrainConfig
from orchestrator.training.data import TuneRecord, content_key, split_of, split_records
from orchestrator.training.eval import evaluate_heldout, evaluate_model
from orchestrator.training.export import save_model
from orchestrator.training.loop import train
from orchestrator.training.run import TrainResult, train_on_catalogue

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TuneRecord",
    "content_key",
    "data_snapshot",
    "evaluate_heldout",
    "evaluate_model",
    "records_from_pieces",
    "save_model",
    "split_of",
    "split_records",
    "train",
    "train_on_catalogue",
]
