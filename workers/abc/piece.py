"""Turn ABC text into parsed pieces ready for the encoder, one result per tune."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from workers.abc.filter import music_text_for_encoder
from workers.abc.header import AbcHeader, read_header
from workers.abc.patches import bar_patches, music_patch_count
from workers.abc.split import RawTune, split_tunes

__all__ = ["AbcParseError", "ParsedPiece", "PieceError", "parse_abc_text", "parse_tune"]


class AbcParseError(ValueError):
    """A tune cannot be encoded; the message names the tune and what is missing."""


@dataclass(frozen=True)
class ParsedPiece:
    """One tune, with the exact text the music encoder will read."""

    index: int
    x_number: str | None
    header: AbcHeader
    abc_text: str  # the tune as written
    music_text: str  # filtered: what the encoder reads
    content_sha256: str  # sha256 hex of music_text as UTF-8
    patch_count: int  # patches including the end patch, before max-length truncation


@dataclass(frozen=True)
class PieceError:
    """Why one tune of a file was skipped."""

    index: int
    x_number: str | None
    error_class: str
    message: str


def _describe(raw: RawTune, header: AbcHeader) -> str:
    where = f"tune X:{raw.x_number}" if raw.x_number is not None else f"tune #{raw.index + 1}"
    if header.title:
        where += f" (T: {header.title})"
    return f"{where} at line {raw.start_line}"


def parse_tune(raw: RawTune) -> ParsedPiece:
    """Read one tune; raise AbcParseError when it has no key field or no complete bar."""
    header = read_header(raw.text)
    if header.key is None:
        raise AbcParseError(
            f"{_describe(raw, header)} has no K: (key) field; ABC needs a K: line to end "
            "the tune header, e.g. 'K:C' or 'K:none'"
        )
    music_text = music_text_for_encoder(raw.text)
    if music_patch_count(music_text) == 0:
        raise AbcParseError(
            f"{_describe(raw, header)} has no music the encoder can read: no complete bar "
            "(notes followed by a bar line '|') after the header; note that a blank line "
            "ends a tune in ABC"
        )
    return ParsedPiece(
        index=raw.index,
        x_number=raw.x_number,
        header=header,
        abc_text=raw.text,
        music_text=music_text,
        content_sha256=hashlib.sha256(music_text.encode("utf-8")).hexdigest(),
        patch_count=len(bar_patches(music_text)) + 1,
    )


def parse_abc_text(text: str) -> list[ParsedPiece | PieceError]:
    """Parse every tune of an ABC file; a bad tune becomes a PieceError, the rest go on."""
    tunes = split_tunes(text)
    if not tunes:
        return [
            PieceError(
                index=0,
                x_number=None,
                error_class="AbcParseError",
                message="no tune found: the text has no X: (reference number) line "
                "and no K: (key) line, so it does not look like ABC notation",
            )
        ]
    results: list[ParsedPiece | PieceError] = []
    for raw in tunes:
        try:
            results.append(parse_tune(raw))
        except Exception as exc:  # one broken tune must never cost the others
            results.append(
                PieceError(
                    index=raw.index,
                    x_number=raw.x_number,
                    error_class=type(exc).__name__,
                    message=str(exc),
                )
            )
    return results
