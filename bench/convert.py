"""Measure MusicXML/MXL/MIDI -> ABC conversion throughput on generated files."""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.scores import TICKS_PER_QUARTER, midi_file, mxl_file
from workers.convert import convert_to_abc, converter_versions

_STEPS = ["C", "D", "E", "F", "G", "A", "B"]


def make_musicxml(rng: random.Random, bars: int) -> bytes:
    """A one-part 4/4 score of eighths and quarters; enough structure to exercise xml2abc."""
    measures = []
    for number in range(1, bars + 1):
        attrs = (
            "<attributes><divisions>2</divisions><key><fifths>1</fifths></key>"
            "<time><beats>4</beats><beat-type>4</beat-type></time>"
            "<clef><sign>G</sign><line>2</line></clef></attributes>"
            if number == 1
            else ""
        )
        notes, left = [], 8
        while left:
            dur = min(left, rng.choice([1, 2, 2]))
            step, octave = rng.choice(_STEPS), rng.choice([4, 5])
            kind = "eighth" if dur == 1 else "quarter"
            notes.append(
                f"<note><pitch><step>{step}</step><octave>{octave}</octave></pitch>"
                f"<duration>{dur}</duration><type>{kind}</type></note>"
            )
            left -= dur
        measures.append(f'<measure number="{number}">{attrs}{"".join(notes)}</measure>')
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<score-partwise version="4.0">'
        '<part-list><score-part id="P1"><part-name>Melody</part-name></score-part></part-list>'
        f'<part id="P1">{"".join(measures)}</part></score-partwise>'
    ).encode()


def make_midi(rng: random.Random, bars: int) -> bytes:
    """4/4 bars of quantized eighths and quarters, like a notation program's export."""
    notes: list[tuple[int, int]] = []
    for _ in range(bars):
        left = 8
        while left:
            dur = min(left, rng.choice([1, 2, 2]))
            notes.append((rng.randint(60, 84), TICKS_PER_QUARTER // 2 * dur))
            left -= dur
    return midi_file(notes)


def _run(files: list[tuple[bytes, str]], jobs: int, timeout_s: float) -> dict[str, Any]:
    def one(item: tuple[bytes, str]) -> tuple[float, bool]:
        start = time.perf_counter()
        try:
            convert_to_abc(item[0], item[1], timeout_s=timeout_s)
            ok = True
        except ValueError:
            ok = False
        return time.perf_counter() - start, ok

    start = time.perf_counter()
    # Each conversion is a child process, so threads are enough to use every core.
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(one, files))
    wall = time.perf_counter() - start
    latencies = sorted(t for t, _ in results)
    return {
        "files": len(files),
        "failed": sum(not ok for _, ok in results),
        "jobs": jobs,
        "wall_s": round(wall, 3),
        "files_per_s": round(len(files) / wall, 2),
        "latency_mean_s": round(statistics.fmean(latencies), 3),
        "latency_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3),
        "mean_input_bytes": int(statistics.fmean(len(d) for d, _ in files)),
    }


def run_bench(n: int, jobs: int, timeout_s: float, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    bars = [rng.randint(8, 64) for _ in range(n)]
    makers: dict[str, Callable[[int], tuple[bytes, str]]] = {
        "musicxml": lambda b: (make_musicxml(rng, b), ".musicxml"),
        "mxl": lambda b: (mxl_file(make_musicxml(rng, b)), ".mxl"),
        "midi": lambda b: (make_midi(rng, b), ".mid"),
    }
    report: dict[str, Any] = {
        "versions": converter_versions(),
        "cpu_count": os.cpu_count(),
        "bars_per_file": [min(bars), max(bars)],
    }
    for name, make in makers.items():
        files = [make(b) for b in bars]
        report[name] = {"serial": _run(files, 1, timeout_s)}
        if jobs > 1:
            report[name]["parallel"] = _run(files, jobs, timeout_s)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=36, help="files per format")
    parser.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    report = run_bench(args.n, args.jobs, args.timeout)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return
    for name in ("musicxml", "mxl", "midi"):
        for mode, r in report[name].items():
            print(
                f"{name:9s} {mode:8s} {r['files_per_s']:7.2f} files/s  "
                f"mean {r['latency_mean_s']:.3f} s  p95 {r['latency_p95_s']:.3f} s  "
                f"failed {r['failed']}/{r['files']} (jobs={r['jobs']})"
            )


if __name__ == "__main__":
    main()
