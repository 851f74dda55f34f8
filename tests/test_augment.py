"""ABC augmentations for training: each keeps the tune readable and keeps the music it should.

Pitches and durations are checked with music21 as an ABC reader independent of ours, on
real tunes from music21's corpus (several collections and dialects) and on hand-written
edge cases.
"""

from __future__ import annotations

import functools
import random
import re
from collections import Counter
from fractions import Fraction

import pytest

from orchestrator.training import augment as aug
from orchestrator.training.data import corpus_root
from workers.abc import (
    ParsedPiece,
    bar_patches,
    decode_abc_bytes,
    encode_patches,
    music_patch_count,
    parse_abc_text,
    read_header,
)

# (collection, every n-th file, every n-th tune of those files): about 200 tunes in all,
# from one-tune files (Ryan's) and tune books (O'Neill's, Nottingham, Aird's, Essen).
_SAMPLE = (
    ("ryansMammoth", 15, 1),
    ("oneills1850", 2, 17),
    ("nottingham-dataset", 2, 23),
    ("airdsAirs", 2, 19),
    ("essenFolksong", 4, 97),
    ("miscFolk", 1, 11),
)
SEEDS = (0, 1, 2)
OP_NAMES = (
    "transpose",
    "add_chord_symbols",
    "remove_chord_symbols",
    "chord_symbols",
    "add_decorations",
    "remove_decorations",
    "decorations",
    "add_slurs",
    "remove_slurs",
    "slurs",
    "rewrite_unit_length",
    "respell_meter",
    "regroup_lines",
    "shuffle_header",
    "drop_header_fields",
)
LAYOUT_OPS = ("regroup_lines", "shuffle_header", "drop_header_fields")


@functools.cache
def corpus_tunes() -> tuple[str, ...]:
    root = corpus_root()
    tunes: list[str] = []
    for collection, file_step, tune_step in _SAMPLE:
        for path in sorted((root / collection).rglob("*.abc"))[::file_step]:
            text, _ = decode_abc_bytes(path.read_bytes())
            pieces = [r for r in parse_abc_text(text) if isinstance(r, ParsedPiece)]
            tunes += [piece.abc_text for piece in pieces[::tune_step]]
    return tuple(tunes)


def test_the_sample_is_about_200_tunes_of_every_collection() -> None:
    tunes = corpus_tunes()
    assert 180 <= len(tunes) <= 260
    assert sum('"' in tune for tune in tunes) >= 10  # some with chord symbols


def _music_lines(text: str) -> list[str]:
    body = text.split("\nK:", 1)[1].split("\n")[1:]
    return [line for line in body if not re.match(r"[A-Za-z+]:|%", line)]


def music21_faithful(text: str) -> bool:
    """Whether music21 reads this tune as ABC means it; comparisons use only such tunes.

    music21 (10.5) drops the note after an "H" (fermata) decoration, ignores a broken
    rhythm whose second note starts with "." "{" or "!", and takes an upper-case note
    followed by "::" for a field line; augmentations that remove such spellings would
    then look like they changed the music. A "[" then a space is a typo that turns the
    rest of a line into one chord, which music21 reads differently with each edit.
    """
    music = re.sub(r'"[^"]*"', "", "\n".join(_music_lines(text)))
    return not (
        "H" in music
        or re.search(r"[<>][.{!+]", music)
        or re.search(r"[A-Z]:(?!\|)", music)
        or re.search(r"\[\s", music)  # "[ e3g..." : a chord by accident, read oddly
    )


@functools.cache
def events(text: str) -> tuple[tuple[tuple[int, ...], Fraction, bool], ...]:
    """(MIDI pitches, quarter length, is grace) of every note, chord and rest, in order."""
    import music21
    from music21 import harmony

    score = music21.converter.parse(text, format="abc")
    out = []
    for item in score.recurse().notesAndRests:
        if isinstance(item, harmony.Harmony):  # chord symbols: not the music
            continue
        midis = tuple(p.midi for p in item.pitches) if not item.isRest else ()
        out.append((midis, Fraction(item.quarterLength), item.duration.isGrace))
    return tuple(out)


