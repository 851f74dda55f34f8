"""Evaluation that tells music from notation: rhythm zero-shot, unseen collections, formats.

A model can score well on held-out tunes of its training collections by reading each
collection's house notation (its bowings, fingerings, line layout) instead of the music.
These checks take that shortcut away:

* rhythm zero-shot scored by balanced accuracy, so answering the majority dance type
  everywhere earns 1/k, not the majority share;
* a collection the model never trained on, in a view with chord symbols added;
* cross-format retrieval: a tune exported to MusicXML or MIDI and read back by the
  product's converters must still find its own ABC original among all the others.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from orchestrator.search import grouped_label_vectors, label_prompts, label_vectors
from orchestrator.training.augment_notation import add_chord_symbols
from orchestrator.training.data import TuneRecord, full_text
from orchestrator.training.eval import retrieval_metrics
from orchestrator.training.roundtrip import FORMATS
from workers.abc import ParsedPiece, parse_abc_text
from workers.abc.rhythm import meter_kind

RHYTHM_CLASSES: tuple[str, ...] = ("jig", "reel", "hornpipe", "waltz", "slip jig")
SINGLE_TEMPLATE: tuple[str, ...] = ("a {label}",)
# Prompts a user might plausibly write; rank_templates picks an ensemble from these on the
# training collections' held-out split, never on an unseen collection.
TEMPLATE_CANDIDATES: tuple[str, ...] = (
    "a {label}",
    "a {label} tune",
    "the dance tune of a {label}",
    "a traditional {label}",
    "an Irish {label}",
    "{label}",
    "a folk {label}",
    "music for a {label}",
)
UNSEEN_VIEW = "encoder music text with chord symbols added at bar starts"
# The meter kinds (workers.abc.rhythm.meter_kind) each dance type is defined by. A book's
# label on a tune in another meter says what the book called it, which no reader of the music
# can recover: Ryan's calls 24 tunes in 9/8 (slip-jig time) "jig", and 16 duple ones
# (American clog "jigs") too.
DANCE_METERS: Mapping[str, frozenset[str]] = {
    "jig": frozenset({"6/8", "12/8"}),
    "reel": frozenset({"duple"}),
    "hornpipe": frozenset({"duple"}),
    "waltz": frozenset({"3/4"}),
    "slip jig": frozenset({"9/8"}),
}


class Encoder(Protocol):
    """What these evaluations need of workers.clamp.ClampEncoder."""

    @property
    def max_patches(self) -> int: ...

    def music_patches(self, music_text: str, max_patches: int | None = None) -> np.ndarray: ...

    def encode_music(self, pieces: Sequence[np.ndarray]) -> np.ndarray: ...

    def encode_texts(self, texts: list[str]) -> np.ndarray: ...


class ConvertedTexts(Protocol):
    """What cross_format needs of roundtrip.RoundTripCache."""

    def get(self, key: str, target: str) -> str | None: ...


def encode_music_texts(encoder: Encoder, music_texts: Sequence[str]) -> np.ndarray:
    """Unit music vectors of encoder music texts, in order."""
    return encoder.encode_music(
        [encoder.music_patches(t, encoder.max_patches) for t in music_texts]
    )


# --- scoring ---------------------------------------------------------------------------


def _check_labels(labels: Sequence[str], classes: Sequence[str], what: str) -> None:
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise ValueError(f"{what} label(s) {unknown} are not among the classes {list(classes)}")


def confusion_matrix(
    truth: Sequence[str], picked: Sequence[str], classes: Sequence[str]
) -> dict[str, dict[str, int]]:
    """{truth label: {predicted label: count}}: a row for each class that occurs in truth,
    a column for every class (an offered class nobody has can still be picked)."""
    if len(truth) != len(picked):
        raise ValueError(f"{len(truth)} truth labels but {len(picked)} predictions")
    _check_labels(truth, classes, "truth")
    _check_labels(picked, classes, "predicted")
    present = [c for c in classes if c in set(truth)]
    matrix = {row: dict.fromkeys(classes, 0) for row in present}
    for right, answer in zip(truth, picked, strict=True):
        matrix[right][answer] += 1
    return matrix


def per_class_recall(confusion: dict[str, dict[str, int]]) -> dict[str, dict[str, float]]:
    """{class: {"n": examples, "recall": share of them predicted as that class}}."""
    out: dict[str, dict[str, float]] = {}
    for label, row in confusion.items():
        n = sum(row.values())
        out[label] = {"n": n, "recall": row[label] / n}
    return out


def balanced_accuracy(truth: Sequence[str], picked: Sequence[str], classes: Sequence[str]) -> float:
    """Mean recall over the classes that occur in truth: each counts alike, however rare.

    Any constant answer scores 1/k for k classes present; chance, not the majority share.
    """
    if not truth:
        raise ValueError("balanced accuracy of no examples")
    recalls = per_class_recall(confusion_matrix(truth, picked, classes))
    return float(np.mean([r["recall"] for r in recalls.values()]))


def answer_ranks(queries: np.ndarray, gallery: np.ndarray, answers: np.ndarray) -> np.ndarray:
    """1-based rank of each query's right gallery row; ties count against the model."""
    scores = queries @ gallery.T
    right = scores[np.arange(len(scores)), answers]
    return (scores >= right[:, None]).sum(axis=1)


