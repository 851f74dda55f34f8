"""Augmentations of how notes are dressed: chord symbols, decorations and slurs.

Each keeps the pitches and durations of the tune; only the notation around them moves.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.training.augment_pitch import (
    BarState,
    Key,
    Pitch,
    note_text,
    parse_key,
    read_note,
)
from workers.abc.tokens import (
    Token,
    TuneLines,
    is_chord_symbol,
    join_tokens,
    line_kind,
    space_field_lookalikes,
    split_lines,
    tokenize,
)

__all__ = [
    "add_chord_symbols",
    "add_decorations",
    "add_slurs",
    "chord_symbols",
    "decorations",
    "remove_chord_symbols",
    "remove_decorations",
    "remove_slurs",
    "slurs",
]

_LETTERS = "CDEFGAB"
# What readers meet in folk collections. "H" (fermata) is left out: music21 drops the note
# after it, and the encoder should not learn a spelling our converters lose.
_DECORATIONS = (
    "~",
    ".",
    "T",
    "!trill!",
    "!fermata!",
    "!accent!",
    "L",
    "M",
    "!mordent!",
    "P",
    "!uppermordent!",
    "u",
    "v",
    "!>!",
)
_GRACE_STYLES = ("{%s}", "{/%s}", "{%s%s%s}")


@dataclass
class _Music:
    """The music lines of a tune as token lists, to edit in place and put back."""

    lines: TuneLines
    tokens: dict[int, list[Token]]  # body line index -> tokens

    @classmethod
    def of(cls, tune_text: str) -> _Music | None:
        lines = split_lines(tune_text)
        if lines is None:
            return None
        tokens = {
            i: tokenize(line)
            for i, line in enumerate(lines.body)
            if line.strip() and line_kind(line) == "music"
        }
        return cls(lines, tokens)

    def text(self) -> str:
        body: list[str] = []
        for i, line in enumerate(self.lines.body):
            if i in self.tokens:
                line = join_tokens(space_field_lookalikes(self.tokens[i]))
                if not line.strip():
                    continue  # left blank (it held only a chord symbol): would end the tune
            body.append(line)
        return "\n".join(self.lines.header + body)

    def walk(self) -> list[tuple[int, int, Token]]:
        """(line, position, token) over the body in order, K: field lines as field tokens."""
        out: list[tuple[int, int, Token]] = []
        for i, line in enumerate(self.lines.body):
            if i in self.tokens:
                out += [(i, j, token) for j, token in enumerate(self.tokens[i])]
            elif line.startswith("K:"):
                out.append((i, -1, Token("field", f"[{line}]")))
        return out

    def has(self, wanted: Callable[[Token], bool]) -> bool:
        return any(wanted(token) for tokens in self.tokens.values() for token in tokens)


def remove_chord_symbols(tune_text: str, rng: random.Random) -> str:
    """Every chord symbol ("Am", "D7") dropped; annotations ("^text") stay."""
    music = _Music.of(tune_text)
    if music is None:
        return tune_text
    for i, tokens in music.tokens.items():
        music.tokens[i] = [token for token in tokens if not is_chord_symbol(token)]
    return music.text()


def _triad(key: Key, degree: int) -> tuple[str, frozenset[int]]:
    """Name and pitch classes of the key's diatonic triad on a scale degree (0 = tonic)."""
    signature = key.signature()
    tones = []
    for offset in (0, 2, 4):
        step = key.tonic.step + degree + offset
        tones.append(Pitch(step, signature[step % 7]))
    third, fifth = tones[1].midi - tones[0].midi, tones[2].midi - tones[0].midi
    quality = "dim" if fifth == 6 else ("m" if third == 3 else "")
    root = tones[0]
    name = _LETTERS[root.step % 7] + {1: "#", -1: "b", 0: "", 2: "##", -2: "bb"}[root.alter]
    return name + quality, frozenset(tone.midi % 12 for tone in tones)