@functools.cache
def music21_sample() -> tuple[str, ...]:
    """About 36 corpus tunes music21 reads faithfully, from every collection present."""
    chosen: list[str] = []
    for tune in corpus_tunes()[::5]:
        if not music21_faithful(tune):
            continue
        try:
            events(tune)
        except Exception:  # music21 cannot read a few corpus tunes at all
            continue
        chosen.append(tune)
    return tuple(chosen)


def shifted(seq: tuple, semitones: int) -> tuple:
    return tuple((tuple(m + semitones for m in midis), q, g) for midis, q, g in seq)


def without_graces(seq: tuple) -> tuple:
    return tuple(item for item in seq if not item[2])


def one_piece(text: str) -> ParsedPiece:
    results = parse_abc_text(text)
    assert len(results) == 1 and isinstance(results[0], ParsedPiece), results
    return results[0]


# ---------------------------------------------------------------- every op, every tune


@pytest.mark.parametrize("name", OP_NAMES)
def test_every_op_keeps_every_tune_parseable(name: str) -> None:
    op = getattr(aug, name)
    changed = 0
    for tune in corpus_tunes():
        before = one_piece(tune)
        for seed in SEEDS:
            out = op(tune, random.Random(seed))
            piece = one_piece(out)
            assert piece.x_number == before.x_number
            changed += out != tune
    # Each op does something on most tunes (remove_* only where there is something).
    assert changed >= len(corpus_tunes()) * len(SEEDS) // 20


def test_augment_with_every_op_keeps_every_tune_parseable() -> None:
    for tune in corpus_tunes():
        for seed in SEEDS:
            one_piece(aug.augment(tune, seed, p=1.0))
            one_piece(aug.augment(tune, seed))


def test_music21_sample_covers_the_collections() -> None:
    sample = music21_sample()
    assert len(sample) >= 25
    assert sum('"' in tune for tune in sample) >= 3  # Nottingham's chord symbols


# ---------------------------------------------------------------- transposition


def test_transposition_moves_every_pitch_by_exactly_k_and_back() -> None:
    for i, tune in enumerate(music21_sample()):
        k = aug.TRANSPOSE_RANGE[i % len(aug.TRANSPOSE_RANGE)]
        moved = aug.transpose_by(tune, k)
        if moved == tune:
            continue  # K:none and the like (checked below)
        assert events(moved) == shifted(events(tune), k), (k, moved)
        assert events(aug.transpose_by(moved, -k)) == events(tune)


def test_transposition_changes_most_sample_tunes() -> None:
    sample = music21_sample()
    assert sum(aug.transpose_by(tune, 2) != tune for tune in sample) >= len(sample) - 2


@pytest.mark.parametrize(
    ("key", "k", "expected"),
    [
        ("G", 2, "A"),
        ("Em", 3, "Gm"),
        ("Ador", 2, "Bdor"),
        ("A Dorian", -2, "G Dorian"),
        ("D", 6, "Ab"),  # G# major would need 8 sharps
        ("D", -6, "Ab"),
        ("F", -1, "E"),
        ("Bb", 1, "B"),
        ("C#m", 1, "Dm"),
        ("F#", 1, "G"),
        (" G", 5, " C"),
        ("E phr bass", 2, "F# phr bass"),
        ("G clef=bass % two sharps in the book", -2, "F clef=bass % two sharps in the book"),
        ("Dmix", 3, "Fmix"),
        ("EM", 1, "FM"),  # "M" read as minor, as data.parse_key does: F minor, not E# minor
    ],
)
def test_transposition_moves_the_tonic_and_keeps_the_mode(key: str, k: int, expected: str) -> None:
    tune = f"X:1\nM:4/4\nL:1/8\nK:{key}\nABcd efga|\n"
    assert aug.transpose_by(tune, k).split("\n")[3] == f"K:{expected}"


