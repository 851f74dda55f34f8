"""Retrieval metrics, zero-shot classification and held-out evaluation of a model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from orchestrator.training.data import KEY_SIGNATURE_ONLY, TuneRecord, full_text
from workers.clamp import ClampEncoder, load_clamp
from workers.clamp.hardware import resolve_device

if TYPE_CHECKING:
    from orchestrator.training.eval_transfer import ConvertedTexts

# Prompts for zero-shot classification on the held-out split; recorded with the metrics.
TEMPLATES = {
    "meter": "a tune in {label} time",
    "mode": "a tune in a {label} key",
    "key": "a tune in {label}",
    "rhythm": "a {label}",
}
MIN_CLASS_COUNT = 5


def retrieval_metrics(queries: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Query i's right answer is target i; unit vectors in, MRR and hit rates out."""
    scores = queries @ targets.T
    right = scores[np.arange(len(scores)), np.arange(len(scores))]
    # Ties count against the model, so constant vectors cannot look good.
    ranks = (scores >= right[:, None]).sum(axis=1)
    return {
        "mrr": float(np.mean(1.0 / ranks)),
        "hr@1": float(np.mean(ranks <= 1)),
        "hr@10": float(np.mean(ranks <= 10)),
        "n": len(ranks),
    }


def zero_shot(
    music: np.ndarray,
    labels: Sequence[str],
    classes: Sequence[str],
    template: str,
    encode_texts: Callable[[list[str]], np.ndarray],
) -> dict[str, Any]:
    """Accuracy of picking the class whose prompt is nearest to each piece."""
    prompts = [template.format(label=c) for c in classes]
    text = encode_texts(prompts)
    picked = np.argmax(music @ text.T, axis=1)
    truth = np.array([list(classes).index(label) for label in labels])
    counts = np.bincount(truth, minlength=len(classes))
    return {
        "accuracy": float(np.mean(picked == truth)),
        "majority_baseline": float(counts.max() / len(truth)),
        "classes": list(classes),
        "template": template,
        "n": len(labels),
    }


def _labelled(
    records: Sequence[TuneRecord],
    attr: str,
    keep: Callable[[TuneRecord], bool],
    min_count: int,
) -> tuple[list[int], list[str], list[str]]:
    values = [(i, getattr(r, attr)) for i, r in enumerate(records) if keep(r)]
    values = [(i, v) for i, v in values if v]
    counts: dict[str, int] = {}
    for _, value in values:
        counts[value] = counts.get(value, 0) + 1
    classes = sorted(c for c, n in counts.items() if n >= min_count)
    chosen = [(i, v) for i, v in values if v in classes]
    return [i for i, _ in chosen], [v for _, v in chosen], classes


def evaluate_heldout(
    encoder: ClampEncoder,
    records: Sequence[TuneRecord],
    min_class_count: int = MIN_CLASS_COUNT,
) -> dict[str, Any]:
    """Text->music retrieval with each tune's full metadata text, plus zero-shot labels."""
    music = encoder.encode_music(
        [encoder.music_patches(r.music_text, encoder.max_patches) for r in records]
    )
    queries = encoder.encode_texts([full_text(r) for r in records])
    result: dict[str, Any] = {"text_to_music": retrieval_metrics(queries, music)}

    # Mode and key labels are trusted only where collections write modes out.
    def spelled(r: TuneRecord) -> bool:
        return r.collection not in KEY_SIGNATURE_ONLY

    tasks = {
        "meter": _labelled(records, "meter", lambda r: True, min_class_count),
        "mode": _labelled(records, "mode", spelled, min_class_count),
        "key": _labelled(records, "key_name", spelled, min_class_count),
        "rhythm": _labelled(records, "rhythm", lambda r: True, min_class_count),
    }
    for task, (rows, labels, classes) in tasks.items():
        if len(classes) < 2:
            continue
        result[f"zero_shot_{task}"] = zero_shot(
            music[rows], labels, classes, TEMPLATES[task], encoder.encode_texts
        )
    return result


def gate_metrics(heldout: dict[str, Any]) -> dict[str, float]:
    """The flat numbers a promotion gate compares, from evaluate_heldout's report."""
    retrieval = heldout["text_to_music"]
    metrics = {
        "text_to_music_mrr": retrieval["mrr"],
        "text_to_music_r@1": retrieval["hr@1"],
        "text_to_music_r@10": retrieval["hr@10"],
        "pieces": float(retrieval["n"]),
    }
    rhythm = heldout.get("zero_shot_rhythm")
    if rhythm is not None:
        metrics["zero_shot_accuracy"] = rhythm["accuracy"]
        metrics["zero_shot_majority"] = rhythm["majority_baseline"]
        metrics["zero_shot_pieces"] = float(rhythm["n"])
    return metrics


def evaluate_model(
    model_dir: Path,
    records: Sequence[TuneRecord],
    device: str = "auto",
    converted: ConvertedTexts | None = None,
) -> dict[str, float]:
    """Held-out metrics of any checkpoint load_clamp reads, on the given records.

    `text_to_music_mrr` (and r@1, r@10) always; `zero_shot_accuracy` (rhythm) when the
    records carry at least two distinct rhythm labels; with `converted` (the records'
    converter round trips), `musicxml_top10` / `midi_top10` for each format with 2 or more
    converted records: its round trip finding its ABC original among the records'
    originals. Same records, comparable numbers.
    """
    # Imported here: eval_transfer builds on this module's retrieval metrics.
    from orchestrator.training.eval_transfer import cross_format

    if len(records) < 2:
        raise ValueError(f"need at least 2 records to rank, got {len(records)}")
    target = resolve_device(device)
    encoder = ClampEncoder(load_clamp(Path(model_dir), device=target), device=target)
    # Every label counts: a gate on a small catalogue has few pieces per dance type.
    metrics = gate_metrics(evaluate_heldout(encoder, records, min_class_count=1))
    if converted is not None:
        for target_format, found in cross_format(encoder, records, converted).items():
            if found["n"] >= 2:
                metrics[f"{target_format}_top10"] = found["top10"]
                metrics[f"{target_format}_queries"] = float(found["n"])
    return metrics
