"""Notes for abcjs's synth made on request, so playback needs no soundfont from the internet."""

from __future__ import annotations

import io
import re
import wave
from functools import lru_cache

import numpy as np

SAMPLE_RATE = 22050
NOTE_SECONDS = 2.0
_NOTE_NAME = re.compile(r"^([A-G])(b?)(-?\d)$")
_SEMITONE = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def note_frequency(name: str) -> float:
    """Hz of an abcjs note name ("A4", "Bb3", "Db5"); ValueError for anything else."""
    match = _NOTE_NAME.match(name)
    if not match:
        raise ValueError(f"not a note name: {name!r} (expected e.g. A4, Bb3)")
    letter, flat, octave = match.groups()
    midi = 12 * (int(octave) + 1) + _SEMITONE[letter] - (1 if flat else 0)
    if not 0 <= midi <= 127:
        raise ValueError(f"note out of MIDI range: {name!r}")
    return 440.0 * 2 ** ((midi - 69) / 12)


@lru_cache(maxsize=128)
def note_wav(name: str) -> bytes:
    """One soundfont note as a 16-bit mono WAV: a plucked, softly decaying tone.

    abcjs asks for `<instrument>-mp3/<note>.mp3` but decodes whatever the browser can, so
    WAV made here serves every instrument. Harmonics above Nyquist are left out so high
    notes do not alias.
    """
    freq = note_frequency(name)
    t = np.arange(int(SAMPLE_RATE * NOTE_SECONDS)) / SAMPLE_RATE
    tone = np.zeros_like(t)
    for harmonic, weight in ((1, 1.0), (2, 0.5), (3, 0.25), (4, 0.12), (5, 0.06)):
        if freq * harmonic < SAMPLE_RATE / 2:
            # Upper harmonics die faster, as on a plucked string.
            tone += weight * np.sin(2 * np.pi * freq * harmonic * t) * np.exp(-t * 2.5 * harmonic)
    attack = np.minimum(t / 0.005, 1.0)  # 5 ms: no click at the onset
    tail = np.minimum((NOTE_SECONDS - t) / 0.05, 1.0)  # nor at the end of the sample
    samples = tone * attack * tail
    samples *= 0.35 / max(float(np.abs(samples).max()), 1e-9)
    pcm = (samples * 32767).astype("<i2").tobytes()
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(pcm)
    return out.getvalue()