def test_transposition_respells_against_the_new_key_and_the_bar() -> None:
    # In G, "^c c" are both C sharp (the accidental lasts to the bar line) and "=F F" both
    # F natural; the next bar's "c" is C natural again. In A: D sharp, G natural, D.
    tune = "X:1\nM:4/4\nL:1/8\nK:G\n^c c =F F F2|c4 ^f4|\n"
    assert aug.transpose_by(tune, 2).endswith("K:A\n^d d =G G G2|d4 ^g4|\n")
    # Octave marks and case: B, + 2 is C sharp, written "C" in D; b' + 2 is c sharp''.
    tune = "X:1\nM:4/4\nL:1/8\nK:C\nC,, c'' B, b' C2 z2|\n"
    assert aug.transpose_by(tune, 2).endswith("K:D\nD,, d'' C c'' D2 z2|\n")
    tune = "X:1\nM:4/4\nL:1/8\nK:C\nC,, c'' B, b' C2 z2|\n"
    assert aug.transpose_by(tune, -1).endswith("K:B\nB,,, b' A, a' B,2 z2|\n")


def test_transposition_moves_chord_symbols_inline_keys_and_body_keys() -> None:
    tune = (
        "X:1\nM:4/4\nL:1/8\nK:G\n"
        '"G"G2 "D7/F#"F2 "Am"A2 "C/B"B2|"^Fine"g2 "Fine"g2 "(D)"d4|\n'
        "K:Em\n"
        '"Em"E4 [K:D] "Bm7b5"d4|\n'
    )
    moved = aug.transpose_by(tune, 3)
    assert moved == (
        "X:1\nM:4/4\nL:1/8\nK:Bb\n"
        '"Bb"B2 "F7/A"A2 "Cm"c2 "Eb/D"d2|"^Fine"b2 "Fine"b2 "(F)"f4|\n'
        "K:Gm\n"
        '"Gm"G4 [K:F] "Dm7b5"f4|\n'
    )


@pytest.mark.parametrize(
    "key", ["none", "HP", "Hp", "", "Dmix=c", "D exp ^f _b", "Bn", "clef=bass"]
)
def test_keys_without_a_plain_tonic_leave_the_tune_unchanged(key: str) -> None:
    tune = f"X:1\nM:4/4\nL:1/8\nK:{key}\nABcd efga|\n"
    assert aug.transpose_by(tune, 2) == tune
    assert aug.transpose(tune, random.Random(0)) == tune
    # A body key change nobody can transpose stops the whole tune from moving.
    tune = f"X:1\nM:4/4\nL:1/8\nK:G\nABcd efga|\nK:{key}\nABcd efga|\n"
    if key:
        assert aug.transpose_by(tune, 2) == tune


def test_transpose_draws_its_interval_from_the_rng() -> None:
    tune = corpus_tunes()[0]
    outputs = {aug.transpose(tune, random.Random(seed)) for seed in range(30)}
    assert len(outputs) >= 8
    assert aug.transpose(tune, random.Random(5)) == aug.transpose(tune, random.Random(5))


# ---------------------------------------------------------------- L: unit


def test_unit_length_doubling_and_halving_spell_every_length() -> None:
    tune = (
        "X:1\nM:4/4\nL:1/8\nK:G\n"
        "A A2 A/2 A3/2 A/ A// z z/ x|[CEG]2 [CE] [C2E2]2 {g}A A>B (3ABc A-A|Z2|[L:1/4] A B|\n"
    )
    doubled = aug.scale_unit_length(tune, Fraction(2))
    assert doubled.split("\n")[2:] == [
        "L:1/16",
        "K:G",
        "A2 A4 A A3 A A/2 z2 z x2|[CEG]4 [C2E2] [C2E2]4 {g}A2 A2>B2 (3A2B2c2 A2-A2|Z2|"
        "[L:1/8] A2 B2|",
        "",
    ]
    halved = aug.scale_unit_length(tune, Fraction(1, 2), short_halves=True)
    assert halved.split("\n")[2:] == [
        "L:1/4",
        "K:G",
        "A/ A A/4 A3/4 A/4 A/8 z/ z/4 x/|[CEG] [C/E/] [C2E2] {g}A/ A/>B/ (3A/B/c/ A/-A/|Z2|"
        "[L:1/2] A/ B/|",
        "",
    ]


@pytest.mark.parametrize(
    ("meter", "inserted"),
    [("2/4", "L:1/32"), ("6/8", "L:1/16"), ("C", "L:1/16"), ("none", "L:1/16")],
)
def test_unit_length_without_l_field_uses_the_meter_default(meter: str, inserted: str) -> None:
    tune = f"X:1\nT:t\nM:{meter}\nK:D\nAB cd|\n"
    assert aug.scale_unit_length(tune, Fraction(2)) == (
        f"X:1\nT:t\nM:{meter}\n{inserted}\nK:D\nA2B2 c2d2|\n"
    )


