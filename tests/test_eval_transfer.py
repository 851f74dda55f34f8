"""Evaluation against notation shortcuts: balanced accuracy, rhythm zero-shot, unseen
collections and cross-format retrieval, on fake encoders whose right answers are known."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from orchestrator.training.data import TuneRecord, content_key, full_text
from orchestrator.training.eval_transfer import (
    RHYTHM_CLASSES,
    balanced_accuracy,
    confusion_matrix,
    cross_format,
    evaluate_unseen,
    greedy_ensemble,
    meter_fits_label,
    per_class_recall,
    rank_templates,
    unseen_view,
    zero_shot_rhythm,
)
from workers.abc import ParsedPiece, encode_patches, parse_abc_text

MAX_PATCHES = 128
_CHORD = re.compile(r'"[^"]*"')


def music_text(i: int) -> str:
    """A distinct small tune per i (its bars spell i in base 7)."""
    notes = "".join("CDEFGAB"[int(d)] for d in np.base_repr(i + 50, 7))
    return f"M:4/4\nL:1/8\nK:G\n{notes}GA|B2AG E2D2|\n"


def tune(i: int, rhythm: str | None = "jig", text: str | None = None) -> TuneRecord:
    text = music_text(i) if text is None else text
    return TuneRecord(
        key_hash=content_key(text),
        collection="ryansMammoth",
        source=f"ryansMammoth/{i}.abc",
        title=f"Tune {i}",
        composer=None,
        places=(),
        rhythm=rhythm,
        genre=None,
        meter="4/4",
        tonic="G",
        mode="major",
        tempo_words=(),
        music_text=text,
        patch_count=3,
    )


def axis(i: int, dim: int = 16) -> np.ndarray:
    vector = np.zeros(dim, dtype=np.float32)
    vector[i] = 1.0
    return vector


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


class FakeEncoder:
    """Vectors looked up by text: music by its patches, prompts by their words.

    An unknown text raises, so a test fails if the code encodes something unexpected.
    """

    max_patches = MAX_PATCHES
    dim = 16

    def __init__(self, music: dict[str, np.ndarray], texts: dict[str, np.ndarray]) -> None:
        self.music = {encode_patches(t, MAX_PATCHES).tobytes(): unit(v) for t, v in music.items()}
        self.texts = {t: unit(v) for t, v in texts.items()}

    def music_patches(self, music_text: str, max_patches: int | None = None) -> np.ndarray:
        return encode_patches(music_text, max_patches or MAX_PATCHES)

    def encode_music(self, pieces: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([self.music[p.tobytes()] for p in pieces])

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.texts[t] for t in texts])


def prompts(template: str, shift: int = 0) -> dict[str, np.ndarray]:
    """Each class's prompt on the axis of the class `shift` places further on."""
    n = len(RHYTHM_CLASSES)
    return {
        template.replace("{label}", c): axis((k + shift) % n) for k, c in enumerate(RHYTHM_CLASSES)
    }


class FakeCache:
    def __init__(self, texts: dict[tuple[str, str], str]) -> None:
        self.texts = texts

    def get(self, key: str, target: str) -> str | None:
        return self.texts.get((key, target))


# --- balanced accuracy ------------------------------------------------------------------


def test_confusion_and_balanced_accuracy_with_a_class_absent_from_truth() -> None:
    truth = ["jig", "jig", "jig", "reel"]
    picked = ["jig", "jig", "reel", "waltz"]
    confusion = confusion_matrix(truth, picked, RHYTHM_CLASSES)
    # Rows only for classes with examples; every class is a column, waltz was picked.
    assert set(confusion) == {"jig", "reel"}
    assert confusion["jig"] == {"jig": 2, "reel": 1, "hornpipe": 0, "waltz": 0, "slip jig": 0}
    assert confusion["reel"]["waltz"] == 1
    assert per_class_recall(confusion) == {
        "jig": {"n": 3, "recall": pytest.approx(2 / 3)},
        "reel": {"n": 1, "recall": 0.0},
    }
    # Mean of 2/3 and 0 over the two present classes; the absent three do not dilute it.
    assert balanced_accuracy(truth, picked, RHYTHM_CLASSES) == pytest.approx(1 / 3)


def test_a_constant_answer_scores_one_over_k_not_the_majority_share() -> None:
    truth = ["reel"] * 9 + ["jig"]
    assert balanced_accuracy(truth, ["reel"] * 10, RHYTHM_CLASSES) == pytest.approx(0.5)


