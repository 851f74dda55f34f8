"""Write WikiMT's lead sheets out as one .abc file each (for the demo, tests and benchmarks)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from workers.abc import ParsedPiece, parse_abc_text

DEFAULT_JSON = Path(__file__).resolve().parents[2] / "shared/data/wikimt/wikimusictext.json"


def load_entries(path: Path = DEFAULT_JSON) -> list[dict[str, str]]:
    return json.loads(path.read_text(encoding="utf-8"))


def entry_to_abc(entry: dict[str, str]) -> str:
    """WikiMT's music has no T:/C: lines; add title and artist so metadata flows end to end."""
    lines = entry["music"].strip("\n").split("\n")
    head = [f"T:{entry['title']}", f"C:{entry['artist']}"]
    if lines and lines[0].startswith("X:"):
        return "\n".join([lines[0], *head, *lines[1:]]) + "\n"
    return "\n".join(["X:1", *head, *lines]) + "\n"


def first_tunes(entries: list[dict[str, str]]) -> list[tuple[dict[str, str], ParsedPiece]]:
    """Each entry with its first tune that parses; entries with none are left out."""
    found = []
    for entry in entries:
        parsed = [p for p in parse_abc_text(entry_to_abc(entry)) if isinstance(p, ParsedPiece)]
        if parsed:
            found.append((entry, parsed[0]))
    return found


def write_abc_files(out_dir: Path, json_path: Path = DEFAULT_JSON) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = load_entries(json_path)
    for i, entry in enumerate(entries):
        (out_dir / f"{i:04d}.abc").write_text(entry_to_abc(entry), encoding="utf-8")
    return len(entries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, dest="json_path")
    args = parser.parse_args()
    n = write_abc_files(args.out_dir, args.json_path)
    print(f"wrote {n} WikiMT tunes to {args.out_dir}")


if __name__ == "__main__":
    main()