def test_unit_length_rewrite_keeps_pitches_and_durations() -> None:
    for tune in music21_sample():
        for factor in (Fraction(2), Fraction(1, 2)):
            out = aug.scale_unit_length(tune, factor, short_halves=factor < 1)
            assert events(out) == events(tune), out
        out = aug.rewrite_unit_length(tune, random.Random(1))
        assert re.search(r"^L:", out, re.M)
        assert events(out) == events(tune)


def test_meter_respelling_moves_reels_between_2_4_and_cut_time_keeping_every_bar() -> None:
    tune = "X:1\nT:r\nM:2/4\nL:1/16\nK:D\nABcd efge|dBAF D4:|\n"
    outputs = {aug.respell_meter(tune, random.Random(seed)) for seed in range(40)}
    headers = {tuple(out.split("\n")[2:4]) for out in outputs}
    assert headers == {("M:2/2", "L:1/8"), ("M:C|", "L:1/8"), ("M:4/4", "L:1/8"), ("M:C", "L:1/8")}
    assert {out.split("\nK:D\n")[1] for out in outputs} == {"ABcd efge|dBAF D4:|\n"}
    # Back from cut time: 2/4 about half of the time (the split that tells books apart).
    cut = "X:1\nM:C|\nK:G\nGABc dBGB|\n"
    back = [aug.respell_meter(cut, random.Random(seed)) for seed in range(200)]
    assert 70 <= sum("M:2/4\nL:1/16\n" in out for out in back) <= 130
    assert all(out.endswith("K:G\nGABc dBGB|\n") for out in back)


@pytest.mark.parametrize(
    "tune",
    [
        "X:1\nM:6/8\nL:1/8\nK:D\nABc def|\n",  # not duple
        "X:1\nM:2/4\nL:1/16\nK:D\nABcd efge|[M:3/4]ABcdef|\n",  # meter changes in the body
        "X:1\nM:2/4\nL:1/16\nK:D\nABcd efge|\nL:1/8\nAB cd|\n",  # unit changes in the body
        "X:1\nM:2/4\nL:1/4\nK:D\nAB|\n",  # cut time would need L:1/2
    ],
)
def test_meter_respelling_leaves_other_tunes_alone(tune: str) -> None:
    assert all(aug.respell_meter(tune, random.Random(seed)) == tune for seed in range(20))


def test_meter_respelling_scales_every_duration_by_one_factor_and_keeps_the_bars() -> None:
    changed = 0
    for tune in music21_sample():
        out = aug.respell_meter(tune, random.Random(3))
        if out == tune:
            continue
        changed += 1
        before, after = events(tune), events(out)
        assert [e[0] for e in after] == [e[0] for e in before]
        ratios = {a[1] / b[1] for a, b in zip(after, before, strict=True) if b[1] and not b[2]}
        assert len(ratios) == 1 and ratios <= {Fraction(1, 2), Fraction(1), Fraction(2)}, out
        assert _music_lines(out) == _music_lines(tune)
    assert changed >= 5


# ---------------------------------------------------------------- chord symbols


def chord_symbols_of(text: str) -> list[str]:
    quoted = re.findall(r'"([^"]*)"', "\n".join(_music_lines(text)))
    return [s for s in quoted if s[:1] not in "^_<>@" and not s.strip().isdigit()]


def test_chord_symbols_removed_and_added_keep_the_music() -> None:
    removed = added = 0
    for i, tune in enumerate(music21_sample()):
        rng = random.Random(i)
        if chord_symbols_of(tune):
            out = aug.remove_chord_symbols(tune, rng)
            assert not chord_symbols_of(out)
            removed += 1
        else:
            out = aug.add_chord_symbols(tune, rng)
            assert chord_symbols_of(out) or read_header(tune).key in ("none", "HP", "Hp")
            added += 1
        assert events(out) == events(tune), out
        assert aug.chord_symbols(tune, random.Random(i)) == out
    assert removed >= 2 and added >= 10


