"""Write the held-out 10% of music21's folk corpus as .abc files: the demo's folk corpus.

    python -m bench.folk OUT_DIR

These tunes (jigs, reels, hornpipes, airs, Essen songs...) are the ones the shipped model
never trained on, so searching them shows what the model learnt, not what it memorised.
Each source file keeps its collection folder and holds its held-out tunes as written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def write_heldout_tunes(out_dir: Path) -> int:
    from orchestrator.training.data import iter_corpus, split_of

    by_source: dict[str, list[str]] = {}
    for piece, record in iter_corpus():
        if split_of(record.key_hash) == "heldout":
            by_source.setdefault(record.source, []).append(piece.abc_text.strip("\n"))
    for source, tunes in by_source.items():
        path = out_dir / source
        path.parent.mkdir(parents=True, exist_ok=True)
        # ABC 2.1: a blank line ends a tune.
        path.write_text("\n\n".join(tunes) + "\n", encoding="utf-8")
    return sum(len(tunes) for tunes in by_source.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    n = write_heldout_tunes(args.out_dir)
    print(f"wrote {n} held-out music21 folk tunes to {args.out_dir}")


if __name__ == "__main__":
    main()
