"""`python -m orchestrator.training.stats`: music21 corpus statistics and sample dropout texts."""

from __future__ import annotations

import argparse
import json
import random

from orchestrator.training.data import corpus_stats, full_text, load_corpus, sample_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=0, help="print N dropout texts")
    args = parser.parse_args()
    records = load_corpus()
    print(json.dumps(corpus_stats(records), indent=2, ensure_ascii=False))
    rng = random.Random(0)
    for record in rng.sample(records, min(args.examples, len(records))):
        print(f"{full_text(record)!r}\n    -> {sample_text(record, rng)!r}")


if __name__ == "__main__":
    main()