def add_chord_symbols(tune_text: str, rng: random.Random) -> str:
    """Chord symbols at bar starts: the tonic chord throughout, or per bar the I, IV or V
    chord that holds most of the bar's notes; unchanged when the tune already has some or
    its key has no tonic."""
    music = _Music.of(tune_text)
    if music is None or music.has(is_chord_symbol):
        return tune_text
    key = parse_key(music.lines.header[-1][2:])
    if key is None:
        return tune_text
    fit = rng.random() < 0.7
    every = rng.choice((1, 1, 1, 2))
    seventh = rng.random() < 0.5
    state = BarState(key)
    # Per bar: where its first note starts and the pitch classes sounding in it.
    starts: list[tuple[int, int] | None] = [None]
    classes: list[list[int]] = [[]]
    keys: list[Key | None] = [key]
    in_grace = in_chord = False
    for i, j, token in music.walk():
        if token.kind == "bar":
            state.new_bar()
            starts.append(None)
            classes.append([])
            keys.append(key)
        elif token.kind == "field" and token.text.startswith("[K:"):
            key = parse_key(token.text[3:-1])
            if key is not None:
                state.set_key(key)
            keys[-1] = key
        elif token.kind in ("grace_open", "grace_close"):
            in_grace = token.kind == "grace_open"
        elif token.kind == "chord_open" and not in_grace:
            in_chord = True
            if starts[-1] is None:
                starts[-1] = (i, j)
        elif token.kind == "chord_close":
            in_chord = False
        elif token.kind == "note" and not in_grace:
            written, step, _ = read_note(token.text)
            classes[-1].append(Pitch(step, state.read(step, written)).midi % 12)
            if starts[-1] is None and not in_chord:
                starts[-1] = (i, j)
    inserts: dict[int, list[tuple[int, str]]] = {}
    for bar, start in enumerate(starts):
        bar_key = keys[bar]
        if start is None or bar_key is None or bar % every:
            continue
        chords = [_triad(bar_key, degree) for degree in (0, 4, 3)]  # I, V, IV: ties go left
        name = chords[0][0]
        if fit:
            name = max(chords, key=lambda chord: sum(pc in chord[1] for pc in classes[bar]))[0]
        if seventh and name == chords[1][0] and not name.endswith(("m", "dim")):
            name += "7"
        line, pos = start
        # Before the note's own decorations, as ABC orders them; not before a slur or
        # tuplet mark: music21 reads '"G"~(B' as an extra note.
        while pos > 0 and music.tokens[line][pos - 1].kind == "deco":
            pos -= 1
        inserts.setdefault(line, []).append((pos, f'"{name}"'))
    for line, items in inserts.items():
        for pos, text in sorted(items, reverse=True):
            music.tokens[line].insert(pos, Token("string", text))
    return music.text()


def chord_symbols(tune_text: str, rng: random.Random) -> str:
    """Chord symbols removed from a tune that has them, added to one that has none."""
    music = _Music.of(tune_text)
    if music is not None and music.has(is_chord_symbol):
        return remove_chord_symbols(tune_text, rng)
    return add_chord_symbols(tune_text, rng)


def _is_ornament(token: Token) -> bool:
    return token.kind in ("deco", "grace_open")


def remove_decorations(tune_text: str, rng: random.Random) -> str:
    """Decorations (``~ . T !trill!`` ...) and grace-note groups removed."""
    music = _Music.of(tune_text)
    if music is None:
        return tune_text
    in_grace = False
    for i, tokens in music.tokens.items():
        kept: list[Token] = []
        for token in tokens:
            if token.kind == "grace_open":
                in_grace = True
            elif token.kind == "grace_close":
                in_grace = False
            elif not in_grace and token.kind != "deco":
                kept.append(token)
        music.tokens[i] = kept
    return music.text()


def _dressing_start(tokens: list[Token], note: int) -> int:
    """Index where the chord symbols and decorations written before token `note` begin."""
    while note > 0 and tokens[note - 1].kind in ("deco", "string"):
        note -= 1
    return note


def _grace(note: str, style: str) -> str:
    _, step, _ = read_note(note)
    above = note_text(step + 1, "", "")
    if style.count("%s") == 3:
        return style % (above, note_text(step, "", ""), above)
    return style % above


def add_decorations(tune_text: str, rng: random.Random) -> str:
    """Ornaments on some notes: a few decorations the tune keeps using, and grace notes.

    Grace notes carry no accidental, so they never change how later notes of the bar read.
    """
    music = _Music.of(tune_text)
    if music is None:
        return tune_text
    palette = rng.sample(_DECORATIONS, rng.randint(1, 4))
    graces = rng.sample(_GRACE_STYLES, rng.randint(0, 2))
    density = rng.uniform(0.05, 0.25)
    in_grace = in_chord = False
    tuplet_notes = 0  # notes still to come under the last tuplet mark
    since_broken = 2  # notes since the last broken rhythm mark
    for i, tokens in music.tokens.items():
        out: list[Token] = []
        for token in tokens:
            kind = token.kind
            if kind in ("grace_open", "grace_close"):
                in_grace = kind == "grace_open"
            elif kind == "chord_close":
                in_chord = False
            elif kind == "tuplet":
                tuplet_notes = _tuplet_notes(token.text)
            elif kind == "broken":
                since_broken = 0
            target = not in_grace and not in_chord and kind in ("note", "chord_open")
            # music21 drops a broken rhythm whose second note starts with "." or "{", even
            # after a chord symbol ('A>"D".B'), and stretches a grace note right after one.
            if target and since_broken and rng.random() < density:
                choice = rng.choice(palette + graces)
                # music21 counts grace notes among a tuplet's notes.
                grace_ok = kind == "note" and not tuplet_notes and since_broken > 1
                # Grace notes come before chord symbols and decorations of their note.
                pos = _dressing_start(out, len(out))
                before = next((t.kind for t in reversed(out[:pos]) if t.kind != "space"), "")
                # Not a second grace group, nor one between two tied notes.
                grace_ok = grace_ok and before not in ("grace_close", "tie")
                if choice in _GRACE_STYLES and grace_ok:
                    out.insert(pos, Token("other", _grace(token.text, choice)))
                elif choice not in _GRACE_STYLES:
                    out.append(Token("deco", choice))
            if kind == "chord_open":
                in_chord = True
            if target:
                tuplet_notes = max(tuplet_notes - 1, 0)
                since_broken += 1
            out.append(token)
        music.tokens[i] = out
    return music.text()


