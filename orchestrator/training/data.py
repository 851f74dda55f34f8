"""Training records: fields, split by content hash, text dropout; music21's ABC corpus reader."""

from __future__ import annotations

import hashlib
import importlib.util
import random
import re
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from workers.abc import AbcHeader, ParsedPiece, decode_abc_bytes, parse_abc_text

Split = Literal["train", "heldout"]

# Bump the salt only on purpose: it defines which tunes the shipped metrics were measured on.
SPLIT_SALT = b"clamp-index/heldout/v1:"
CATALOGUE_SALT = b"clamp-index/catalogue-heldout/v1:"
HELDOUT_PERCENT = 10

# Top-level folders of music21/corpus that hold ABC, with the names people know them by.
COLLECTIONS: dict[str, str] = {
    "essenFolksong": "Essen folk song collection",
    "oneills1850": "O'Neill's Music of Ireland",
    "ryansMammoth": "Ryan's Mammoth Collection",
    "airdsAirs": "Aird's Selection of Scotch, English, Irish and Foreign Airs",
    "miscFolk": "folk tunes",
    "josquin": "Josquin des Prez",
    "nottingham-dataset": "Nottingham folk music database",
}
# Collections whose K: gives the key signature only (a minor tune reads K:G), so "major"
# there is no statement about the mode and is kept out of the mode field and mode labels.
KEY_SIGNATURE_ONLY = frozenset({"essenFolksong"})
# Collections whose every tune has a known origin although the files rarely say so.
COLLECTION_PLACE: dict[str, str] = {"oneills1850": "Ireland"}

# The Essen origins are German place names (continent first); MiniLM reads English, so the
# ones that occur more than a few times are translated. Unknown names pass through as is.
PLACES: dict[str, str] = {
    "Deutschland": "Germany",
    "Nord - Deutschland": "northern Germany",
    "Luxemburg": "Luxembourg",
    "Lothringen": "Lorraine",
    "Elsass": "Alsace",
    "Irland": "Ireland",
    "Schweiz": "Switzerland",
    "Oesterreich": "Austria",
    "Niederlande": "the Netherlands",
    "Schlesien": "Silesia",
    "Westfalen": "Westphalia",
    "Niederrhein": "Lower Rhine",
    "Rheinland": "Rhineland",
    "Franken": "Franconia",
    "Schwaben": "Swabia",
    "Thueringen": "Thuringia",
    "Boehmen": "Bohemia",
    "Bayern": "Bavaria",
    "Sachsen": "Saxony",
    "Hessen": "Hesse",
    "Tirol": "Tyrol",
    "Steiermark": "Styria",
    "Siebenbuergen": "Transylvania",
    "flaemisch": "Flanders",
    "China": "China",
}
_CONTINENTS = {"Europa", "Mitteleuropa", "Westeuropa", "Osteuropa", "Asien", "Nordeuropa"}

