"""Pitch in ABC for the augmentations: keys, key signatures, bar accidentals, transposition.

ABC writes a note relative to the key signature and to the accidentals met earlier in the
same bar, so a note's text alone does not give its pitch. Transposition here moves every
note by a diatonic interval (letter steps and semitones together) chosen from the new
tonic: a note's accidental relative to the key signature then stays what it was, so the
explicit accidentals of the original land on the same notes, and courtesy accidentals
stay courtesy accidentals.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace

from workers.abc.tokens import (
    FIELD_LINE,
    NOTE_RE,
    Token,
    is_chord_symbol,
    join_tokens,
    line_kind,
    space_field_lookalikes,
    split_lines,
    tokenize,
)

__all__ = [
    "TRANSPOSE_RANGE",
    "BarState",
    "Key",
    "Pitch",
    "note_text",
    "parse_key",
    "read_note",
    "transpose",
    "transpose_by",
]

TRANSPOSE_RANGE = (-5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6)

_LETTERS = "CDEFGAB"
_NATURAL = (0, 2, 4, 5, 7, 9, 11)
_LETTER_FIFTHS = (0, 2, 4, -1, 1, 3, 5)
_SHARP_ORDER = (3, 0, 4, 1, 5, 2, 6)  # F C G D A E B
_ACCIDENTALS = {"^^": 2, "^": 1, "=": 0, "_": -1, "__": -2}
_ACCIDENTAL_TEXT = {alter: text for text, alter in _ACCIDENTALS.items()}
_MODE_OFFSETS = {
    "": 0,
    "maj": 0,
    "major": 0,
    "ion": 0,
    "ionian": 0,
    "m": -3,
    "min": -3,
    "minor": -3,
    "aeo": -3,
    "aeolian": -3,
    "mix": -1,
    "mixolydian": -1,
    "dor": -2,
    "dorian": -2,
    "phr": -4,
    "phrygian": -4,
    "lyd": 1,
    "lydian": 1,
    "loc": -5,
    "locrian": -5,
}
_KEY_RE = re.compile(r"(?P<lead>\s*)(?P<letter>[A-G])(?P<acc>[#b]?)(?P<sep>\s*)(?P<word>[A-Za-z]*)")
# "exp" or a note with an accidental after the mode adds to or replaces the signature;
# transposing those is not supported, so such tunes are left as they are.
_EXPLICIT_SIGNATURE = re.compile(r"(?:^|\s)(?:exp\b|[_^=]+[A-Ga-g])")
_CHORD_RE = re.compile(
    r"(?P<open>\(?)(?P<root>[A-G])(?P<acc>[#b]?)"
    r"(?P<quality>(?:maj|min|dim|aug|sus|add|m|M|o|\+|-|°|ø|\d|#|b|\(|\))*)"
    r"(?:/(?P<bass>[A-Ga-g])(?P<bacc>[#b]?))?(?P<close>\)?)"
)


@dataclass(frozen=True)
class Pitch:
    """A spelled pitch: ``step`` counts letters from C-1 (so 7*5 is middle C), ``alter``
    is semitones of sharpness."""

    step: int
    alter: int

    @property
    def midi(self) -> int:
        return 12 * (self.step // 7) + _NATURAL[self.step % 7] + self.alter

    def moved(self, semitones: int, steps: int) -> Pitch:
        """This pitch moved by an interval, respelled when the alteration would pass ±2."""
        target = self.midi + semitones
        step = self.step + steps
        alter = target - Pitch(step, 0).midi
        if abs(alter) <= 2:
            return Pitch(step, alter)
        return _nearest_spelling(target, step)


def _nearest_spelling(midi: int, near_step: int) -> Pitch:
    options = [Pitch(s, midi - Pitch(s, 0).midi) for s in range(near_step - 3, near_step + 4)]
    return min(options, key=lambda p: (abs(p.alter), abs(p.step - near_step)))


@dataclass(frozen=True)
class Key:
    """A parsed K: value; ``text`` rebuilds it with another tonic, keeping the writer's mode
    spelling, clef words and comment."""

    tonic: Pitch  # step within the lowest octave: 0..6
    mode_offset: int
    lead: str  # spaces before the tonic
    tail: str  # everything after the tonic's accidental, comment included

    @property
    def fifths(self) -> int:
        """Sharps (positive) or flats (negative) of the key signature."""
        return _LETTER_FIFTHS[self.tonic.step] + 7 * self.tonic.alter + self.mode_offset

    def signature(self) -> tuple[int, ...]:
        """Alteration of each letter C..B under this key signature."""
        alters = [0] * 7
        count = abs(self.fifths)
        order = _SHARP_ORDER if self.fifths > 0 else tuple(reversed(_SHARP_ORDER))
        for i in range(count):
            alters[order[i % 7]] += 1 if self.fifths > 0 else -1
        return tuple(alters)

    @property
    def text(self) -> str:
        letter = _LETTERS[self.tonic.step]
        accidental = {1: "#", -1: "b", 0: ""}[self.tonic.alter]
        return f"{self.lead}{letter}{accidental}{self.tail}"

    def moved(self, semitones: int, steps: int) -> Key | None:
        """This key moved by the interval; None when its tonic or signature cannot be written."""
        step = self.tonic.step + steps
        alter = self.tonic.midi + semitones - Pitch(step, 0).midi
        key = replace(self, tonic=Pitch(step % 7, alter))
        if abs(alter) > 1 or abs(key.fifths) > 7:
            return None
        return key


def parse_key(value: str) -> Key | None:
    """A K: value with a tonic; None for none, Highland pipes, explicit signatures, junk."""
    match = _KEY_RE.match(value)
    if match is None:
        return None
    word = match.group("word")
    mode = word.lower()
    tail = value[match.end("acc") :]
    body = tail.split("%", 1)[0]
    if mode in _MODE_OFFSETS:
        rest = body[len(match.group("sep")) + len(word) :]
    elif match.group("sep"):
        mode, rest = "", body  # "K:G clef=bass": a word that is no mode is a clef or option
    else:
        return None  # "K:Bn", "K:Es": a tonic glued to something unknown
    if _EXPLICIT_SIGNATURE.search(rest):
        return None
    tonic = Pitch(
        _LETTERS.index(match.group("letter")), {"#": 1, "b": -1, "": 0}[match.group("acc")]
    )
    return Key(tonic=tonic, mode_offset=_MODE_OFFSETS[mode], lead=match.group("lead"), tail=tail)


def _best_key(key: Key, semitones: int) -> tuple[Key, int]:
    """The spelling of the moved key with the fewest sharps or flats, and its letter steps."""
    options = []
    for steps in range(-7, 8):
        moved = key.moved(semitones, steps)
        if moved is not None:
            # Equal signatures (F# / Gb major) go the way the music moves.
            options.append((abs(moved.fifths), -moved.fifths * semitones, moved, steps))
    _, _, best, steps = min(options, key=lambda option: option[:2])
    return best, steps


class BarState:
    """The accidental each note letter and octave has at this point of a bar."""

    def __init__(self, key: Key | None) -> None:
        self.signature = key.signature() if key is not None else (0,) * 7
        self.local: dict[int, int] = {}

    def set_key(self, key: Key) -> None:
        self.signature = key.signature()
        self.local.clear()

    def new_bar(self) -> None:
        self.local.clear()

    def current(self, step: int) -> int:
        return self.local.get(step, self.signature[step % 7])

    def read(self, step: int, written: int | None) -> int:
        """The alteration of a note as written (None: no accidental) in this context."""
        if written is None:
            return self.current(step)
        self.local[step] = written
        return written

    def spell(self, pitch: Pitch, explicit: bool) -> str:
        """The accidental to write for ``pitch`` here: "" when the context already gives it."""
        if not explicit and pitch.alter == self.current(pitch.step):
            return ""
        self.local[pitch.step] = pitch.alter
        return _ACCIDENTAL_TEXT[pitch.alter]


def read_note(text: str) -> tuple[int | None, int, str]:
    """(written alteration or None, step as in Pitch, length text) of a note token."""
    match = NOTE_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a note: {text!r}")
    letter = match.group("letter")
    octave = 5 if letter.islower() else 4
    octave += match.group("octave").count("'") - match.group("octave").count(",")
    step = 7 * (octave + 1) + _LETTERS.index(letter.upper())
    accidental = match.group("acc")
    return _ACCIDENTALS[accidental] if accidental else None, step, match.group("length")


def note_text(step: int, accidental: str, length: str) -> str:
    octave = step // 7 - 1
    letter = _LETTERS[step % 7]
    if octave >= 5:
        return accidental + letter.lower() + "'" * (octave - 5) + length
    return accidental + letter + "," * (4 - octave) + length


def _move_chord_letter(letter: str, accidental: str, semitones: int, steps: int) -> str:
    pitch = Pitch(_LETTERS.index(letter.upper()), {"#": 1, "b": -1, "": 0}[accidental])
    moved = pitch.moved(semitones, steps)
    if abs(moved.alter) > 1:
        moved = _nearest_spelling(moved.midi, moved.step)
    name = _LETTERS[moved.step % 7]
    name = name.lower() if letter.islower() else name
    return name + {1: "#", -1: "b", 0: ""}[moved.alter]


def _move_chord_symbol(text: str, semitones: int, steps: int) -> str:
    """A quoted chord symbol moved by the interval; annotations and other text unchanged."""
    inner = text[1:-1] if text.endswith('"') and len(text) > 1 else text[1:]
    match = _CHORD_RE.fullmatch(inner)
    if match is None:
        return text
    root = _move_chord_letter(match.group("root"), match.group("acc"), semitones, steps)
    bass = ""
    if match.group("bass"):
        bass = "/" + _move_chord_letter(match.group("bass"), match.group("bacc"), semitones, steps)
    moved = f"{match.group('open')}{root}{match.group('quality')}{bass}{match.group('close')}"
    return text.replace(inner, moved, 1)


class _Transposer:
    """Walks a tune once, reading pitches in the old keys and writing them in the new."""

    def __init__(self, semitones: int) -> None:
        self.semitones = semitones
        self.steps: int | None = None  # letter steps of the interval, set by the first key
        self.old = BarState(None)
        self.new = BarState(None)

    def key(self, value: str) -> str | None:
        old_key = parse_key(value)
        if old_key is None:
            return None
        new_key = None if self.steps is None else old_key.moved(self.semitones, self.steps)
        if new_key is None:
            # The first key, or one the running interval cannot spell: take the simplest
            # spelling, and its letter steps for the notes after it.
            new_key, self.steps = _best_key(old_key, self.semitones)
        self.old.set_key(old_key)
        self.new.set_key(new_key)
        return new_key.text

    def new_bar(self) -> None:
        self.old.new_bar()
        self.new.new_bar()

    def note(self, text: str) -> str:
        written, step, length = read_note(text)
        pitch = Pitch(step, self.old.read(step, written))
        moved = pitch.moved(self.semitones, self.steps or 0)
        return note_text(moved.step, self.new.spell(moved, written is not None), length)

    def tokens(self, tokens: list[Token]) -> list[Token] | None:
        out: list[Token] = []
        for token in tokens:
            text = token.text
            if token.kind == "note":
                text = self.note(text)
            elif token.kind == "bar":
                self.new_bar()
            elif is_chord_symbol(token):
                text = _move_chord_symbol(text, self.semitones, self.steps or 0)
            elif token.kind == "field" and text.startswith("[K:"):
                moved = self.key(text[3:-1])
                if moved is None:
                    return None
                text = f"[K:{moved}]"
            out.append(Token(token.kind, text))
        return out


def transpose_by(tune_text: str, semitones: int) -> str:
    """The tune moved by ``semitones``, notes, K: fields and chord symbols together.

    Returned unchanged when it cannot be done faithfully: no K:, a key without a tonic
    (``K:none``, Highland pipes ``K:HP``), or a key with explicit accidentals.
    """
    lines = split_lines(tune_text)
    if lines is None or semitones == 0:
        return tune_text
    walker = _Transposer(semitones)
    header_key = walker.key(lines.header[-1][2:])
    if header_key is None:
        return tune_text
    header = [*lines.header[:-1], f"K:{header_key}"]
    body: list[str] = []
    for line in lines.body:
        kind = line_kind(line)
        if kind == "music":
            tokens = walker.tokens(tokenize(line))
            if tokens is None:
                return tune_text
            line = join_tokens(space_field_lookalikes(tokens))
        elif kind == "field":
            match = FIELD_LINE.match(line)
            assert match is not None
            if match.group(1) == "K":
                moved = walker.key(match.group(2))
                if moved is None:
                    return tune_text
                line = f"K:{moved}"
            elif match.group(1) == "V":
                walker.new_bar()
        body.append(line)
    return "\n".join(header + body)


def transpose(tune_text: str, rng: random.Random) -> str:
    """Transposition by a random interval of TRANSPOSE_RANGE semitones (never 0)."""
    return transpose_by(tune_text, rng.choice(TRANSPOSE_RANGE))