def test_labels_outside_the_classes_are_refused() -> None:
    with pytest.raises(ValueError, match="polka"):
        confusion_matrix(["polka"], ["jig"], RHYTHM_CLASSES)
    with pytest.raises(ValueError, match="air"):
        confusion_matrix(["jig"], ["air"], RHYTHM_CLASSES)
    with pytest.raises(ValueError):
        balanced_accuracy([], [], RHYTHM_CLASSES)


# --- rhythm zero-shot -------------------------------------------------------------------


def rhythm_setup() -> tuple[list[TuneRecord], dict[str, np.ndarray]]:
    """Tunes 0-3 sit on their class's axis, except tune 3 (a reel) on the hornpipe axis;
    tune 4 has no dance type in the classes and must be left out."""
    rhythms = ["jig", "jig", "reel", "reel", "strathspey"]
    records = [tune(i, r) for i, r in enumerate(rhythms)]
    music = {records[i].music_text: axis(k) for i, k in enumerate([0, 0, 1, 2, 3])}
    return records, music


def test_zero_shot_rhythm_knows_the_answers() -> None:
    records, music = rhythm_setup()
    encoder = FakeEncoder(music, prompts("a {label}"))
    report = zero_shot_rhythm(encoder, records, ["a {label}"])
    assert report["n"] == 4
    assert report["accuracy"] == pytest.approx(3 / 4)
    assert report["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)
    assert report["constant_balanced_accuracy"] == pytest.approx(1 / 2)
    assert report["confusion"]["reel"]["hornpipe"] == 1
    assert report["per_class"]["jig"] == {"n": 2, "recall": 1.0}
    assert report["templates"] == ["a {label}"]
    json.dumps(report)


def test_zero_shot_rhythm_ensembles_the_templates() -> None:
    records, music = rhythm_setup()
    records = records[:3]  # the ones on their own class's axis
    texts = {**prompts("a {label}"), **prompts("the {label}"), **prompts("bad {label}", 1)}
    encoder = FakeEncoder(music, texts)
    # Alone, the bad template names each axis after the class before it: all wrong.
    assert zero_shot_rhythm(encoder, records, ["bad {label}"])["accuracy"] == 0.0
    # Two right templates outvote it: each class vector leans to its own axis.
    mixed = zero_shot_rhythm(encoder, records, ["a {label}", "bad {label}", "the {label}"])
    assert mixed["accuracy"] == 1.0
    # Two bad ones outvote the right one.
    texts |= prompts("worse {label}", 1)
    encoder = FakeEncoder(music, texts)
    wrong = zero_shot_rhythm(encoder, records, ["a {label}", "bad {label}", "worse {label}"])
    assert wrong["accuracy"] == 0.0


def test_no_labelled_tunes_is_reported_not_raised() -> None:
    encoder = FakeEncoder({}, {})
    report = zero_shot_rhythm(encoder, [tune(0, None), tune(1, "air")], ["a {label}"])
    assert report["n"] == 0


def test_rank_templates_orders_candidates_and_picks_a_greedy_ensemble() -> None:
    records, music = rhythm_setup()
    texts = {**prompts("a {label}"), **prompts("bad {label}", 1)}
    ranking = rank_templates(FakeEncoder(music, texts), records, ["bad {label}", "a {label}"])
    assert [row["template"] for row in ranking["single"]] == ["a {label}", "bad {label}"]
    assert ranking["single"][0]["balanced_accuracy"] == pytest.approx(0.75)
    # Adding the bad template cannot raise the score, so the ensemble stops at one.
    assert ranking["greedy"]["templates"] == ["a {label}"]
    assert ranking["n"] == 4


def test_greedy_ensemble_adds_while_it_helps() -> None:
    scores = {("a",): 0.5, ("b",): 0.6, ("c",): 0.1, ("b", "a"): 0.7, ("b", "c"): 0.65}
    scores |= {("b", "a", "c"): 0.69}
    result = greedy_ensemble(["a", "b", "c"], lambda chosen: scores[tuple(chosen)])
    assert result["templates"] == ["b", "a"]
    assert result["balanced_accuracy"] == 0.7
    assert [step["added"] for step in result["steps"]] == ["b", "a"]


# --- unseen view ------------------------------------------------------------------------


def test_unseen_view_adds_chord_symbols_deterministically() -> None:
    record = tune(0, text="M:6/8\nL:1/8\nK:G\nGAG GAB|ABA ABd|edd gdd|edB dBA|\n")
    view = unseen_view(record)
    assert view != record.music_text
    assert _CHORD.search(view)
    assert view == unseen_view(replace(record))
    # Only chord symbols were added: the notes are the original's.
    assert _CHORD.sub("", view).split() == record.music_text.split()
    parsed = parse_abc_text("X:1\n" + view)
    assert len(parsed) == 1 and isinstance(parsed[0], ParsedPiece)


def test_unseen_view_adds_chord_symbols_beside_fingerings() -> None:
    record = tune(0, text='M:6/8\nL:1/8\nK:G\n"4"GAG GAB|"0"ABA ABd|edd gdd|\n')
    view = unseen_view(record)
    quoted = re.findall(r'"([^"]*)"', view)
    assert any(s[:1] in "ABCDEFG" for s in quoted) and {"4", "0"} <= set(quoted)


def test_unseen_view_keeps_a_tune_that_has_chords_already() -> None:
    record = tune(0, text='M:6/8\nL:1/8\nK:G\n"G"GAG GAB|"D"ABA ABd|\n')
    assert unseen_view(record) == record.music_text


# --- cross-format retrieval -------------------------------------------------------------


def cross_setup() -> tuple[list[TuneRecord], FakeEncoder, FakeCache]:
    """12 originals on their own axes. MusicXML: tune 3 comes back as itself, tune 4 as a
    text pointing nowhere (every score ties at 0: last place), the rest failed. MIDI: tune
    7 comes back nearest tune 5, its own original second."""
    records = [tune(i) for i in range(12)]
    music = {r.music_text: axis(i) for i, r in enumerate(records)}
    nowhere = music_text(100)
    near_five = music_text(101)
    music |= {nowhere: axis(15), near_five: axis(5) * 2 + axis(7)}
    cache = FakeCache(
        {
            (records[3].key_hash, "musicxml"): records[3].music_text,
            (records[4].key_hash, "musicxml"): nowhere,
            (records[7].key_hash, "midi"): near_five,
        }
    )
    return records, FakeEncoder(music, {}), cache


def test_cross_format_ranks_each_tune_against_all_originals() -> None:
    records, encoder, cache = cross_setup()
    report = cross_format(encoder, records, cache)
    xml = report["musicxml"]
    assert (xml["converted"], xml["failed"], xml["identical"]) == (2, 10, 1)
    assert xml["gallery"] == 12
    assert xml["top1"] == 0.5
    assert xml["top10"] == 0.5  # tune 4 ranks 12th: not in the top 10
    assert xml["mrr"] == pytest.approx((1 + 1 / 12) / 2)
    midi = report["midi"]
    assert (midi["converted"], midi["top1"], midi["top10"], midi["mrr"]) == (1, 0.0, 1.0, 0.5)
    json.dumps(report)


def test_cross_format_with_nothing_converted() -> None:
    records, encoder, _ = cross_setup()
    report = cross_format(encoder, records, FakeCache({}), formats=["midi"])
    assert report["midi"]["n"] == 0 and report["midi"]["failed"] == 12
    assert report["midi"]["mrr"] is None


def test_evaluate_unseen_reports_every_check() -> None:
    records = [tune(0, "jig", "M:6/8\nL:1/8\nK:G\nGAG GAB|ABA ABd|\n"), tune(1, "reel")]
    views = [unseen_view(r) for r in records]
    assert views[0] != records[0].music_text
    music = {
        records[0].music_text: axis(0),
        records[1].music_text: axis(1),
        views[0]: axis(0) + axis(2),
        views[1]: axis(1),
    }
    texts = {**prompts("a {label}"), full_text(records[0]): axis(0), full_text(records[1]): axis(1)}
    encoder = FakeEncoder(music, texts)
    report = evaluate_unseen(encoder, records, FakeCache({}), ["a {label}"])
    assert report["n"] == 2 and report["chords_added"] >= 1
    assert report["text_to_music"]["mrr"] == 1.0
    assert report["zero_shot_rhythm"]["single"]["balanced_accuracy"] == 1.0
    assert report["zero_shot_rhythm"]["ensemble"]["n"] == 2
    assert report["cross_format"]["musicxml"]["failed"] == 2
    json.dumps(report)


def test_unseen_rhythm_is_also_scored_on_the_tunes_whose_meter_fits_their_label() -> None:
    jig_text = "M:6/8\nL:1/8\nK:G\nGAG GAB|ABA ABd|\n"
    records = [
        replace(tune(0, "jig", jig_text), meter="6/8"),
        replace(tune(1, "jig"), meter="9/8"),  # a slip jig its book calls a jig
        replace(tune(2, "reel"), meter="2/2"),
        replace(tune(3, "air"), meter="3/4"),
    ]
    assert [meter_fits_label(r) for r in records] == [True, False, True, False]
    views = [unseen_view(r) for r in records]
    music = {text: axis(k) for k, text in enumerate(r.music_text for r in records)}
    # Tune 1 sounds like a slip jig: wrong by its book's label, out of the second score.
    music.update({views[0]: axis(0), views[1]: axis(4), views[2]: axis(1), views[3]: axis(3)})
    texts = {**prompts("a {label}"), **{full_text(r): axis(9) for r in records}}
    report = evaluate_unseen(FakeEncoder(music, texts), records, FakeCache({}), ["a {label}"])
    assert report["zero_shot_rhythm"]["single"]["balanced_accuracy"] == pytest.approx(0.75)
    fits = report["zero_shot_rhythm_meter_fits_label"]
    assert fits["left_out"] == {"jig": 1}
    assert fits["single"]["n"] == 2 and fits["single"]["balanced_accuracy"] == 1.0
    json.dumps(report)


# --- the bench on a tiny real model -----------------------------------------------------


def test_bench_sections_on_a_tiny_model(tiny_model_dir: Path) -> None:
    from bench.eval import heldout_eval, unseen_eval
    from workers.clamp import ClampEncoder, load_clamp

    encoder = ClampEncoder(load_clamp(tiny_model_dir))
    rhythms = ["jig", "reel", "hornpipe", "slip jig", "waltz", "air", None, "reel"]
    records = [
        replace(tune(i, r), collection="oneills1850", places=("Ireland",))
        for i, r in enumerate(rhythms)
    ]
    cache = FakeCache({(r.key_hash, "midi"): r.music_text for r in records[:3]})
    templates = ("a {label}", "a {label} tune")
    heldout = heldout_eval(encoder, records, cache, templates)  # type: ignore[arg-type]
    assert heldout["zero_shot_rhythm"]["ensemble"]["templates"] == list(templates)
    assert heldout["zero_shot_rhythm"]["single"]["n"] == 6
    assert heldout["cross_format"]["midi"]["converted"] == 3
    assert heldout["text_to_music"]["n"] == 8
    unseen = unseen_eval(encoder, {"ryansMammoth": records}, cache, templates)  # type: ignore[arg-type]
    assert unseen["ryansMammoth"]["n"] == 8
    json.dumps({"heldout": heldout, "unseen": unseen})


def test_bench_scores_a_fold_model_on_the_collection_it_never_saw(tmp_path: Path) -> None:
    from bench.eval import heldout_records, trained_on, unseen_records

    fold = {"collections": ["airdsAirs", "ryansMammoth"], "heldout_collections": ["oneills1850"]}
    (tmp_path / "manifest.json").write_text(json.dumps({"train_config": fold}))
    trained, held_out = trained_on(tmp_path)
    assert (trained, held_out) == (fold["collections"], ["oneills1850"])
    records = [
        replace(tune(i, "reel"), collection=c)
        for i, c in enumerate(["oneills1850", "airdsAirs", "ryansMammoth"] * 40)
    ]
    unseen = unseen_records(records, held_out, None)
    assert list(unseen) == ["oneills1850"] and len(unseen["oneills1850"]) == 40
    heldout = heldout_records(records, trained, None)
    assert heldout and {r.collection for r in heldout} <= {"airdsAirs", "ryansMammoth"}
    # A published checkpoint carries no training record: nothing is unseen by default.
    published = tmp_path / "published"
    published.mkdir()
    assert trained_on(published)[1] == []


def test_a_limited_sample_covers_the_whole_collection() -> None:
    # Used by bench.eval --limit and by the training loop's periodic held-out check.
    from orchestrator.training.data import evenly_spaced as sample

    # A book ordered by dance type: 996 jigs then 996 hornpipes, as O'Neill's is ordered.
    records = [tune(i, "jig" if i < 996 else "hornpipe") for i in range(1992)]
    picked = sample(records, 800)
    assert len(picked) == len({r.key_hash for r in picked}) == 800
    assert sum(r.rhythm == "hornpipe" for r in picked) == 400
    assert sample(records, None) == records and sample(records[:5], 800) == records[:5]


def test_bench_collection_flags_refuse_an_unknown_name() -> None:
    import argparse

    from bench.eval import collection_list

    assert collection_list("oneills1850, ryansMammoth,") == ["oneills1850", "ryansMammoth"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown source"):
        collection_list("oneills1850,nonsense")