# Dance types as written in R: fields or Ryan's "Title -- Strathspey" suffixes.
DANCES: dict[str, str] = {
    "reel": "reel",
    "jig": "jig",
    "double jig": "jig",
    "single jig": "jig",
    "slip jig": "slip jig",
    "slipjig": "slip jig",
    "hornpipe": "hornpipe",
    "strathspey": "strathspey",
    "clog": "clog",
    "air": "air",
    "march": "march",
    "polka": "polka",
    "waltz": "waltz",
    "schottische": "schottische",
    "set dance": "set dance",
    "long dance": "long dance",
    "highland fling": "highland fling",
    "fling": "highland fling",
    "quickstep": "quickstep",
    "slide": "slide",
    "mazurka": "mazurka",
    "minuet": "minuet",
    "country dance": "country dance",
}
# Dance names trusted at the end of a title; "air" or "march" there are too often no dance.
TITLE_DANCES = frozenset(
    {"reel", "jig", "slip jig", "hornpipe", "strathspey", "waltz", "polka", "clog"}
)
_TITLE_WORDS = re.compile(r"[a-z]+")
MODES: dict[str, str] = {
    "": "major",
    "maj": "major",
    "ion": "major",
    "m": "minor",
    "min": "minor",
    "aeo": "minor",
    "mix": "mixolydian",
    "dor": "dorian",
    "phr": "phrygian",
    "lyd": "lydian",
    "loc": "locrian",
}
TEMPO_WORDS = (
    "very slow",
    "slow",
    "slowly",
    "moderate",
    "moderato",
    "lively",
    "quick",
    "fast",
    "brisk",
    "with spirit",
    "with expression",
    "andante",
    "allegro",
    "adagio",
    "larghetto",
    "largo",
    "allegretto",
    "vivace",
    "presto",
    "spirited",
    "gracefully",
    "tenderly",
    "plaintive",
)
_TEMPO_RE = re.compile(r"\b(" + "|".join(sorted(TEMPO_WORDS, key=len, reverse=True)) + r")\b")
_KEY_RE = re.compile(r"^\s*([A-Ga-g])([#b]?)\s*([A-Za-z]*)")
_METER_RE = re.compile(r"^\d{1,2}/\d{1,2}$")
_PAGE_REF = re.compile(r",\s*S\.\s*\d+.*$")
# Essen files are DOS code page 437 text that decodes as cp1252/latin-1, leaving umlauts as
# C1 control characters (\x81 for "ü"); mapping just that range back repairs the metadata.
_CP437_C1 = {code: bytes([code]).decode("cp437") for code in range(0x80, 0xA0)}


def clean(value: str | None) -> str | None:
    """Metadata text with code-page damage repaired and whitespace squeezed; None if empty."""
    if value is None:
        return None
    value = " ".join(value.translate(_CP437_C1).split())
    return value or None


@dataclass(frozen=True)
class TuneRecord:
    """One deduplicated tune with its metadata normalised into English words."""

    key_hash: str  # sha256 of the whitespace-free music text: dedup and split key
    # Top folder under music21/corpus, e.g. "essenFolksong"; "" for catalogue pieces, whose
    # folders say nothing a query would name.
    collection: str
    source: str  # path relative to the corpus folder, or the catalogue file's uri
    title: str | None
    composer: str | None
    places: tuple[str, ...]  # English place names, broadest first
    rhythm: str | None  # dance type (reel, jig, ...) when known
    genre: str | None  # any other R: text, e.g. Essen song kinds (German)
    meter: str | None  # "3/4"; "C" and "C|" become 4/4 and 2/2
    tonic: str | None  # "D", "B flat", "F sharp"
    mode: str | None  # major, minor, dorian, mixolydian, ...
    tempo_words: tuple[str, ...]
    music_text: str
    patch_count: int

    @property
    def collection_name(self) -> str:
        return COLLECTIONS.get(self.collection, self.collection)

    @property
    def key_name(self) -> str | None:
        if self.tonic is None or self.mode is None:
            return None
        return f"{self.tonic} {self.mode}"


def corpus_root() -> Path:
    """music21's corpus folder, found without importing music21 (slow, and not needed)."""
    spec = importlib.util.find_spec("music21")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("music21 is not installed: pip install music21 (its corpus is data)")
    return Path(next(iter(spec.submodule_search_locations))) / "corpus"


def abc_files(root: Path | None = None) -> list[Path]:
    root = corpus_root() if root is None else root
    # Sorted: the first copy of a duplicate wins, so dedup must see files in a fixed order.
    return sorted(root.rglob("*.abc"))


def normalise_meter(meter: str | None) -> str | None:
    if not meter:
        return None
    value = meter.replace(" ", "").rstrip("]")
    value = value.removeprefix("FREI")  # Essen marks free rhythm as "FREI4/4"
    if value == "C":
        return "4/4"
    if value == "C|":
        return "2/2"
    return value if _METER_RE.match(value) else None


