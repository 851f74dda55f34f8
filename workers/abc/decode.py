"""Turn the raw bytes of an uploaded ABC file into text, or say plainly why not."""

from __future__ import annotations

import codecs

__all__ = ["AbcDecodeError", "decode_abc_bytes"]

# Above this share of control characters the bytes are not something a person typed.
_MAX_CONTROL_SHARE = 0.10
# Tab, line feed, form feed and carriage return are ordinary in hand-edited text files.
_ALLOWED_CONTROLS = frozenset("\t\n\x0b\x0c\r")


class AbcDecodeError(ValueError):
    """The bytes cannot be read as ABC text; the message is meant for the uploader."""


def _is_control(ch: str) -> bool:
    code = ord(ch)
    if ch in _ALLOWED_CONTROLS:
        return False
    # C1 controls (0x80-0x9F) only show up when binary data is forced through latin-1.
    return code < 32 or code == 127 or 0x80 <= code <= 0x9F or ch == "\ufffd"


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def decode_abc_bytes(data: bytes) -> tuple[str, str]:
    """Decode ABC file bytes; return (text with "\\n" newlines, encoding name used).

    UTF-8 first (BOM stripped, reported as "utf-8-sig"), then cp1252, then latin-1,
    which accepts any byte.  UTF-16 with a BOM is also accepted because Windows
    editors save "Unicode" text that way.
    """
    if not data.strip():
        raise AbcDecodeError("file is empty: it contains no ABC text")

    text: str | None = None
    encoding = ""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            text, encoding = data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError:
            text = None
    if text is None:
        # NUL never occurs in 8-bit text, so it is the cheapest sure sign of binary data.
        if b"\x00" in data:
            raise AbcDecodeError(
                "file looks like binary data, not ABC text (it contains NUL bytes); "
                "upload a plain-text .abc file"
            )
        for candidate in ("utf-8-sig", "cp1252", "latin-1"):
            try:
                text = data.decode(candidate)
            except UnicodeDecodeError:
                continue
            if candidate == "utf-8-sig":
                encoding = "utf-8-sig" if data.startswith(codecs.BOM_UTF8) else "utf-8"
            else:
                encoding = candidate
            break
    # latin-1 maps every byte, so the loop above always ends with some text.
    assert text is not None

    if not text.strip():
        raise AbcDecodeError("file is empty: it contains no ABC text")
    controls = sum(1 for ch in text if _is_control(ch))
    if "\x00" in text or controls > _MAX_CONTROL_SHARE * len(text):
        raise AbcDecodeError(
            "file looks like binary data, not ABC text (too many control characters); "
            "upload a plain-text .abc file"
        )
    return _normalise_newlines(text), encoding
