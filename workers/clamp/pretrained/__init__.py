"""Registry of the models that ship inside the package (weights under this folder)."""

from __future__ import annotations

from pathlib import Path

# What an unset CLAMP_INDEX_MODEL_DIR means. Trained by orchestrator.training; see its
# MODEL_CARD.md for the data, the exact command and the measured quality.
DEFAULT_MODEL = "clamp-index-minilm-small"

_ROOT = Path(__file__).resolve().parent


def list_pretrained() -> list[str]:
    """Names of the shipped models: every folder here that holds a config.json."""
    return sorted(p.parent.name for p in _ROOT.glob("*/config.json"))


def pretrained_dir(name: str = DEFAULT_MODEL) -> Path:
    """The directory of a shipped model, loadable with workers.clamp.load_clamp."""
    path = _ROOT / name
    if not (path / "config.json").is_file():
        known = ", ".join(list_pretrained()) or "none"
        raise KeyError(f"no shipped model named {name!r}; shipped: {known}")
    return path
