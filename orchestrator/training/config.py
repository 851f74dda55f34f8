"""TrainConfig: every knob that decides a trained model's weights, stored in its manifest."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator

from orchestrator.training.augment import BASE_OPS, check_ops
from workers.abc.profiles import REFERENCE_PROFILE, input_profile


class TrainConfig(BaseModel):
    """Everything that decides the trained weights; stored in the manifest."""

    def split_salt_bytes(self) -> bytes:
        from orchestrator.training.data import SPLIT_SALT

        return self.split_salt.encode() if self.split_salt else SPLIT_SALT

    # Salt of the held-out split ("" = the music21 corpus split of the shipped model).
    split_salt: str = ""
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024
    max_patches: int = 128
    dropout: float = 0.1
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    max_steps: int | None = Field(None, description="schedule length; None: time-based")
    minutes: float | None = Field(50.0, description="time budget; None: max_steps only")
    init_temperature: float = 0.07
    patch_mask_prob: float = 0.0
    # Dropout texts drawn per tune once, up front; each step picks one. Their frozen MiniLM
    # features are then computed once instead of every step (text was half a step's time).
    # 0 draws a fresh text every step.
    text_variants: int = 8
    # Add words for the tune's rhythm (orchestrator.training.rhythm_words: "dotted rhythms",
    # ...) to its texts: they name what tells dances apart, the same way in every book.
    text_rhythm_words: bool = False
    # The share of text draws offered those words (each draw then drops fields as usual): a
    # smaller share weakens their pull on the text pairs against the music-music pairs.
    text_rhythm_words_p: float = Field(1.0, ge=0.0, le=1.0)
    # Name each tune's book in its training texts ("a hornpipe from O'Neill's"). Such texts
    # pay the music tower to tell the books apart by their writing, which is what a book it
    # never saw does not share; False leaves the book out.
    text_collection: bool = True
    # Music views per training tune besides its own text: `music_views` augmented copies
    # (orchestrator.training.augment, each op with probability augment_p), plus the cached
    # MusicXML and MIDI round trips when the run has a round-trip cache. Each step pairs the
    # text with one view and, weighted by music_loss_weight, that view with another view of
    # the same tune (music->music InfoNCE): what makes a converted file find its original.
    music_views: int = 0
    augment_p: float = 0.5
    # Ops the copies draw from (orchestrator.training.augment.OPS); a manifest without this
    # field was trained with these.
    augment_ops: list[str] = Field(default_factory=lambda: list(BASE_OPS))
    music_loss_weight: float = 0.0
    # Weight of an auxiliary loss (model.RhythmFeatureHead, not exported) that makes every
    # view's vector predict its tune's sounding-rhythm features; 0: no such loss.
    rhythm_feature_loss_weight: float = Field(0.0, ge=0.0)
    # Views are cut to this many patches: a MIDI round trip is twice its original's length
    # (repeats expanded, a second voice of rests), and one such view in a batch pads every
    # row to it; cutting them made steps ~2x faster. None: max_patches.
    view_max_patches: int | None = None
    # Corpus runs only: music21 folders trained on, and the ones kept out for evaluation.
    collections: list[str] | None = None
    heldout_collections: list[str] = Field(default_factory=list)
    # bf16 autocast on CPU; CUDA always runs mixed precision (bf16, else fp16 + loss scaling).
    bf16: bool = False
    threads: int = 2
    seed: int = 0
    eval_every: int = 250
    eval_limit: int | None = 400
    fp16_weights: bool = True
    # How music text is rewritten before patching (workers.abc.profiles), in training and
    # wherever the model is used afterwards: the manifest carries it.
    input_profile: str = REFERENCE_PROFILE
    name: str = "clamp-index-minilm-small"
    version: str = "0.1.0"

    @field_validator("augment_ops")
    @classmethod
    def _known_ops(cls, ops: list[str]) -> list[str]:
        return check_ops(ops)

    @field_validator("input_profile")
    @classmethod
    def _known_profile(cls, name: str) -> str:
        input_profile(name)
        return name


# The shipped recipe's views: augmented copies, converter round trips (where the run has
# them) and the music->music loss. Corpus runs and catalogue retraining both start from it,
# so a model retrained on a catalogue keeps finding MusicXML and MIDI files' originals.
# TrainConfig's own defaults (no views) stay those of the tiny test runs.
VIEW_RECIPE: dict[str, Any] = {
    "music_views": 4,
    "augment_p": 0.5,
    "music_loss_weight": 1.0,
    "view_max_patches": 64,
}
