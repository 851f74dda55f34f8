"""Score files built in memory (Standard MIDI, compressed MusicXML) for benchmarks and tests."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence

TICKS_PER_QUARTER = 480


def _vlq(n: int) -> bytes:
    """MIDI variable-length quantity: 7 bits per byte, high bit set on all but the last."""
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def midi_file(
    notes: Sequence[tuple[int, int]], *, tracks: int = 1, meter: tuple[int, int] = (4, 4)
) -> bytes:
    """A format-1 file: meter, G major, 120 bpm, then (pitch, ticks) notes one after another.

    `tracks` copies of the track follow the header (0 gives a header-only file).
    """
    events = b"\x00\xff\x58\x04" + bytes([meter[0], meter[1].bit_length() - 1, 24, 8])
    events += b"\x00\xff\x59\x02\x01\x00"  # key signature: one sharp, major
    events += b"\x00\xff\x51\x03\x07\xa1\x20"  # 120 bpm
    for pitch, ticks in notes:
        events += b"\x00\x90" + bytes([pitch, 80]) + _vlq(ticks) + b"\x80" + bytes([pitch, 0])
    events += b"\x00\xff\x2f\x00"
    track = b"MTrk" + len(events).to_bytes(4, "big") + events
    header = b"MThd" + (6).to_bytes(4, "big") + (1).to_bytes(2, "big")
    header += tracks.to_bytes(2, "big") + TICKS_PER_QUARTER.to_bytes(2, "big")
    return header + track * tracks


def mxl_file(xml: bytes, *, container: bool = True, name: str = "score/score.xml") -> bytes:
    """A compressed MusicXML archive; without `container` readers must find the score alone."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("mimetype", "application/vnd.recordare.musicxml")
        if container:
            zf.writestr(
                "META-INF/container.xml",
                '<?xml version="1.0" encoding="UTF-8"?><container><rootfiles>'
                f'<rootfile full-path="{name}" '
                'media-type="application/vnd.recordare.musicxml+xml"/>'
                "</rootfiles></container>",
            )
        zf.writestr(name, xml)
    return buf.getvalue()