def rank_metrics(ranks: np.ndarray, gallery_size: int) -> dict[str, Any]:
    if len(ranks) == 0:
        return {"top1": None, "top10": None, "mrr": None, "n": 0, "gallery": gallery_size}
    return {
        "top1": float(np.mean(ranks <= 1)),
        "top10": float(np.mean(ranks <= 10)),
        "mrr": float(np.mean(1.0 / ranks)),
        "n": len(ranks),
        "gallery": gallery_size,
    }


# --- rhythm zero-shot ------------------------------------------------------------------


def rhythm_labelled(records: Sequence[TuneRecord]) -> list[TuneRecord]:
    """Records whose dance type is one of RHYTHM_CLASSES."""
    return [r for r in records if r.rhythm in RHYTHM_CLASSES]


def meter_fits_label(record: TuneRecord) -> bool:
    """Whether the record's dance type is one of DANCE_METERS and its meter one of that
    type's."""
    if record.meter is None:
        return False
    return meter_kind(record.meter)[0] in DANCE_METERS.get(record.rhythm or "", frozenset())


def prompt_vectors(
    encode_texts: Callable[[list[str]], np.ndarray],
    classes: Sequence[str],
    templates: Sequence[str],
    per_label: Mapping[str, Sequence[str]] | None = None,
) -> np.ndarray:
    """[classes, D] unit text vectors: each class's prompts (search.label_prompts) averaged."""
    _, prompts = label_prompts(classes, templates, per_label)
    return grouped_label_vectors(encode_texts, prompts)


def template_vectors(
    encode_texts: Callable[[list[str]], np.ndarray],
    template: str,
    classes: Sequence[str] = RHYTHM_CLASSES,
) -> np.ndarray:
    """[classes, D] unit text vectors of one template filled with each class."""
    return prompt_vectors(encode_texts, classes, (template,))


def ensemble_vectors(per_template: Sequence[np.ndarray]) -> np.ndarray:
    """CLIP's prompt ensemble of several templates' [classes, D] vectors: one per class."""
    stacked = np.stack(per_template, axis=1)  # [classes, templates, D], label-major
    classes, templates, dim = stacked.shape
    return label_vectors(stacked.reshape(-1, dim), [templates] * classes)


