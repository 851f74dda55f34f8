"""Quality of a model directory: held-out music21 retrieval/zero-shot and WikiMT, vs baselines.

    python -m bench.eval --model DIR --json

Held-out: the fixed 10% of the music21 ABC corpus that training never sees (query = the
tune's full metadata text, target = its music). WikiMT (never trained on): zero-shot
genre accuracy over its 8 genres and description -> music retrieval, next to a
random-vector baseline (same metrics on seeded random unit vectors) and the majority class.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GENRE_TEMPLATE = "{label} music"
RANDOM_SEED = 0


def random_unit(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def random_retrieval(n: int, dim: int) -> dict[str, float]:
    """Same metrics on random vectors; expected MRR is H_n / n, HR@10 is 10 / n."""
    from orchestrator.training.eval import retrieval_metrics

    rng = np.random.default_rng(RANDOM_SEED)
    return retrieval_metrics(random_unit(n, dim, rng), random_unit(n, dim, rng))


def wikimt_eval(encoder: Any, limit: int | None = None) -> dict[str, Any]:
    from bench.wikimt import first_tunes, load_entries
    from orchestrator.training.eval import retrieval_metrics, zero_shot
    from workers.abc import encode_patches

    tunes = first_tunes(load_entries()[:limit])
    kept = [entry for entry, _ in tunes]
    music = encoder.encode_music(
        [encode_patches(p.music_text, encoder.max_patches) for _, p in tunes]
    )
    descriptions = encoder.encode_texts([e["text"] for e in kept])
    genres = [e["genre"] for e in kept]
    classes = sorted(set(genres))
    genre = zero_shot(music, genres, classes, GENRE_TEMPLATE, encoder.encode_texts)
    rng = np.random.default_rng(RANDOM_SEED)
    noise = random_unit(len(kept), encoder.dim, rng)
    random_genre = zero_shot(noise, genres, classes, GENRE_TEMPLATE, encoder.encode_texts)
    return {
        "pieces": len(kept),
        "genre_zero_shot": genre,
        "genre_random_vectors_accuracy": random_genre["accuracy"],
        "genre_majority": {
            "class": Counter(genres).most_common(1)[0][0],
            "accuracy": genre["majority_baseline"],
        },
        "description_to_music": retrieval_metrics(descriptions, music),
        "description_to_music_random": random_retrieval(len(kept), encoder.dim),
    }


def heldout_eval(encoder: Any, limit: int | None = None) -> dict[str, Any]:
    from orchestrator.training.data import load_corpus, split_records
    from orchestrator.training.eval import evaluate_heldout

    _, heldout = split_records(load_corpus())
    if limit:
        # The same even stride as training's periodic eval: every collection is sampled.
        heldout = heldout[:: max(1, len(heldout) // limit)][:limit]
    result = evaluate_heldout(encoder, heldout)
    result["text_to_music_random"] = random_retrieval(len(heldout), encoder.dim)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="model directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--limit", type=int, help="first N pieces of each set (smoke runs)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--skip-wikimt", action="store_true")
    args = parser.parse_args()

    import torch

    from workers.clamp import ClampEncoder, load_clamp

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.monotonic()
    loaded = load_clamp(args.model)
    encoder = ClampEncoder(loaded, text_cache_size=4096)
    report: dict[str, Any] = {
        "model": loaded.manifest.to_dict(),
        "heldout": heldout_eval(encoder, args.limit),
    }
    if not args.skip_wikimt:
        report["wikimt"] = wikimt_eval(encoder, args.limit)
    report["seconds"] = round(time.monotonic() - start, 1)
    if args.json:
        print(json.dumps(report))
        return
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