def parse_key(key: str | None) -> tuple[str, str] | None:
    """ABC K: value -> (tonic words, mode name); None for K:none, Highland pipes and junk."""
    if not key:
        return None
    match = _KEY_RE.match(key)
    if match is None:
        return None
    letter, accidental, word = match.groups()
    lowered = word.lower()
    token = lowered if lowered == "m" else lowered[:3]
    # "K:G clef=bass" or "K:D exp ^f": a word that is no mode leaves the default, major.
    mode = MODES.get(token, "major")
    tonic = letter.upper() + {"#": " sharp", "b": " flat", "": ""}[accidental]
    return tonic, mode


def normalise_rhythm(rhythm: str | None, title: str | None) -> tuple[str | None, str | None]:
    """(dance type, other genre text) from an R: value, or from a "Title -- Jig" suffix."""
    genre = None
    if rhythm:
        cleaned = (clean(rhythm) or "").strip("[]").strip()
        dance = DANCES.get(cleaned.lower())
        if dance is not None:
            return dance, None
        if cleaned and "?" not in cleaned:
            genre = cleaned
    if title and " -- " in title:
        dance = DANCES.get(title.rsplit(" -- ", 1)[1].strip().lower())
        if dance is not None:
            return dance, genre
    if title:
        # Aird's and O'Neill's name the dance in the title alone ("Miss Hay's Reel.",
        # "The Soldier's Hornpipe"): the last one or two words, when they are a dance type.
        words = _TITLE_WORDS.findall(title.lower())
        for size in (2, 1):
            dance = DANCES.get(" ".join(words[-size:])) if len(words) >= size else None
            if dance is not None and dance in TITLE_DANCES:
                return dance, genre
    return None, genre


def normalise_places(origin: str | None, collection: str) -> tuple[str, ...]:
    names: list[str] = []
    for part in (clean(origin) or "").split(","):
        part = part.strip().strip("[]").strip()
        if part and part not in _CONTINENTS and "?" not in part:
            names.append(PLACES.get(part, part))
    if not names and collection in COLLECTION_PLACE:
        names.append(COLLECTION_PLACE[collection])
    return tuple(dict.fromkeys(names))


def clean_title(title: str | None) -> str | None:
    title = clean(title)
    if not title:
        return None
    # Essen titles end in a page reference ("..., S. 19") that is no part of the name.
    title = _PAGE_REF.sub("", title).strip().rstrip(".").strip()
    return title or None


def tempo_words(header: AbcHeader) -> tuple[str, ...]:
    texts = [header.tempo or "", *header.extra.get("Q", [])]
    # O'Neill's puts the tempo word into N: ("Very slow"), not into Q:.
    texts += header.extra.get("N", [])
    found = _TEMPO_RE.findall(" ".join(texts).lower())
    return tuple(dict.fromkeys(found))


def content_key(music_text: str) -> str:
    """Whitespace-free hash: copies that differ only in line breaks count as one tune."""
    return hashlib.sha256("".join(music_text.split()).encode("utf-8")).hexdigest()


def record_from_header(
    header: AbcHeader, music_text: str, patch_count: int, collection: str, source: str
) -> TuneRecord:
    """A tune's header fields normalised into English words; pure, so any reader can use it."""
    title = clean_title(header.title)
    rhythm, genre = normalise_rhythm(header.rhythm, header.title)
    key = parse_key(header.key)
    return TuneRecord(
        key_hash=content_key(music_text),
        collection=collection,
        source=source,
        title=title,
        composer=clean(header.composer),
        places=normalise_places(header.origin, collection),
        rhythm=rhythm,
        genre=genre,
        meter=normalise_meter(header.meter),
        tonic=key[0] if key else None,
        mode=key[1] if key else None,
        tempo_words=tempo_words(header),
        music_text=music_text,
        patch_count=patch_count,
    )


def record_from_piece(piece: ParsedPiece, collection: str, source: str) -> TuneRecord:
    return record_from_header(piece.header, piece.music_text, piece.patch_count, collection, source)