def _tuplet_notes(text: str) -> int:
    """How many notes a tuplet mark "(p", "(p:q" or "(p:q:r" covers: r, else p."""
    parts = text[1:].split(":")
    return int(parts[2]) if len(parts) > 2 and parts[2] else int(parts[0])


def decorations(tune_text: str, rng: random.Random) -> str:
    """Half the time a decorated tune loses its decorations; otherwise some are added."""
    music = _Music.of(tune_text)
    if music is not None and music.has(_is_ornament) and rng.random() < 0.5:
        return remove_decorations(tune_text, rng)
    return add_decorations(tune_text, rng)


def remove_slurs(tune_text: str, rng: random.Random) -> str:
    """Every slur mark removed; the notes under them stay as they were."""
    music = _Music.of(tune_text)
    if music is None:
        return tune_text
    for i, tokens in music.tokens.items():
        music.tokens[i] = [token for token in tokens if token.kind != "slur"]
    return music.text()


def _slur_spans(tokens: list[Token]) -> list[tuple[int, int]]:
    """(first, last) token indexes of runs of 2-3 notes written back to back, outside grace
    groups, chords, tuplets and existing slurs, and not tied or broken into or out of:
    where a slur can go without music21 reading the notes differently."""
    spans: list[tuple[int, int]] = []
    in_grace = in_chord = False
    depth = tuplet_notes = 0
    for j, token in enumerate(tokens):
        kind = token.kind
        if kind in ("grace_open", "grace_close"):
            in_grace = kind == "grace_open"
        elif kind in ("chord_open", "chord_close"):
            in_chord = kind == "chord_open"
        elif kind == "slur":
            depth += 1 if "(" in token.text else -1
        elif kind == "tuplet":
            tuplet_notes = _tuplet_notes(token.text)
        elif kind == "note" and not in_grace and not in_chord:
            if tuplet_notes:
                tuplet_notes -= 1
                continue
            if depth > 0:
                continue
            start = _dressing_start(tokens, j)
            before = tokens[start - 1].kind if start else ""
            if before in ("broken", "tie"):
                continue
            end = j
            while end + 1 < len(tokens) and tokens[end + 1].kind == "note" and end - j < 2:
                end += 1
            after = tokens[end + 1].kind if end + 1 < len(tokens) else ""
            if end > j and after not in ("broken", "tie"):
                spans.append((j, end))
    return spans


def add_slurs(tune_text: str, rng: random.Random) -> str:
    """Slurs over some runs of two or three notes, as fiddle books mark bowing."""
    music = _Music.of(tune_text)
    if music is None:
        return tune_text
    density = rng.uniform(0.1, 0.4)
    for i, tokens in music.tokens.items():
        chosen: list[tuple[int, int]] = []
        for first, last in _slur_spans(tokens):
            # Drawn for every span, so one overlap does not shift the later draws.
            if rng.random() < density and (not chosen or first > chosen[-1][1]):
                chosen.append((first, last))
        out = list(tokens)
        # Right to left, so inserting marks leaves the earlier indexes valid.
        for first, last in reversed(chosen):
            out.insert(last + 1, Token("slur", ")"))
            # The slur opens before the note's chord symbol and decorations, as written.
            out.insert(_dressing_start(out, first), Token("slur", "("))
        music.tokens[i] = out
    return music.text()


def slurs(tune_text: str, rng: random.Random) -> str:
    """Half the time a slurred tune loses its slurs; otherwise some are added.

    MIDI has no slurs and one book marks bowings where another does not: the music must
    read the same with and without them.
    """
    music = _Music.of(tune_text)
    if music is not None and music.has(lambda token: token.kind == "slur") and rng.random() < 0.5:
        return remove_slurs(tune_text, rng)
    return add_slurs(tune_text, rng)
