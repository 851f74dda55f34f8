"""Reference loop vs. ClampEncoder on WikiMT, side by side in one run.

    python -m bench.encode --json

Encodes the WikiMT pieces with a CLaMP-S-size random checkpoint (768 hidden, 6 layers,
512 patches) three ways: the reference loop (tests/reference_clamp.py: batch 1, one-hot,
eager attention, fp32), our encoder in the default mode of this machine (`fast` where bf16
is supported, else `exact`), and our encoder in `exact` mode. The unprefixed figures are
the default mode, `exact_*` the fp32 mode; accuracy is measured against the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# The one reference port lives with the tests; make it importable when run as a script.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# BERT's own initializer range. The demo default (0.5) makes a chaotic random network in
# which fp32 summation order alone moves vectors by ~4e-3 (see tests/test_clamp_parity.py),
# which would measure the random weights rather than the encoder.
PARITY_INIT_STD = 0.02
CLAMP_S: dict[str, int] = {
    "hidden_size": 768,
    "num_layers": 6,
    "num_heads": 12,
    "intermediate_size": 3072,
    "max_length": 512,
}


def clamp_s_checkpoint(out_dir: Path) -> Path:
    """A CLaMP-S-size random checkpoint (written once; reused if already there)."""
    from tests.support.random_checkpoint import write_random_checkpoint

    if (out_dir / "manifest.json").is_file():
        return out_dir
    return write_random_checkpoint(
        out_dir, **CLAMP_S, text="tiny-bert", init_std=PARITY_INIT_STD, name="clamp-s-random"
    )


def wikimt_patches(max_patches: int, limit: int | None = None) -> list[np.ndarray]:
    """Each WikiMT tune as the encoder sees it: parsed, filtered, cut into bar patches."""
    from bench.wikimt import first_tunes, load_entries
    from workers.abc import encode_patches

    tunes = first_tunes(load_entries()[:limit])
    return [encode_patches(piece.music_text, max_patches) for _, piece in tunes]


def padded_patches(lengths: list[int], budget: int) -> int:
    """Patches the planned batches actually run, padding included."""
    from workers.clamp.encoder import plan_batches

    return sum(len(b) * lengths[b[0]] for b in plan_batches(lengths, budget))


def peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def accuracy(ours: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    cosine = (ours.astype(np.float64) * reference).sum(axis=1)
    return float(np.abs(ours - reference).max()), float(cosine.min())


def run(
    model_dir: Path, *, limit: int | None, budget: int, device: str, rounds: int
) -> dict[str, Any]:
    import torch

    from tests.reference_clamp import ReferenceClamp
    from workers.clamp import ClampEncoder, load_clamp
    from workers.clamp.hardware import bf16_supported, resolve_device

    device = resolve_device(device)
    default_mode = "fast" if bf16_supported(device) else "exact"
    loaded = load_clamp(model_dir, device=device)
    pieces = wikimt_patches(loaded.config.max_length, limit)
    n = len(pieces)

    reference = ReferenceClamp(model_dir)
    encoders = {
        mode: ClampEncoder(loaded, patch_budget=budget, precision=mode, device=device)
        for mode in dict.fromkeys([default_mode, "exact"])
    }
    methods: dict[str, Any] = {
        "reference": reference.encode_music,
        **{mode: enc.encode_music for mode, enc in encoders.items()},
    }
    for method in methods.values():
        method(pieces[:4])  # first-call allocations and kernel selection

    # Interleaved rounds over random (seeded) slices of the set: on a shared machine a
    # burst of foreign load then slows every method alike instead of one whole run.
    order = np.random.default_rng(0).permutation(n)
    chunks = [c.tolist() for c in np.array_split(order, max(1, min(rounds, n)))]
    seconds = dict.fromkeys(methods, 0.0)
    vectors = {name: np.empty((n, loaded.config.dim), dtype=np.float32) for name in methods}
    padded = 0
    for round_no, chunk in enumerate(chunks):
        batch = [pieces[i] for i in chunk]
        padded += padded_patches([len(p) for p in batch], budget)
        names = list(methods)
        names = names[round_no % len(names) :] + names[: round_no % len(names)]
        for name in names:
            result, elapsed = timed(methods[name], batch)
            vectors[name][chunk] = result
            seconds[name] += elapsed

    real = sum(len(p) for p in pieces)
    max_abs, min_cos = accuracy(vectors[default_mode], vectors["reference"])
    exact_max_abs, exact_min_cos = accuracy(vectors["exact"], vectors["reference"])
    return {
        "pieces": n,
        "reference_pieces_per_s": round(n / seconds["reference"], 2),
        "ours_pieces_per_s": round(n / seconds[default_mode], 2),
        "speedup": round(seconds["reference"] / seconds[default_mode], 2),
        "max_abs_diff": max_abs,
        "min_cosine": min_cos,
        "padding_fraction": round(1.0 - real / padded, 4),
        "exact_pieces_per_s": round(n / seconds["exact"], 2),
        "exact_speedup": round(seconds["reference"] / seconds["exact"], 2),
        "exact_min_cosine": exact_min_cos,
        "exact_max_abs_diff": exact_max_abs,
        "mode": default_mode,
        "patch_budget": budget,
        "rounds": len(chunks),
        "patches": real,
        "device": device,
        "cpu": cpu_summary(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def print_report(report: dict[str, Any], as_json: bool) -> None:
    """One JSON line for scripts, or aligned `key: value` lines for people."""
    if as_json:
        print(json.dumps(report))
        return
    for key, value in report.items():
        print(f"{key:>24}: {value}")


def cpu_summary() -> str:
    """CPU model and its bf16 units: speedups differ a lot between AMX and AVX512-BF16 parts."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    name = next(
        (
            line.split(":", 1)[1].strip()
            for line in info.splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    flags = set(
        next(
            (
                line.split(":", 1)[1].split()
                for line in info.splitlines()
                if line.startswith("flags")
            ),
            [],
        )
    )
    units = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    return f"{name} ({', '.join(units) or 'no bf16 units'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--model-dir", type=Path, help="checkpoint (default: random CLaMP-S)")
    parser.add_argument("--limit", type=int, help="first N WikiMT pieces (default: all)")
    parser.add_argument("--budget", type=int, help="patch budget (default: settings)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    args = parser.parse_args()

    import torch

    from schemas.settings import Settings

    if args.threads:
        torch.set_num_threads(args.threads)
    from workers.runtime import default_patch_budget

    budget = args.budget or Settings().patch_budget or default_patch_budget(args.device)
    with tempfile.TemporaryDirectory(prefix="bench-encode-") as tmp:
        model_dir = args.model_dir or clamp_s_checkpoint(Path(tmp) / "clamp-s")
        report = run(
            model_dir, limit=args.limit, budget=budget, device=args.device, rounds=args.rounds
        )
    print_report(report, args.json)


if __name__ == "__main__":
    main()
