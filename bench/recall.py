"""HNSW recall of the embedded store on real music vectors, per search beam (hnsw_ef).

    python -m bench.recall --json

Encodes every music21 corpus tune and every WikiMT tune with a model (default: the
shipped one) into an embedded store, builds its HNSW index the way a finished job does
(optimize), then asks text queries (held-out tunes' metadata) and music queries
(held-out tunes' vectors) at several `hnsw_ef` values. Recall@k is the share of the exact
top k (brute force, `exact=True`, same run) that the indexed search returns; latency is
the mean wall time per query.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BEAMS = (16, 32, 64, 128, 256, 512)


def catalog_vectors(encoder: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(catalog music vectors, held-out text queries, held-out music queries)."""
    from bench.wikimt import first_tunes, load_entries
    from orchestrator.training.data import full_text, load_corpus, split_records

    records = load_corpus()
    _, heldout = split_records(records)
    texts = [r.music_text for r in records]
    texts += [piece.music_text for _, piece in first_tunes(load_entries())]
    music = encoder.encode_music([encoder.music_patches(t, encoder.max_patches) for t in texts])
    sample = heldout[:: max(1, len(heldout) // 500)][:500]
    text_queries = encoder.encode_texts([full_text(r) for r in sample])
    music_queries = encoder.encode_music(
        [encoder.music_patches(r.music_text, encoder.max_patches) for r in sample]
    )
    return music, text_queries, music_queries


def top_ids(store: Any, queries: np.ndarray, k: int) -> tuple[list[set[str]], float]:
    start = time.perf_counter()
    found = [{h.point_id for h in store.query("catalog", q, k)} for q in queries]
    return found, (time.perf_counter() - start) / len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--model", type=Path, help="model directory (default: shipped)")
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args()

    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from schemas.collection import CollectionSpec, point_id
    from schemas.db import Base
    from workers.aliases import SqlAliasRegistry
    from workers.clamp import ClampEncoder, load_clamp
    from workers.clamp.pretrained import pretrained_dir
    from workers.vectors import EdgeVectorStore, SearchTuning

    encoder = ClampEncoder(load_clamp(args.model or pretrained_dir()))
    start = time.perf_counter()
    music, text_queries, music_queries = catalog_vectors(encoder)
    encode_s = time.perf_counter() - start
    report: dict[str, Any] = {
        "model": encoder.manifest.name,
        "points": len(music),
        "dim": int(music.shape[1]),
        "k": args.k,
        "encode_s": round(encode_s, 1),
    }
    with tempfile.TemporaryDirectory(prefix="bench-recall-") as tmp:
        root = Path(tmp)
        engine = create_engine(f"sqlite:///{root / 'meta.db'}")
        Base.metadata.create_all(engine)
        registry = SqlAliasRegistry(sessionmaker(engine))
        ids = [point_id(str(i)) for i in range(len(music))]
        with EdgeVectorStore(root / "v", registry) as store:
            store.create_collection(CollectionSpec("catalog", music.shape[1]))
            for lo in range(0, len(ids), 1024):
                hi = lo + 1024
                store.upsert("catalog", ids[lo:hi], music[lo:hi], [{}] * len(ids[lo:hi]))
            start = time.perf_counter()
            store.optimize("catalog")
            report["optimize_s"] = round(time.perf_counter() - start, 1)
        for name, queries in (("text", text_queries), ("music", music_queries)):
            with EdgeVectorStore(root / "v", registry, SearchTuning(exact=True)) as store:
                truth, exact_s = top_ids(store, queries, args.k)
            rows: dict[str, Any] = {"exact_ms": round(exact_s * 1000, 3)}
            for beam in (None, *BEAMS):
                with EdgeVectorStore(root / "v", registry, SearchTuning(hnsw_ef=beam)) as store:
                    found, took = top_ids(store, queries, args.k)
                hits = sum(len(t & f) for t, f in zip(truth, found, strict=True))
                rows[f"ef={beam or 'default'}"] = {
                    "recall": round(hits / (args.k * len(queries)), 4),
                    "ms": round(took * 1000, 3),
                }
            report[f"{name}_queries"] = {"n": len(queries), **rows}
        engine.dispose()
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
