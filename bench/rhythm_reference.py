"""What a classifier *trained* for dance types reaches on a book it never saw: the
reference for the zero-shot rhythm target on a held-out collection.

    python -m bench.rhythm_reference --json [--model DIR] [--heldout ryansMammoth,oneills1850]

For each held-out book, a class-balanced linear classifier is fitted on the labelled
tunes (jig, reel, hornpipe, waltz, slip jig) of every other book and scored on the
held-out one, with balanced accuracy and confusion matrix as `bench.eval` reports them:

- `rhythm_features`: spelling-free rhythm statistics of the plain text
  (`workers.abc.rhythm`): the same bar gives the same numbers however
  the book spells its meter and note lengths; `--features sounding` reads them from
  sounding note lengths without bar lines instead (`workers.abc.sounding_rhythm`), and
  `--digits` rounds them to the summary line's digits, what a profiled model is shown;
- `model_vectors` (with `--model`, for books the model held out): the model's music
  vectors of `bench.eval`'s unseen view, a linear probe where zero-shot uses text prompts;
- `zero_shot`: the model's prompt ensemble on the same vectors, as `bench.eval` scores it;
- `rhythm_features_in_book`: 5-fold cross-validation inside the book, what the features
  tell apart when the book's own labels are seen.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from orchestrator.training.data import TuneRecord  # noqa: E402
from workers.abc.profiles import summary_digits  # noqa: E402
from workers.abc.rhythm import rhythm_features  # noqa: E402
from workers.abc.sounding_rhythm import sounding_rhythm_features  # noqa: E402

FEATURE_SETS: dict[str, Callable[[str], np.ndarray]] = {
    "written": rhythm_features,
    "sounding": sounding_rhythm_features,
}

FOLDS = 5
L2 = 1e-3  # a light ridge: a few dozen standardised inputs against hundreds of tunes a class


def fit_linear(x: np.ndarray, truth: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Weights [features + 1, classes] of a class-balanced multinomial logistic regression
    on standardised x; the last row is the bias. Deterministic: zero start, L-BFGS."""
    import torch

    index = {c: i for i, c in enumerate(classes)}
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    features = torch.tensor(np.hstack([(x - mean) / std, np.ones((len(x), 1))]))
    target = torch.tensor([index[t] for t in truth])
    counts = torch.bincount(target, minlength=len(classes)).double()
    present = counts > 0
    # Every class present weighs alike, as balanced accuracy counts it.
    weight = torch.where(present, counts.sum() / (counts * present.sum()), 0.0)
    w = torch.zeros(features.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([w], max_iter=500, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        value = torch.nn.functional.cross_entropy(features @ w, target, weight=weight)
        value = value + L2 * (w[:-1] ** 2).sum()
        value.backward()
        return value

    optimiser.step(loss)
    weights = w.detach().numpy()
    # Folding the standardisation into the weights lets `classify` score raw features.
    scaled = weights[:-1] / std[:, None]
    bias = weights[-1] - mean @ scaled
    return np.vstack([scaled, bias])


def linear_report(
    train_x: np.ndarray, train_truth: Sequence[str], test_x: np.ndarray, test_truth: Sequence[str]
) -> dict[str, Any]:
    """Fit on one set, score on the other, in `eval_transfer.classify`'s report shape."""
    from orchestrator.training.eval_transfer import RHYTHM_CLASSES, classify

    weights = fit_linear(train_x, train_truth, RHYTHM_CLASSES)
    with_bias = np.hstack([test_x, np.ones((len(test_x), 1))])
    return classify(with_bias, test_truth, weights.T, RHYTHM_CLASSES)


def in_book_report(x: np.ndarray, truth: Sequence[str], keys: Sequence[str]) -> dict[str, Any]:
    """FOLDS-fold cross-validation inside one book, folds by content hash order."""
    from orchestrator.training.eval_transfer import RHYTHM_CLASSES, classify

    order = np.argsort(np.array(keys))
    fold = np.empty(len(keys), dtype=int)
    fold[order] = np.arange(len(keys)) % FOLDS
    scores = np.zeros((len(keys), len(RHYTHM_CLASSES)))
    labels = np.array(truth)
    for k in range(FOLDS):
        train, test = fold != k, fold == k
        weights = fit_linear(x[train], list(labels[train]), RHYTHM_CLASSES)
        scores[test] = np.hstack([x[test], np.ones((int(test.sum()), 1))]) @ weights
    # Scores are already per class: classify against the identity picks their argmax.
    return classify(scores, truth, np.eye(len(RHYTHM_CLASSES)), RHYTHM_CLASSES)


def labelled_by_collection(records: Sequence[TuneRecord]) -> dict[str, list[TuneRecord]]:
    from orchestrator.training.eval_transfer import rhythm_labelled

    out: dict[str, list[TuneRecord]] = {}
    for record in rhythm_labelled(records):
        out.setdefault(record.collection, []).append(record)
    return out


def book_report(
    book: str,
    books: dict[str, list[TuneRecord]],
    features: Callable[[Sequence[TuneRecord]], np.ndarray],
    model: Any | None,
) -> dict[str, Any]:
    """Every reference for one held-out book; `model` is (encoder, templates) or None."""
    test = books[book]
    train = [r for name, records in books.items() if name != book for r in records]
    test_truth = [r.rhythm or "" for r in test]
    train_truth = [r.rhythm or "" for r in train]
    test_x = features(test)
    report: dict[str, Any] = {
        "n": len(test),
        "trained_on": sorted(name for name in books if name != book),
        "rhythm_features": linear_report(features(train), train_truth, test_x, test_truth),
        "rhythm_features_in_book": in_book_report(test_x, test_truth, [r.key_hash for r in test]),
    }
    if model is not None:
        from orchestrator.training.eval_transfer import (
            encode_music_texts,
            rhythm_report,
            unseen_view,
        )
        from schemas.settings import CLASSIFY_LABEL_PROMPTS

        encoder, templates = model
        train_v = encode_music_texts(encoder, [unseen_view(r) for r in train])
        test_v = encode_music_texts(encoder, [unseen_view(r) for r in test])
        report["model_vectors"] = linear_report(train_v, train_truth, test_v, test_truth)
        report["zero_shot"] = rhythm_report(test_v, test_truth, encoder.encode_texts, templates)
        # What `classify` answers by default: the same ensemble with the labels' own prompts.
        report["zero_shot_label_prompts"] = rhythm_report(
            test_v, test_truth, encoder.encode_texts, templates, CLASSIFY_LABEL_PROMPTS
        )
    return report


def headline(report: dict[str, Any]) -> dict[str, float]:
    """Balanced accuracy of each reference, for a one-line comparison."""
    return {
        name: round(part["balanced_accuracy"], 3)
        for name, part in report.items()
        if isinstance(part, dict) and "balanced_accuracy" in part
    }


def main() -> None:
    from orchestrator.search import DEFAULT_TEMPLATES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--model", type=Path, help="model directory: adds its probe and zero-shot")
    parser.add_argument(
        "--heldout",
        default="ryansMammoth,oneills1850",
        help="comma-separated books to hold out, one at a time (default: %(default)s, the "
        "two that have both reels and hornpipes)",
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument(
        "--features",
        choices=sorted(FEATURE_SETS),
        default="written",
        help="written: per bar, as the notes are written (profile rhythm-summary-v1); "
        "sounding: sounding lengths, no bar lines (rhythm-summary-v2)",
    )
    parser.add_argument(
        "--digits", action="store_true", help="round the features to the summary line's digits"
    )
    args = parser.parse_args()

    import torch

    from bench.eval import trained_on
    from orchestrator.training.data import load_corpus

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.monotonic()
    books = labelled_by_collection(load_corpus())
    encoder = None
    model_heldout: list[str] = []
    if args.model:
        from workers.clamp import ClampEncoder, load_clamp

        encoder = ClampEncoder(load_clamp(args.model), text_cache_size=4096)
        model_heldout = trained_on(args.model)[1]

    read = FEATURE_SETS[args.features]

    def features(records: Sequence[TuneRecord]) -> np.ndarray:
        values = np.stack([read(r.music_text) for r in records])
        return summary_digits(values) / 9 if args.digits else values

    reports: dict[str, Any] = {}
    for book in (name for name in args.heldout.split(",") if name):
        if book not in books:
            parser.error(f"{book!r} has no dance-labelled tunes; books: {sorted(books)}")
        # A probe or zero-shot on a book the model trained on would not be a held-out number.
        model = (encoder, DEFAULT_TEMPLATES) if book in model_heldout else None
        reports[book] = book_report(book, books, features, model)
        reports[book]["headline"] = headline(reports[book])
    result = {
        "features": args.features + (" digits" if args.digits else ""),
        "model": str(args.model) if args.model else None,
        "model_heldout": model_heldout,
        "books": reports,
        "seconds": round(time.monotonic() - start, 1),
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
