"""Filter values are compared as a person would: the pure normalisers behind every filter."""

from __future__ import annotations

import pytest

from schemas.filters import (
    FILTER_FIELDS,
    UnknownFilterError,
    filter_payload,
    normalise_format,
    normalise_key,
    normalise_meter,
    normalise_rhythm,
    normalise_source,
    source_prefixes,
    store_conditions,
)


@pytest.mark.parametrize(
    ("written", "normalised"),
    [
        ("D", "d"),
        ("Dmaj", "d"),
        ("D major", "d"),
        ("d Ionian", "d"),
        ("Em", "em"),
        ("E minor", "em"),
        ("Emin", "em"),
        ("E aeolian", "em"),
        ("Ador", "ador"),
        ("A Dorian", "ador"),
        ("Gmix", "gmix"),
        ("G Mixolydian", "gmix"),
        ("F#m", "f#m"),
        ("F♯ minor", "f#m"),
        ("Bb", "bb"),
        ("Bb clef=bass", "bb"),
        ("C lydian", "clyd"),
        ("HP", "hp"),
        ("none", "none"),
    ],
)
def test_keys(written: str, normalised: str) -> None:
    assert normalise_key(written) == normalised


@pytest.mark.parametrize(
    ("written", "normalised"),
    [("C", "4/4"), ("c|", "2/2"), (" 6 / 8 ", "6/8"), ("9/8", "9/8"), ("none", "none")],
)
def test_meters(written: str, normalised: str) -> None:
    assert normalise_meter(written) == normalised


def test_rhythms() -> None:
    spellings = ["slip jig", "Slip-Jig", "SlipJig", " slip_jig "]
    assert {normalise_rhythm(r) for r in spellings} == {"slipjig"}


def test_formats_and_sources() -> None:
    assert [normalise_format(f) for f in ("ABC", ".mxl", "xml", "MusicXML", "mid", "midi")] == [
        "abc",
        "musicxml",
        "musicxml",
        "musicxml",
        "midi",
        "midi",
    ]
    assert normalise_source("/data/folk/") == "/data/folk"
    assert normalise_source("/data//folk/./x/..") == "/data/folk"
    assert source_prefixes("/data/folk/a.abc") == ["/data/folk/a.abc", "/data/folk", "/data", "/"]


def test_payload_and_conditions_meet() -> None:
    payload = filter_payload(
        uri="/srv/Music/irish/set.abc",
        source_format="mxl",
        key="E Dorian",
        meter="C",
        rhythm="Slip-Jig",
        composer=None,
        origin="  ",
    )
    conditions = store_conditions(
        {
            "KEY": "edor",
            "meter": "4/4",
            "rhythm": "slip jig",
            "format": "MusicXML",
            "source": "/srv/Music/irish/",
        }
    )
    for condition in conditions:
        value = payload[condition.payload_field]
        assert condition.value in value if isinstance(value, list) else condition.value == value
    # Absent and blank fields stay absent: a filter on them matches nothing.
    assert "composer_text" not in payload and "origin_text" not in payload
    # Paths keep their case: /srv/music is another folder.
    assert "/srv/music" not in payload["source_prefixes"]


def test_unknown_and_empty_filters_are_errors() -> None:
    with pytest.raises(UnknownFilterError, match=r"'tempo'.*key, meter"):
        store_conditions({"tempo": "fast"})
    with pytest.raises(UnknownFilterError, match="empty"):
        store_conditions({"rhythm": " - "})
    assert store_conditions({"key": None}) == []
    assert {f.match for f in FILTER_FIELDS.values()} == {"keyword", "text"}
