"""ABC augmentations for training: the same music in other notations, deterministic per seed.

Every op is a pure function ``(tune_text, rng) -> tune_text`` on one tune (as in
``ParsedPiece.abc_text``) whose result still parses with ``workers.abc.parse_abc_text``.
:func:`augment` applies a random subset of them in a fixed order. Ops live in:

* ``augment_pitch``: transposition (notes, K: fields and chord symbols together);
* ``augment_notation``: chord symbols, decorations and slurs added/removed;
* ``augment_unit``: L: unit rewrites, duple meter respelling (2/4 <-> C|);
* ``augment_layout``: music line breaks, header field order and dropout.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Mapping

from orchestrator.training.augment_layout import (
    DROPPABLE_FIELDS,
    drop_header_fields,
    regroup_lines,
    shuffle_header,
)
from orchestrator.training.augment_notation import (
    add_chord_symbols,
    add_decorations,
    add_slurs,
    chord_symbols,
    decorations,
    remove_chord_symbols,
    remove_decorations,
    remove_slurs,
    slurs,
)
from orchestrator.training.augment_pitch import TRANSPOSE_RANGE, transpose, transpose_by
from orchestrator.training.augment_unit import (
    respell_meter,
    rewrite_unit_length,
    scale_unit_length,
)
from workers.abc import ParsedPiece, parse_abc_text

__all__ = [
    "BASE_OPS",
    "DROPPABLE_FIELDS",
    "OPS",
    "TRANSPOSE_RANGE",
    "AbcOp",
    "add_chord_symbols",
    "add_decorations",
    "add_slurs",
    "augment",
    "check_ops",
    "chord_symbols",
    "decorations",
    "drop_header_fields",
    "parses",
    "regroup_lines",
    "remove_chord_symbols",
    "remove_decorations",
    "remove_slurs",
    "respell_meter",
    "rewrite_unit_length",
    "scale_unit_length",
    "shuffle_header",
    "slurs",
    "transpose",
    "transpose_by",
]

AbcOp = Callable[[str, random.Random], str]

# Application order. Transposition comes before chord symbols are added so that added
# chords are written in the new key's spelling; layout comes last so it cuts the final text.
OPS: dict[str, AbcOp] = {
    "transpose": transpose,
    "chords": chord_symbols,
    "decorations": decorations,
    "unit_length": rewrite_unit_length,
    "line_breaks": regroup_lines,
    "header_order": shuffle_header,
    "header_dropout": drop_header_fields,
    # Last, so that adding it left every draw of the ops above as it was: runs without it
    # (the shipped model's) get exactly the copies they got before. It reads M: and L:
    # wherever the header shuffle put them.
    "meter_spelling": respell_meter,
    # Added after the shipped recipe of 0.1.0 for the same reason: a manifest that lists
    # the ops without it still gets the copies its run got.
    "slurs": slurs,
}
# The ops of runs whose manifest does not list them; a run opts in to others
# (TrainConfig.augment_ops).
BASE_OPS: tuple[str, ...] = tuple(name for name in OPS if name not in ("meter_spelling", "slurs"))


def check_ops(ops: Iterable[str]) -> list[str]:
    """The op names, as a list; ValueError naming the known ones if any is not in OPS."""
    names = list(ops)
    unknown = sorted(set(names) - set(OPS))
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; known: {list(OPS)}")
    return names


def parses(tune_text: str) -> bool:
    """Whether the text is exactly one tune the encoder can read."""
    results = parse_abc_text(tune_text)
    return len(results) == 1 and isinstance(results[0], ParsedPiece)


def _rng(tune_text: str, seed: int, purpose: str) -> random.Random:
    # Keyed by the text too, so one seed per epoch still gives each tune its own choices;
    # and by purpose, so leaving one op out does not change what the others draw.
    digest = hashlib.sha256(f"{seed}\0{purpose}\0{tune_text}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def augment(
    abc_text: str,
    seed: int,
    *,
    ops: Iterable[str] = tuple(OPS),
    p: float | Mapping[str, float] = 0.5,
) -> str:
    """The tune with each op of ``ops`` applied with probability ``p`` (one value, or one
    per op name; missing names count as 0), in OPS order; the same for the same text and seed.

    An op whose result would not parse as one tune, or that fails on an odd tune, is
    skipped: one strange tune must not stop a training run.
    """
    wanted = set(check_ops(ops))
    chooser = _rng(abc_text, seed, "choose")
    text = abc_text
    for name, op in OPS.items():
        chance = p.get(name, 0.0) if isinstance(p, Mapping) else p
        # Drawn for every op, chosen or not, so the choices of one op never shift another's.
        if chooser.random() >= chance or name not in wanted:
            continue
        try:
            candidate = op(text, _rng(abc_text, seed, name))
        except Exception:  # a bug on one odd tune must not cost the run; tests call ops directly
            continue
        if candidate != text and parses(candidate):
            text = candidate
    return text