def iter_corpus(
    root: Path | None = None, collections: Collection[str] | None = None
) -> Iterator[tuple[ParsedPiece, TuneRecord]]:
    """Every readable tune of the corpus (or of the named top folders) once, in file order
    (first copy of a duplicate)."""
    root = corpus_root() if root is None else root
    seen: set[str] = set()
    for path in abc_files(root):
        relative = path.relative_to(root)
        if collections is not None and relative.parts[0] not in collections:
            continue
        text, _ = decode_abc_bytes(path.read_bytes())
        for result in parse_abc_text(text):
            if not isinstance(result, ParsedPiece):
                continue
            record = record_from_piece(result, relative.parts[0], relative.as_posix())
            if record.key_hash in seen:
                continue
            seen.add(record.key_hash)
            yield result, record


def load_corpus(
    root: Path | None = None, collections: Collection[str] | None = None
) -> list[TuneRecord]:
    """Records of the corpus; `collections` (top folder names) limits which folders are read:
    see orchestrator.training.sources for which ones a run may use."""
    return [record for _, record in iter_corpus(root, collections)]


def split_of(key_hash: str, salt: bytes = SPLIT_SALT) -> Split:
    """Held out iff a salted hash of the content falls in the first 10 of 100 buckets.

    Keyed by content alone, so a tune keeps its side across runs, machines, corpus
    versions and file reorderings. Catalogue runs use their own salt (CATALOGUE_SALT): a
    catalogue made of the shipped model's held-out tunes must still have tunes to train on.
    """
    digest = hashlib.sha256(salt + key_hash.encode("ascii")).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    return "heldout" if bucket < HELDOUT_PERCENT else "train"


