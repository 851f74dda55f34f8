"""Embedded end-to-end ingest of WikiMT vs. the encoder alone on the same pieces.

    python -m bench.ingest --json

Both runs use one process, one loaded CLaMP-S-size random checkpoint and the same
settings (patch budget, precision). End to end is what `clamp-index ingest` does in
embedded mode (scan, hash, parse, SQLite rows, encode, vector upserts, job bookkeeping)
driven in-process, so the model load is not counted twice; encoder-only is
`encode_music` over the same pieces' patches, both after one untimed warm-up pass.
`ratio` = e2e / encoder pieces per second.
`--profile` adds the top cumulative functions of the e2e run.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.encode import clamp_s_checkpoint, peak_rss_mb, print_report  # noqa: E402
from bench.wikimt import write_abc_files  # noqa: E402


def ingest_in_process(settings: Any, abc_dir: Path) -> tuple[int, float, dict[str, float]]:
    """Plan + dispatch + drain exactly as the CLI's embedded mode; returns indexed pieces."""
    from sqlalchemy import func, select

    from orchestrator import jobs
    from schemas.db import Piece
    from workers.database import session_factory
    from workers.inprocess import InProcessDispatcher
    from workers.runtime import get_context

    ctx = get_context(settings)
    sessions = session_factory(settings.resolved_database_url())
    stage_s: dict[str, float] = {"plan": 0.0, "parse": 0.0, "encode": 0.0, "flush": 0.0}

    from workers import tasks

    # Per-stage wall time, measured by wrapping the task handlers the dispatcher calls.
    def timed_handler(name: str, handler: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return handler(*args, **kwargs)
            finally:
                stage_s[name] += time.perf_counter() - start

        return wrapper

    originals = (tasks.handle_parse, tasks.handle_encode)
    tasks.handle_parse = timed_handler("parse", tasks.handle_parse)
    tasks.handle_encode = timed_handler("encode", tasks.handle_encode)
    try:
        start = time.perf_counter()
        plan = jobs.plan_ingest(sessions, settings, [abc_dir])
        stage_s["plan"] = time.perf_counter() - start
        dispatcher = InProcessDispatcher(ctx)
        jobs.dispatch_plan(plan, settings, dispatcher)
        dispatcher.drain()
        elapsed = time.perf_counter() - start
    finally:
        tasks.handle_parse, tasks.handle_encode = originals
    stage_s["flush"] = elapsed - sum(v for k, v in stage_s.items() if k != "flush")
    with sessions() as session:
        indexed = session.scalar(select(func.count()).select_from(Piece)) or 0
    return int(indexed), elapsed, stage_s


def warm_up(encoder: Any, abc_dir: Path) -> None:
    from workers.abc import ParsedPiece, encode_patches, parse_abc_text

    patches = [
        encode_patches(p.music_text, encoder.patch_limit)
        for path in sorted(abc_dir.glob("*.abc"))
        for p in parse_abc_text(path.read_text(encoding="utf-8"))
        if isinstance(p, ParsedPiece)
    ]
    encoder.encode_music(patches)


def encoder_only(settings: Any) -> tuple[int, float, float]:
    """The same pieces as the database now holds, straight through encode_music."""
    from sqlalchemy import select

    from schemas.db import Piece
    from workers.abc import encode_patches
    from workers.database import session_factory
    from workers.runtime import get_context

    encoder = get_context(settings).encoder
    sessions = session_factory(settings.resolved_database_url())
    with sessions() as session:
        texts = list(session.scalars(select(Piece.music_text).order_by(Piece.id)))
    start = time.perf_counter()
    patches = [encode_patches(t, encoder.patch_limit) for t in texts]
    patch_s = time.perf_counter() - start
    start = time.perf_counter()
    encoder.encode_music(patches)
    return len(texts), time.perf_counter() - start, patch_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--model-dir", type=Path, help="checkpoint (default: random CLaMP-S)")
    parser.add_argument("--precision", choices=["auto", "exact", "fast"], default="auto")
    parser.add_argument("--profile", action="store_true", help="cProfile the e2e run")
    args = parser.parse_args()

    from schemas.settings import Settings
    from workers.runtime import close_contexts, get_context

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        model_dir = args.model_dir or clamp_s_checkpoint(root / "clamp-s")
        abc_dir = root / "wikimt"
        files = write_abc_files(abc_dir)
        # Only the state location, model and precision are set here; every other knob
        # (patch budget, pieces per encode task, upsert batch...) is the settings default.
        env = {k: v for k, v in os.environ.items() if k.startswith("CLAMP_INDEX_")}
        for key in env:
            del os.environ[key]
        settings = Settings(
            data_dir=root / "state",
            model_dir=model_dir,
            precision=args.precision,
            broker_url=None,
            database_url=None,
            qdrant_url=None,
        )
        start = time.perf_counter()
        encoder = get_context(settings).encoder
        load_s = time.perf_counter() - start
        # One untimed pass over the same music first: oneDNN builds kernels per batch shape
        # on first sight, and the e2e run would otherwise pay for them while the encoder-only
        # run (second) would not. A long-running worker is always past this point.
        warm_up(encoder, abc_dir)

        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()
        indexed, e2e_s, stages = ingest_in_process(settings, abc_dir)
        if profiler:
            profiler.disable()
        pieces, enc_s, patch_s = encoder_only(settings)
        report: dict[str, Any] = {
            "files": files,
            "pieces": pieces,
            "indexed": indexed,
            "e2e_pieces_per_s": round(indexed / e2e_s, 2),
            "encoder_pieces_per_s": round(pieces / enc_s, 2),
            "ratio": round((indexed / e2e_s) / (pieces / enc_s), 3),
            "e2e_s": round(e2e_s, 2),
            "encoder_s": round(enc_s, 2),
            "stage_s": {k: round(v, 2) for k, v in stages.items()},
            "patches_s": round(patch_s, 3),
            "model_load_s": round(load_s, 2),
            "precision": encoder.precision,
            "patch_budget": settings.patch_budget,
            "pieces_per_encode_task": settings.pieces_per_encode_task,
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
        close_contexts()
    os.environ.update(env)
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
        print(out.getvalue(), file=sys.stderr)
    print_report(report, args.json)


if __name__ == "__main__":
    main()
