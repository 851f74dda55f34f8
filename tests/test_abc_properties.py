"""Property tests: the ABC pipeline never raises and always yields well-formed patches."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.abc import (
    EOP_ID,
    PATCH_LENGTH,
    ParsedPiece,
    PieceError,
    bar_patches,
    decode_abc_bytes,
    encode_patches,
    music_text_for_encoder,
    parse_abc_text,
    patch_ids,
    split_tunes,
)
from workers.abc.decode import AbcDecodeError

# Text biased towards ABC: bar lines, field prefixes, comments, newlines, non-ASCII.
_ABC_BITS = st.sampled_from(
    [
        "X:1",
        "K:C",
        "T:é",
        "L:1/8",
        "%%score 1",
        "%",
        "\\%",
        "|",
        "|:",
        ":|",
        "::",
        "[|",
        "||",
        "|]",
        "\n",
        "\r\n",
        "\n\n",
        "G",
        "ab",
        " ",
        "ß",
        "\t",
        "\x00",
        "+:",
        "w:",
    ]
)
abc_like = st.lists(st.one_of(_ABC_BITS, st.text(max_size=5)), max_size=40).map("".join)
any_text = st.one_of(st.text(), abc_like)


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_parse_abc_text_never_raises(text: str) -> None:
    results = parse_abc_text(text)
    assert results
    for result in results:
        assert isinstance(result, ParsedPiece | PieceError)
        if isinstance(result, ParsedPiece):
            assert result.patch_count >= 2


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_split_and_filter_never_raise(text: str) -> None:
    for index, tune in enumerate(split_tunes(text)):
        assert tune.index == index
        music_text_for_encoder(tune.text)


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_bar_patches_never_raise(text: str) -> None:
    for patch in bar_patches(text):
        assert patch


@settings(max_examples=300, deadline=None)
@given(any_text, st.integers(min_value=1, max_value=8))
def test_encode_patches_shape_and_ids(text: str, max_patches: int) -> None:
    arr = encode_patches(text, max_patches)
    assert arr.dtype == np.uint8
    assert arr.ndim == 2
    assert arr.shape[1] == PATCH_LENGTH
    assert 1 <= arr.shape[0] <= max_patches
    assert int(arr.max()) <= EOP_ID
    if arr.shape[0] < max_patches:
        assert arr[-1].tolist() == [EOP_ID] * PATCH_LENGTH


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=100))
def test_patch_ids_range(text: str) -> None:
    ids = patch_ids(text)
    assert len(ids) == PATCH_LENGTH
    assert all(0 <= i <= EOP_ID for i in ids)
    assert ids.count(EOP_ID) == (1 if len(text) < PATCH_LENGTH else 0)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decode_only_raises_decode_error(data: bytes) -> None:
    try:
        text, encoding = decode_abc_bytes(data)
    except AbcDecodeError:
        return
    assert "\r" not in text
    assert encoding in {"utf-8", "utf-8-sig", "utf-16", "cp1252", "latin-1"}