def test_added_chords_are_the_keys_primary_chords_at_bar_starts() -> None:
    tune = "X:1\nM:4/4\nL:1/8\nK:G\n|:GABc dBGB|cBce dcBA|~A2FA .dAFA|G4 G4:|\n"
    names: Counter[str] = Counter()
    for seed in range(20):
        out = aug.add_chord_symbols(tune, random.Random(seed))
        assert one_piece(out)
        symbols = chord_symbols_of(out)
        assert 2 <= len(symbols) <= 4
        names.update(symbols)
        # Inserted before the bar's first note and its decorations, never inside a bar.
        for bar in out.split("\n")[-1].split("|")[1:-1]:
            assert bar.count('"') in (0, 2) and (bar.startswith('"') or '"' not in bar)
    assert set(names) <= {"G", "C", "D", "D7"}
    assert {"G", "C"} <= set(names) and names.keys() & {"D", "D7"}


def test_chords_are_not_stacked_on_a_tune_that_has_some() -> None:
    tune = 'X:1\nM:4/4\nL:1/8\nK:G\n"G"GABc dBGB|\n'
    assert aug.add_chord_symbols(tune, random.Random(0)) == tune
    assert aug.chord_symbols(tune, random.Random(0)) == "X:1\nM:4/4\nL:1/8\nK:G\nGABc dBGB|\n"


def test_fingerings_are_not_chord_symbols() -> None:
    # Ryan's writes fingerings where chord symbols go: chords are added beside them, and
    # removing chords keeps them.
    tune = 'X:1\nM:4/4\nL:1/8\nK:G\n"4"GABc "0"dBGB|cBce dcBA|\n'
    out = aug.add_chord_symbols(tune, random.Random(0))
    assert chord_symbols_of(out) and out.count('"4"') == 1 and out.count('"0"') == 1
    assert aug.remove_chord_symbols(out, random.Random(0)) == tune
    assert aug.chord_symbols(tune, random.Random(0)) == out
    assert events(out) == events(tune)


def test_removing_chords_keeps_annotations_and_drops_emptied_lines() -> None:
    tune = 'X:1\nM:4/4\nL:1/8\nK:G\n"Fife I"\n"^ff"GABc "Am"dBGB|\n'
    assert aug.remove_chord_symbols(tune, random.Random(0)) == (
        'X:1\nM:4/4\nL:1/8\nK:G\n"^ff"GABc dBGB|\n'
    )


# ---------------------------------------------------------------- decorations


def test_remove_decorations_drops_every_ornament_and_grace() -> None:
    tune = 'X:1\nM:4/4\nL:1/8\nK:G\n~A .B TA !trill!B {g}A {/ag}B uA vB|"^x"!fermata!G8|\n'
    assert aug.remove_decorations(tune, random.Random(0)).endswith('K:G\nA B A B A B A B|"^x"G8|\n')


def test_decorations_added_and_removed_keep_the_music() -> None:
    added = 0
    for i, tune in enumerate(music21_sample()):
        out = aug.add_decorations(tune, random.Random(i))
        added += out != tune
        assert without_graces(events(out)) == without_graces(events(tune)), out
        out = aug.remove_decorations(tune, random.Random(i))
        assert without_graces(events(out)) == without_graces(events(tune)), out
    assert added >= len(music21_sample()) * 3 // 4


def test_added_decorations_come_from_a_small_per_tune_palette() -> None:
    tune = "X:1\nM:4/4\nL:1/8\nK:D\n" + "|".join(["DFAd fdAF", "GBdg fdAF"] * 8) + "|\n"
    bare = aug.remove_decorations(tune, random.Random(0))
    for seed in range(10):
        out = aug.add_decorations(tune, random.Random(seed))
        assert out != tune and aug.remove_decorations(out, random.Random(0)) == bare
        marks = set(re.findall(r"![^!]+!|[~.TLMPuv]|\{[^}]*\}", out.rstrip().split("\n")[-1]))
        assert 1 <= len({m for m in marks if not m.startswith("{")}) <= 4


# ---------------------------------------------------------------- slurs


def test_remove_slurs_drops_every_slur_and_keeps_tuplets() -> None:
    tune = 'X:1\nM:4/4\nL:1/8\nK:G\n("G"GA) .(Bc) (3(ABc) d2|(3ABc (d2e2)|\n'
    out = aug.remove_slurs(tune, random.Random(0))
    assert out.endswith('K:G\n"G"GA Bc (3ABc d2|(3ABc d2e2|\n')


