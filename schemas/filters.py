"""The filterable fields of a query, and how their payload values are normalised.

Writers store a normalised copy of each filterable field beside the value shown to people,
and queries normalise the user's value the same way, so that `key=d major` finds tunes
written `K:D`, `meter=4/4` finds `M:C` and `rhythm=Slip Jig` finds `R:slip-jig`.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

# Bumped when the normalised payload fields change: collections written before lack them,
# and a filter on such a collection must say "reindex" rather than quietly match nothing.
FILTER_PAYLOAD_VERSION = "2"
FILTER_VERSION_META = "filter_payload_version"

_MODES = {
    "": "",
    "maj": "",
    "major": "",
    "ion": "",
    "ionian": "",
    "m": "m",
    "min": "m",
    "minor": "m",
    "aeo": "m",
    "aeolian": "m",
}
_MODE_PREFIXES = ("mix", "dor", "phr", "lyd", "loc")
_TONIC = re.compile(r"^\s*([A-Ga-g])\s*([#b♯♭]?)\s*(.*)$")
_WORDS = re.compile(r"[\s_-]+")


def normalise_key(value: str) -> str:
    """'D', 'Dmaj', 'D major' -> 'd'; 'Em', 'E minor', 'Eaeo' -> 'em'; 'Ador' -> 'ador'.

    Only the tonic and mode count: clef and transposition words after them are dropped.
    A key we cannot read (`K:none`, `K:HP`) is kept whole, lower-cased.
    """
    text = value.strip()
    match = _TONIC.match(text)
    if not match:
        return _WORDS.sub(" ", text.lower()).strip()
    tonic = match.group(1).lower() + {"♯": "#", "♭": "b"}.get(match.group(2), match.group(2))
    rest = match.group(3).strip().lower()
    word = rest.split()[0] if rest else ""
    if word in _MODES:
        return tonic + _MODES[word]
    for prefix in _MODE_PREFIXES:
        if word.startswith(prefix):
            return tonic + prefix
    if word.startswith("m") and not word.startswith("mix"):
        return tonic + "m"
    return tonic


def normalise_meter(value: str) -> str:
    """'C' -> '4/4', 'C|' -> '2/2', ' 6 / 8 ' -> '6/8'."""
    text = re.sub(r"\s+", "", value).lower()
    return {"c": "4/4", "c|": "2/2"}.get(text, text)


def normalise_words(value: str) -> str:
    """Case, hyphens and spacing do not matter: 'Slip-Jig' == 'slip  jig'."""
    return _WORDS.sub(" ", value.strip().lower()).strip()


def normalise_rhythm(value: str) -> str:
    """Dance names are written 'slip jig', 'Slip-Jig' and 'SlipJig' alike: no separators."""
    return _WORDS.sub("", value.strip().lower())


_FORMATS = {"abc": "abc", "musicxml": "musicxml", "xml": "musicxml", "mxl": "musicxml"}
_FORMATS |= {"midi": "midi", "mid": "midi"}


def normalise_format(value: str) -> str:
    text = value.strip().lower().lstrip(".")
    return _FORMATS.get(text, text)


def normalise_source(value: str) -> str:
    """A path prefix as stored: POSIX, no trailing slash (paths stay case-sensitive)."""
    text = value.strip().replace("\\", "/")
    if not text:
        return text
    cleaned = posixpath.normpath(text)
    return "/" if cleaned in ("/", "//") else cleaned.rstrip("/")


def source_prefixes(uri: str) -> list[str]:
    """Every folder above a file and the file itself, for exact-match prefix filtering."""
    path = normalise_source(uri)
    prefixes = [path]
    while True:
        parent = posixpath.dirname(path)
        if not parent or parent == path:
            break
        prefixes.append(parent)
        path = parent
    return prefixes


MatchKind = Literal["keyword", "text"]
PayloadType = Literal["keyword", "integer", "float", "text"]


@dataclass(frozen=True)
class FilterField:
    """A field people filter on: the payload field it matches and how values compare."""

    name: str
    payload_field: str
    normalise: Callable[[str], str]
    match: MatchKind = "keyword"
    help: str = ""

    @property
    def payload_type(self) -> PayloadType:
        return "text" if self.match == "text" else "keyword"


FILTER_FIELDS: dict[str, FilterField] = {
    f.name: f
    for f in (
        FilterField("key", "key_norm", normalise_key, help="tonic and mode: D, Dm, E minor, Ador"),
        FilterField("meter", "meter_norm", normalise_meter, help="6/8, 4/4 (C counts as 4/4)"),
        FilterField("rhythm", "rhythm_norm", normalise_rhythm, help="R: field, e.g. jig, reel"),
        FilterField("composer", "composer_text", normalise_words, "text", "every word must appear"),
        FilterField("origin", "origin_text", normalise_words, "text", "every word must appear"),
        FilterField(
            "source", "source_prefixes", normalise_source, help="a folder or file path prefix"
        ),
        FilterField("format", "format", normalise_format, help="abc, musicxml or midi"),
    )
}

# Payload indexes of the normalised fields, merged into the collection spec.
FILTER_PAYLOAD_INDEXES: dict[str, PayloadType] = {
    f.payload_field: f.payload_type for f in FILTER_FIELDS.values()
}


class UnknownFilterError(ValueError):
    pass


def filter_payload(
    *,
    uri: str,
    source_format: str,
    key: str | None,
    meter: str | None,
    rhythm: str | None,
    composer: str | None,
    origin: str | None,
) -> dict[str, Any]:
    """The normalised payload fields of one piece (None stays absent: it matches nothing)."""
    raw = {"key": key, "meter": meter, "rhythm": rhythm, "composer": composer, "origin": origin}
    payload: dict[str, Any] = {
        FILTER_FIELDS[name].payload_field: FILTER_FIELDS[name].normalise(value)
        for name, value in raw.items()
        if value and value.strip()
    }
    payload["format"] = normalise_format(source_format)
    payload["source_prefixes"] = source_prefixes(uri)
    return payload


@dataclass(frozen=True)
class StoreCondition:
    """One condition on a payload field, as both vector stores understand it."""

    payload_field: str
    value: str
    match: MatchKind


def store_conditions(filters: Mapping[str, str | None]) -> list[StoreCondition]:
    """User filters -> store conditions; unknown fields and empty values are refused."""
    conditions: list[StoreCondition] = []
    for name, value in filters.items():
        if value is None:
            continue
        spec = FILTER_FIELDS.get(name.strip().lower())
        if spec is None:
            raise UnknownFilterError(
                f"unknown filter field {name!r}; filterable fields: {', '.join(FILTER_FIELDS)}"
            )
        normalised = spec.normalise(str(value))
        if not normalised:
            raise UnknownFilterError(f"the filter on {spec.name!r} has an empty value")
        conditions.append(StoreCondition(spec.payload_field, normalised, spec.match))
    return conditions