def evenly_spaced(records: Sequence[TuneRecord], limit: int | None) -> list[TuneRecord]:
    """`limit` records evenly spaced over the whole list, so every collection, and every
    part of a book ordered by dance type, is represented (a stride of len // limit cut at
    `limit` would stop short of the end)."""
    if not limit or limit >= len(records):
        return list(records)
    return [records[i * len(records) // limit] for i in range(limit)]


def split_records(
    records: Iterable[TuneRecord], salt: bytes = SPLIT_SALT
) -> tuple[list[TuneRecord], list[TuneRecord]]:
    train: list[TuneRecord] = []
    heldout: list[TuneRecord] = []
    for record in records:
        (heldout if split_of(record.key_hash, salt) == "heldout" else train).append(record)
    return train, heldout


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def text_fields(record: TuneRecord, collection: bool = True) -> dict[str, list[str]]:
    """Field kind -> surface forms; only fields the record has, so dropout never invents.

    Without `collection` no field or phrase names the tune's book, unless that is all the
    record has (a tune needs some text to be paired with)."""
    fields: dict[str, list[str]] = {}
    if record.title:
        fields["title"] = [record.title, f'"{record.title}"']
    if record.composer:
        fields["composer"] = [record.composer, f"by {record.composer}"]
    if record.places:
        country, region = record.places[0], record.places[-1]
        fields["origin"] = [country, f"from {country}"]
        if region != country:
            fields["origin"] += [region, f"from {region}, {country}"]
    if record.rhythm:
        fields["rhythm"] = [record.rhythm, f"{_article(record.rhythm)} {record.rhythm}"]
    if record.genre:
        fields["genre"] = [record.genre]
    if record.meter:
        fields["meter"] = [record.meter, f"in {record.meter}", f"{record.meter} time"]
    key = record.key_name
    if key:
        fields["key"] = [key, f"in {key}", f"key of {key}"]
    if record.mode and (record.collection not in KEY_SIGNATURE_ONLY or record.mode != "major"):
        fields["mode"] = [f"{record.mode} mode", record.mode, f"in a {record.mode} key"]
    if record.tempo_words:
        fields["tempo"] = list(record.tempo_words)
    named_book = collection and record.collection
    if named_book:
        fields["collection"] = [record.collection_name, f"from {record.collection_name}"]

    # Phrases a user would type; they teach the projection how fields combine.
    phrases: list[str] = []
    kind = record.rhythm or ("folk song" if record.collection == "essenFolksong" else "tune")
    if key:
        phrases.append(f"{_article(kind)} {kind} in {key}")
    if record.meter:
        phrases.append(f"{_article(kind)} {kind} in {record.meter}")
    if record.places:
        phrases.append(f"{_article(kind)} {kind} from {record.places[0]}")
    if record.rhythm and named_book and record.collection != "essenFolksong":
        phrases.append(f"{_article(kind)} {kind} from {record.collection_name}")
    if phrases:
        fields["phrase"] = phrases
    if not fields and not collection:
        return text_fields(record)
    return fields


_SEPARATORS = (", ", ". ", "; ", " ", ", ")


def has_text(record: TuneRecord) -> bool:
    """Whether a record has any field to describe it: without one it cannot be a pair."""
    return bool(text_fields(record))


def sample_text(
    record: TuneRecord,
    rng: random.Random,
    rhythm: Sequence[str] = (),
    collection: bool = True,
) -> str:
    """CLaMP-style text dropout: a random non-empty subset of fields in random order.

    `rhythm` (rhythm_words.rhythm_words of the tune) is one more field when given; without
    it the draws are those of runs from before it existed. `collection`: see text_fields.
    """
    fields = text_fields(record, collection)
    if rhythm:
        fields["rhythm_words"] = list(rhythm)
    kinds = sorted(fields)
    count = rng.randint(1, len(kinds))
    chosen = rng.sample(kinds, count)  # sample() also shuffles: order is random too
    parts = [rng.choice(fields[kind]) for kind in chosen]
    return rng.choice(_SEPARATORS).join(parts)


def full_text(record: TuneRecord) -> str:
    """The canonical query of a tune (held-out retrieval): every field, fixed order."""
    parts: list[str] = []
    if record.title:
        parts.append(record.title)
    kind = record.rhythm or ("folk song" if record.collection == "essenFolksong" else "tune")
    phrase = f"{_article(kind)} {kind}"
    if record.key_name:
        phrase += f" in {record.key_name}"
    if record.meter:
        phrase += f", {record.meter} time"
    if record.places:
        country, region = record.places[0], record.places[-1]
        phrase += f", from {region}, {country}" if region != country else f", from {country}"
    parts.append(phrase)
    for extra in (record.composer, record.genre, ", ".join(record.tempo_words)):
        if extra:
            parts.append(extra)
    if record.collection:
        parts.append(record.collection_name)
    return ". ".join(parts)


def corpus_stats(records: Sequence[TuneRecord]) -> dict[str, Any]:
    train, heldout = split_records(records)
    return {
        "tunes": len(records),
        "train": len(train),
        "heldout": len(heldout),
        "per_collection": dict(Counter(r.collection for r in records).most_common()),
        "with_rhythm": sum(r.rhythm is not None for r in records),
        "with_origin": sum(bool(r.places) for r in records),
        "with_title": sum(r.title is not None for r in records),
        "with_genre": sum(r.genre is not None for r in records),
        "with_tempo_words": sum(bool(r.tempo_words) for r in records),
        "rhythms": dict(Counter(r.rhythm for r in records if r.rhythm).most_common(15)),
        "meters": dict(Counter(r.meter or "none" for r in records).most_common(15)),
        "modes": dict(Counter(r.mode or "none" for r in records).most_common()),
        "keys": dict(Counter(r.key_name or "none" for r in records).most_common(15)),
        "countries": dict(Counter(r.places[0] for r in records if r.places).most_common(15)),
        "patches_median": sorted(r.patch_count for r in records)[len(records) // 2],
        "patches_over_128": sum(r.patch_count > 128 for r in records),
    }