def test_slurs_added_and_removed_keep_the_music() -> None:
    added = removed = 0
    for i, tune in enumerate(music21_sample()):
        out = aug.add_slurs(tune, random.Random(i))
        added += out != tune
        assert events(out) == events(tune), out
        # music21 also ignores a broken rhythm whose second note starts with a slur, so
        # removing such a slur would look like a change of the music.
        if not re.search(r"[<>]\.?\(", tune):
            out = aug.remove_slurs(tune, random.Random(i))
            removed += out != tune
            assert events(out) == events(tune), out
    assert added >= len(music21_sample()) * 3 // 4 and removed >= 3


def test_added_slurs_cover_two_or_three_plain_notes_and_never_nest() -> None:
    tune = "X:1\nM:4/4\nL:1/8\nK:D\n" + "|".join(
        ["DFAd (fd)AF", "G>Bdg f-fAF", "(3ABc d2 {g}f4"] * 6
    )
    tune += "|\n"
    for seed in range(10):
        out = aug.add_slurs(tune, random.Random(seed))
        body = out.rstrip().split("\n")[-1]
        assert out != tune and aug.remove_slurs(out, random.Random(0)) == aug.remove_slurs(
            tune, random.Random(0)
        )
        depth = 0
        for char in re.sub(r"\(\d", "", body):  # a tuplet mark opens no slur
            depth += {"(": 1, ")": -1}.get(char, 0)
            assert depth in (0, 1), body
        for slurred in re.findall(r"\(([^)0-9]*)\)", body):
            assert 2 <= len(re.findall(r"[A-Ga-g]", slurred)) <= 3, body
            assert not re.search(r"[<>\-{]", slurred), body


def test_slurs_op_removes_from_slurred_tunes_or_adds() -> None:
    slurred = "X:1\nM:4/4\nL:1/8\nK:D\n(DF)Ad fdAF|GBdg fdAF|\n"
    outs = {aug.slurs(slurred, random.Random(seed)) for seed in range(20)}
    assert aug.remove_slurs(slurred, random.Random(0)) in outs
    assert any(out.count("(") > 1 for out in outs)


# ---------------------------------------------------------------- layout and header


def test_header_shuffle_and_dropout_keep_x_first_k_last_and_the_music_fields() -> None:
    for tune in corpus_tunes():
        header = read_header(tune)
        for name in ("shuffle_header", "drop_header_fields"):
            for seed in SEEDS:
                out = getattr(aug, name)(tune, random.Random(seed))
                lines = out.split("\n")
                k_at = next(i for i, line in enumerate(lines) if line.startswith("K:"))
                assert lines[0] == tune.split("\n")[0]
                # The K: line and everything after it are untouched.
                assert out.split("\nK:", 1)[1] == tune.split("\nK:", 1)[1]
                new = read_header(out)
                assert (new.x_number, new.meter, new.unit_length, new.key) == (
                    header.x_number,
                    header.meter,
                    header.unit_length,
                    header.key,
                )
                old_middle = tune.split("\nK:", 1)[0].split("\n")[1:]
                if name == "shuffle_header":
                    assert Counter(lines[1:k_at]) == Counter(old_middle)
                else:
                    gone = Counter(old_middle) - Counter(lines[1:k_at])
                    assert all(ln[:1] in aug.DROPPABLE_FIELDS or ln[:2] == "+:" for ln in gone)


def test_header_ops_do_something() -> None:
    tune = (
        "X:7\nT:The Kesh\nC:trad\nO:Ireland\nR:jig\nZ:someone\nN:a note\n"
        "M:6/8\nL:1/8\nQ:3/8=120\nK:G\nGAG GAB|ABA ABd|\n"
    )
    shuffled = {aug.shuffle_header(tune, random.Random(s)) for s in range(10)}
    dropped = {aug.drop_header_fields(tune, random.Random(s)) for s in range(10)}
    assert len(shuffled) >= 8 and len(dropped) >= 5
    for out in dropped:
        assert {"X:7", "M:6/8", "L:1/8", "K:G"} <= set(out.split("\n"))