def classify(
    music: np.ndarray, truth: Sequence[str], labels: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Argmax over every class's vector for each piece, scored against truth."""
    picked = [classes[i] for i in np.argmax(music @ labels.T, axis=1)]
    confusion = confusion_matrix(truth, picked, classes)
    recalls = per_class_recall(confusion)
    return {
        "accuracy": float(np.mean([a == b for a, b in zip(truth, picked, strict=True)])),
        "balanced_accuracy": float(np.mean([r["recall"] for r in recalls.values()])),
        # What answering one class everywhere scores, the bar any real model must clear.
        "constant_balanced_accuracy": 1.0 / len(confusion),
        "per_class": recalls,
        "confusion": confusion,
        "classes": list(classes),
        "n": len(truth),
    }


def rhythm_report(
    music: np.ndarray,
    truth: Sequence[str],
    encode_texts: Callable[[list[str]], np.ndarray],
    templates: Sequence[str],
    per_label: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Rhythm zero-shot of already encoded pieces with a template ensemble (and the labels'
    own prompts in `per_label`, as `classify` uses them by default)."""
    named = {"templates": list(templates)}
    if per_label:
        named["label_prompts"] = {label: list(p) for label, p in per_label.items()}
    if not truth:
        return {"n": 0, **named}
    labels = prompt_vectors(encode_texts, RHYTHM_CLASSES, templates, per_label)
    return {**classify(music, truth, labels, RHYTHM_CLASSES), **named}


def zero_shot_rhythm(
    encoder: Encoder,
    records: Sequence[TuneRecord],
    templates: Sequence[str],
    view: Callable[[TuneRecord], str] | None = None,
    per_label: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Dance type by zero-shot over all of RHYTHM_CLASSES, for records labelled with one.

    `templates` are ensembled (one template is plain zero-shot), with `per_label`'s prompts
    for the labels it names; `view` gives the music text each record is encoded from (its
    own music_text by default).
    """
    labelled = rhythm_labelled(records)
    texts = [view(r) if view else r.music_text for r in labelled]
    music = encode_music_texts(encoder, texts) if labelled else np.empty((0, 0))
    truth = [r.rhythm or "" for r in labelled]
    return rhythm_report(music, truth, encoder.encode_texts, templates, per_label)


def rank_templates(
    encoder: Encoder,
    records: Sequence[TuneRecord],
    candidates: Sequence[str] = TEMPLATE_CANDIDATES,
) -> dict[str, Any]:
    """Each candidate's rhythm balanced accuracy alone, and a greedy ensemble.

    Greedy: start from the best single template, keep adding the one that raises balanced
    accuracy most, stop when none raises it (ties go to the earlier candidate). Run it on
    the training collections' held-out split: picking on an unseen collection would make
    that collection's numbers no longer unseen.
    """
    labelled = rhythm_labelled(records)
    truth = [r.rhythm or "" for r in labelled]
    if not labelled:
        return {"n": 0, "single": [], "greedy": None, "all": None}
    music = encode_music_texts(encoder, [r.music_text for r in labelled])
    vectors = {t: template_vectors(encoder.encode_texts, t) for t in candidates}

    def score(chosen: Sequence[str]) -> dict[str, Any]:
        labels = ensemble_vectors([vectors[t] for t in chosen])
        return classify(music, truth, labels, RHYTHM_CLASSES)

    alone = {t: _headline(score([t])) for t in candidates}
    # sorted() is stable: equal scores keep the candidates' order.
    ranked = sorted(candidates, key=lambda t: -alone[t]["balanced_accuracy"])
    return {
        "n": len(labelled),
        "single": [{"template": t, **alone[t]} for t in ranked],
        "greedy": greedy_ensemble(list(candidates), lambda c: score(c)["balanced_accuracy"]),
        "all": {"templates": list(candidates), **_headline(score(candidates))},
    }


def _headline(report: dict[str, Any]) -> dict[str, float]:
    return {"balanced_accuracy": report["balanced_accuracy"], "accuracy": report["accuracy"]}


def greedy_ensemble(candidates: list[str], score: Callable[[list[str]], float]) -> dict[str, Any]:
    """Forward selection of templates by `score`; the steps show what each addition gave."""
    chosen: list[str] = []
    best = float("-inf")
    steps: list[dict[str, Any]] = []
    while len(chosen) < len(candidates):
        options = [(score([*chosen, t]), t) for t in candidates if t not in chosen]
        # max() keeps the first of equal scores: the earlier candidate wins a tie.
        value, template = max(options, key=lambda option: option[0])
        if value <= best:
            break
        chosen.append(template)
        best = value
        steps.append({"added": template, "balanced_accuracy": value})
    return {"templates": chosen, "balanced_accuracy": best, "steps": steps}


# --- unseen collections and other formats ---------------------------------------------


def unseen_view(record: TuneRecord) -> str:
    """The record's encoder music text with chord symbols added; the original if none can be.

    Titles and R: need no removing here: workers/abc/filter.py drops T:, R: and the other
    metadata fields before music_text is made, so they are not in it to begin with.
    """
    # Seeded by the content hash: every run and every model sees the same view of a tune.
    rng = random.Random(record.key_hash)
    tune = "X:1\n" + record.music_text
    try:
        changed = add_chord_symbols(tune, rng)
    except Exception:  # one odd tune must not stop an evaluation; it keeps its text
        return record.music_text
    if changed == tune:  # it has chord symbols already
        return record.music_text
    parsed = parse_abc_text(changed)
    if len(parsed) != 1 or not isinstance(parsed[0], ParsedPiece):
        return record.music_text
    return parsed[0].music_text


def format_retrieval(
    encoder: Encoder,
    records: Sequence[TuneRecord],
    cache: ConvertedTexts,
    target: str,
    gallery: np.ndarray,
) -> dict[str, Any]:
    """Converted texts of `records` as queries against `gallery` (their originals' vectors).

    `failed` counts records without a converted text, whether the conversion failed or
    was never run.
    """
    found = [(i, cache.get(r.key_hash, target)) for i, r in enumerate(records)]
    queries = [(i, text) for i, text in found if text]
    result: dict[str, Any] = {
        "converted": len(queries),
        "failed": len(records) - len(queries),
        # A converted text equal to its original makes rank 1 trivial; this says how often.
        "identical": sum(text == records[i].music_text for i, text in queries),
    }
    if not queries:
        return {**result, **rank_metrics(np.empty(0), len(records))}
    vectors = encode_music_texts(encoder, [text for _, text in queries])
    ranks = answer_ranks(vectors, gallery, np.array([i for i, _ in queries]))
    return {**result, **rank_metrics(ranks, len(records))}


def cross_format(
    encoder: Encoder,
    records: Sequence[TuneRecord],
    cache: ConvertedTexts,
    formats: Sequence[str] = FORMATS,
    gallery: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """For each format: each record's round-tripped text retrieving its own ABC original
    from the originals of all the records. `gallery` may pass their vectors if known."""
    if gallery is None:
        gallery = encode_music_texts(encoder, [r.music_text for r in records])
    return {f: format_retrieval(encoder, records, cache, f, gallery) for f in formats}


def evaluate_unseen(
    encoder: Encoder,
    records: Sequence[TuneRecord],
    cache: ConvertedTexts,
    templates: Sequence[str],
    per_label: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """All checks on a collection the model never trained on; rhythm also with the labels'
    own prompts when `per_label` is given (what `classify` does by default).

    Retrieval and rhythm run on unseen_view; the plain-text numbers sit beside them so a
    drop caused by the view alone shows. Cross-format queries are the plain text's round
    trips, retrieving the plain originals.
    """
    views = [unseen_view(r) for r in records]
    plain = encode_music_texts(encoder, [r.music_text for r in records])
    viewed = encode_music_texts(encoder, views)
    queries = encoder.encode_texts([full_text(r) for r in records])
    rows = [i for i, r in enumerate(records) if r.rhythm in RHYTHM_CLASSES]
    fitting = [i for i in rows if meter_fits_label(records[i])]

    def rhythm(music: np.ndarray, chosen: Sequence[int] = rows) -> dict[str, Any]:
        truth = [records[i].rhythm or "" for i in chosen]

        def report(templates_: Sequence[str], own: Mapping[str, Sequence[str]] | None = None):
            return rhythm_report(music[list(chosen)], truth, encoder.encode_texts, templates_, own)

        reports = {"single": report(SINGLE_TEMPLATE), "ensemble": report(templates)}
        if per_label:
            reports["label_prompts"] = report(templates, per_label)
        return reports

    return {
        "n": len(records),
        "view": UNSEEN_VIEW,
        "chords_added": sum(v != r.music_text for v, r in zip(views, records, strict=True)),
        "text_to_music": retrieval_metrics(queries, viewed),
        "text_to_music_plain": retrieval_metrics(queries, plain),
        "zero_shot_rhythm": rhythm(viewed),
        "zero_shot_rhythm_plain": rhythm(plain),
        # The same on the tunes whose label its meter allows (DANCE_METERS), with what is
        # left out: how much of the headline's shortfall is the book's naming.
        "zero_shot_rhythm_meter_fits_label": {
            "left_out": dict(Counter(records[i].rhythm for i in set(rows) - set(fitting))),
            **rhythm(viewed, fitting),
        },
        "cross_format": cross_format(encoder, records, cache, gallery=plain),
    }
