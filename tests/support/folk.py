"""Small folk corpora for tests, from music21's copy of Ryan's Mammoth Collection (1883)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

DANCES = ("jig", "reel", "hornpipe")

# The retraining test whose candidate must earn the gate: a tiny random music encoder against
# the real MiniLM, trained on the first GATED_TUNES dance tunes. With 14 held-out tunes one
# tune's rank decides; 300 steps was on that edge (rejected for seeds 0-2 on an AVX-512 AMD
# CPU, accepted on others), 500 passed for seeds 0-3 there by >= +0.06 MRR, +0.07 cross-format.
GATED_TUNES = 150
GATED_STEPS = 500

# Tests of what follows an accepted candidate (the scheduler's cycle, the train queue) train
# a few steps behind a gate that accepts any candidate: one test above proves training earns
# the real gate, and 500 steps cost ~4 min a test on 2 cores.
OPEN_GATE_STEPS = 20
OPEN_GATE = {
    "gate_mrr_margin": -1.0,
    "gate_zero_shot_margin": -1.0,
    "gate_cross_format_margin": -1.0,
}


def open_gate_env() -> dict[str, str]:
    """OPEN_GATE as the CLAMP_INDEX_* variables a CLI or worker process reads."""
    return {f"CLAMP_INDEX_{name.upper()}": str(value) for name, value in OPEN_GATE.items()}


def ryans_dir() -> Path:
    import music21

    return Path(music21.__file__).parent / "corpus" / "ryansMammoth"


def copy_ryans_tunes(dest: Path, n: int, skip: int = 0) -> list[Path]:
    """Copy n one-tune files whose R: is a common dance, in name order, after `skip`."""
    dest.mkdir(parents=True, exist_ok=True)
    chosen: list[Path] = []
    for path in sorted(ryans_dir().glob("*.abc")):
        match = re.search(r"^R:\s*(.+)$", path.read_text(encoding="latin-1"), re.M)
        if match and match.group(1).strip().lower() in DANCES:
            chosen.append(path)
    picked = chosen[skip : skip + n]
    if len(picked) < n:
        raise ValueError(f"only {len(picked)} dance tunes after {skip}")
    return [Path(shutil.copy(path, dest / path.name)) for path in picked]