def _patches_without_spaces(text: str) -> list[str]:
    return [re.sub(r"[ \t\\]", "", patch) for patch in bar_patches(one_piece(text).music_text)]


@pytest.mark.parametrize("name", LAYOUT_OPS)
def test_layout_ops_keep_the_bar_patches(name: str) -> None:
    op = getattr(aug, name)
    for tune in corpus_tunes():
        before = one_piece(tune)
        for seed in SEEDS:
            after = one_piece(op(tune, random.Random(seed)))
            assert music_patch_count(after.music_text) == music_patch_count(before.music_text)
            if name == "regroup_lines":
                # Same patches, up to the spaces and "\" around the line breaks that moved.
                assert _patches_without_spaces(after.abc_text) == _patches_without_spaces(tune)
                shape = encode_patches(after.music_text, 512).shape
                assert shape == encode_patches(before.music_text, 512).shape


def test_regrouped_lines_break_only_after_bar_lines() -> None:
    # The first line ends inside a bar ("cd" + "ef"): that bar must stay on one line. The
    # run before w: stays as written, since the lyrics align with its line.
    tune = "X:1\nM:4/4\nL:1/8\nK:G\nGABc dBGB|ABcd\nefga|b2a2 g4|G8|\nP:B\nGABc|dBGB|\nw:la la\n"
    layouts = set()
    for seed in range(40):
        out = aug.regroup_lines(tune, random.Random(seed))
        layouts.add(out)
        body = out.split("\n")[4:]
        part_b = body.index("P:B")
        assert body[part_b:] == ["P:B", "GABc|dBGB|", "w:la la", ""]
        for line in body[:part_b]:
            assert line.rstrip("\\").endswith("|"), out
        assert "ABcd efga|" in "".join(body[:part_b])
    assert len(layouts) >= 4


def test_regrouping_corpus_tunes_breaks_lines_only_after_bars() -> None:
    for tune in corpus_tunes():
        endings = [line.rstrip(" \\") for line in _music_lines(tune)]
        for seed in SEEDS:
            for line in _music_lines(aug.regroup_lines(tune, random.Random(seed))):
                tail = line.rstrip(" \\")
                # Not after a bar line: then it is where an original line ended too.
                after_bar = re.split(r"[|:\]]", tail)[-1]
                assert any(ending.endswith(after_bar) for ending in endings), (line, tune)


# ---------------------------------------------------------------- the composer


def test_augment_is_deterministic_per_text_and_seed() -> None:
    tunes = corpus_tunes()[::10]
    for tune in tunes:
        assert aug.augment(tune, 3) == aug.augment(tune, 3)
    varied = sum(len({aug.augment(tune, seed) for seed in range(10)}) >= 5 for tune in tunes)
    assert varied >= len(tunes) * 9 // 10


def test_ops_are_deterministic_per_rng_seed() -> None:
    tune = corpus_tunes()[3]
    for name in OP_NAMES:
        op = getattr(aug, name)
        assert op(tune, random.Random(11)) == op(tune, random.Random(11))


def test_augment_options() -> None:
    tune = corpus_tunes()[0]
    assert aug.augment(tune, 1, p=0.0) == tune
    assert aug.augment(tune, 1, ops=()) == tune
    only = aug.augment(tune, 1, ops=["header_dropout"], p=1.0)
    assert only == aug.drop_header_fields(tune, aug._rng(tune, 1, "header_dropout"))
    # Leaving an op out does not change what the others draw.
    both = aug.augment(tune, 1, ops=["header_dropout", "header_order"], p=1.0)
    assert both == aug.drop_header_fields(
        aug.shuffle_header(tune, aug._rng(tune, 1, "header_order")),
        aug._rng(tune, 1, "header_dropout"),
    )
    assert aug.augment(tune, 1, p={"transpose": 1.0}) == aug.transpose(
        tune, aug._rng(tune, 1, "transpose")
    )
    with pytest.raises(ValueError, match="unknown augmentation"):
        aug.augment(tune, 1, ops=["transpose", "reverse"])


def test_text_without_a_key_line_is_returned_as_is() -> None:
    text = "X:1\nT:no key\nABC|\n"
    for name in OP_NAMES:
        assert getattr(aug, name)(text, random.Random(0)) == text
    assert aug.augment(text, 0, p=1.0) == text
