"""What tells dances apart, in every book's spelling: the rhythm-summary-duple-v1 profile,
rhythm words in training texts, and labels' own prompts for classify."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from orchestrator.search import QueryInputError, label_prompts, label_vectors
from orchestrator.training.cli import parse_config
from orchestrator.training.data import sample_text
from orchestrator.training.rhythm_words import (
    DOTTED,
    EVEN,
    LONG_CADENCES,
    rhythm_word_offer,
    rhythm_words,
)
from tests.test_training import record as training_record
from workers.abc import bar_patches
from workers.abc.profiles import CANONICAL_DUPLE_PROFILE, input_profile, rhythm_summary_line
from workers.abc.spelling import canonical_duple_spelling

BARS = "ABcd efge|dBAF D4:|\n"
SPELLINGS = [
    "M:2/4\nL:1/16",
    "M:C|\nL:1/8",
    "M:2/2\nL:1/8",
    "M:4/4\nL:1/8",
    "M:C\nL:1/8",
    "M:2/4",  # ABC's default unit for 2/4 is 1/16
    "M:C|",  # ... and for cut time 1/8
]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_duple_spelling_of_the_same_bars_reads_the_same(spelling: str) -> None:
    tune = f"X:1\nT:r\n{spelling}\nK:D\n{BARS}"
    canonical = canonical_duple_spelling(tune)
    assert canonical == f"X:1\nT:r\nM:2/4\nL:1/16\nK:D\n{BARS}"
    profiled = input_profile(CANONICAL_DUPLE_PROFILE)(tune)
    assert profiled == input_profile(CANONICAL_DUPLE_PROFILE)(f"X:1\nT:r\nM:C|\nL:1/8\nK:D\n{BARS}")
    assert bar_patches(profiled)[-2:] == ["ABcd efge|", "dBAF D4:|"]  # the bars are untouched
    assert rhythm_summary_line(tune) in profiled


@pytest.mark.parametrize(
    "tune",
    [
        "X:1\nM:6/8\nL:1/8\nK:D\nABc def|\n",  # not duple
        "X:1\nM:C|\nL:1/8\nK:D\nABcd efge|[M:3/4]ABcdef|\n",  # meter changes in the body
        "X:1\nM:C|\nL:1/8\nK:D\nABcd efge|\nL:1/16\nAB cd|\n",  # unit changes in the body
        "X:1\nM:C|\nM:2/4\nK:D\nAB|\n",  # two meter lines
        "X:1\nM:C|\nL:x\nK:D\nAB|\n",  # an unreadable unit
        "not abc at all",
        "",
    ],
)
def test_tunes_without_one_clear_duple_spelling_are_left_alone(tune: str) -> None:
    assert canonical_duple_spelling(tune) == tune


def test_a_half_bar_spelling_keeps_its_own_unit() -> None:
    # A polka bar of four quavers in 2/4 is four units of 1/8: cut time would need L:1/4.
    polka = "X:1\nM:C|\nL:1/4\nK:G\nGABc|\n"
    assert canonical_duple_spelling(polka) == "X:1\nM:2/4\nL:1/8\nK:G\nGABc|\n"


HORNPIPE = (
    "X:1\nM:C|\nL:1/8\nK:G\n(3DEF|G>AB>c d>cB>A|G>AB>G E2D2|G2B2 d2 z2|g>fe>d B>cd>B|G2G2G2:|\n"
)
CADENCE_HORNPIPE = "X:1\nM:C|\nL:1/8\nK:G\nGABc dcBA|GABG E2D2|d2B2G2 z2|gfed Bcd2|G2G2G2 z2:|\n"
REEL = "X:1\nM:C|\nL:1/8\nK:D\nABcd efge|dBAF DFAF|GBdB AFED|EFGA BAFE:|\n"
JIG = "X:1\nM:6/8\nL:1/8\nK:D\nABA dAF|GBG FAF:|\n"


def test_rhythm_words_name_the_rhythm_whatever_the_spelling() -> None:
    assert set(DOTTED) <= set(rhythm_words(HORNPIPE))
    assert set(LONG_CADENCES) <= set(rhythm_words(CADENCE_HORNPIPE))
    assert rhythm_words(REEL) == list(EVEN)
    assert rhythm_words(JIG) == []
    # The same reel bars under 2/4 with L:1/16 are still even running notes.
    assert rhythm_words(REEL.replace("M:C|\nL:1/8", "M:2/4\nL:1/16")) == list(EVEN)
    assert rhythm_words("\x00junk") == []


def test_texts_carry_rhythm_words_only_when_asked() -> None:
    record = training_record(music_text=REEL, rhythm="reel")
    plain = [sample_text(record, random.Random(seed)) for seed in range(60)]
    # Without words the draws are exactly those of the runs before words existed.
    assert plain == [sample_text(record, random.Random(seed), ()) for seed in range(60)]
    assert not any(word in text for text in plain for word in EVEN)
    worded = [sample_text(record, random.Random(seed), rhythm_words(REEL)) for seed in range(60)]
    with_words = sum(any(word in text for word in EVEN) for text in worded)
    assert 15 <= with_words <= 45  # one field among several, dropped out like the others


def test_a_share_of_draws_is_offered_the_rhythm_words() -> None:
    record = training_record(music_text=REEL, rhythm="reel")
    words = rhythm_words(REEL)

    def draws(p: float, seed: int = 0) -> list[str]:
        offer, rng = rhythm_word_offer(p, seed), random.Random(seed)
        return [sample_text(record, rng, offer(words)) for _ in range(400)]

    def worded(texts: list[str]) -> int:
        return sum(any(word in text for word in EVEN) for text in texts)

    # p = 1 draws exactly what runs from before p existed drew.
    rng = random.Random(0)
    assert draws(1.0) == [sample_text(record, rng, words) for _ in range(400)]
    assert worded(draws(0.0)) == 0
    everyone, share = worded(draws(1.0)), worded(draws(0.3))
    assert 0.15 * everyone <= share <= 0.45 * everyone
    assert draws(0.3, seed=1) == draws(0.3, seed=1) != draws(0.3, seed=2)


def test_the_training_command_turns_rhythm_words_and_the_profile_on() -> None:
    _, cfg = parse_config(
        ["--out", "m", "--rhythm-words", "--input-profile", CANONICAL_DUPLE_PROFILE]
    )
    assert cfg.text_rhythm_words and cfg.input_profile == CANONICAL_DUPLE_PROFILE
    assert cfg.text_rhythm_words_p == 1.0
    _, share = parse_config(["--out", "m", "--rhythm-words", "--rhythm-words-p", "0.3"])
    assert share.text_rhythm_words_p == 0.3
    _, default = parse_config(["--out", "m"])
    assert not default.text_rhythm_words


def test_a_fine_tune_goes_on_naming_the_rhythm_when_its_parent_did(tmp_path: Path) -> None:
    from orchestrator.training import TrainConfig, save_model
    from orchestrator.training.model import build_model, like_start, start_from_checkpoint
    from tests.test_training import TINY

    worded = TrainConfig(**TINY, text_rhythm_words=True)
    parent = save_model(build_model(worded).eval(), tmp_path / "worded", cfg=worded)
    # Catalogue retraining runs the default recipe, which names no rhythm.
    assert like_start(TrainConfig(**TINY), start_from_checkpoint(parent)).text_rhythm_words
    plain = TrainConfig(**TINY)
    other = save_model(build_model(plain).eval(), tmp_path / "plain", cfg=plain)
    assert not like_start(TrainConfig(**TINY), start_from_checkpoint(other)).text_rhythm_words
    # ... and offers them to the same share of its draws.
    some = TrainConfig(**TINY, text_rhythm_words=True, text_rhythm_words_p=0.3)
    sparse = save_model(build_model(some).eval(), tmp_path / "sparse", cfg=some)
    assert like_start(TrainConfig(**TINY), start_from_checkpoint(sparse)).text_rhythm_words_p == 0.3
    assert like_start(TrainConfig(**TINY), start_from_checkpoint(parent)).text_rhythm_words_p == 1
    # A run that names the words itself keeps its own share.
    own = TrainConfig(**TINY, text_rhythm_words=True, text_rhythm_words_p=0.5)
    assert like_start(own, start_from_checkpoint(sparse)).text_rhythm_words_p == 0.5
    # A hand-edited recipe that is not a mapping reads as "no words", not as a crash.
    data = json.loads((parent / "manifest.json").read_text(encoding="utf-8"))
    (parent / "manifest.json").write_text(json.dumps({**data, "train_config": ["junk"]}))
    assert not start_from_checkpoint(parent).text_rhythm_words
    # And a share that is not one reads as every draw.
    data = json.loads((sparse / "manifest.json").read_text(encoding="utf-8"))
    bad = {"text_rhythm_words": True, "text_rhythm_words_p": 7}
    (sparse / "manifest.json").write_text(json.dumps({**data, "train_config": bad}))
    assert start_from_checkpoint(sparse).text_rhythm_words_p == 1.0


def test_labels_with_their_own_prompts_replace_the_templates_and_average_them() -> None:
    own = {"slip jig": ["a {label} in 9/8"], "reel": ["a {label} with even notes", "{label}"]}
    names, prompts = label_prompts(["Slip-Jig", "reel", "air"], ["a {label}"], own)
    assert names == ["Slip-Jig", "reel", "air"]
    assert prompts == [["a Slip-Jig in 9/8"], ["a reel with even notes", "reel"], ["a air"]]
    vectors = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0], [0.0, -1.0]])
    averaged = label_vectors(vectors, [1, 2, 1])
    # Each prompt counts once whatever its length: the reel is halfway, not near (0, 1).
    half = np.sqrt(0.5)
    assert averaged == pytest.approx(np.array([[1.0, 0.0], [half, half], [0.0, -1.0]]))
    with pytest.raises(QueryInputError, match="placeholder"):
        label_prompts(["a", "b"], ["{label}"], {"a": ["no placeholder"]})
    with pytest.raises(QueryInputError, match="at least one"):
        label_prompts(["a", "b"], ["{label}"], {"a": []})
