"""TrainConfig: every knob that decides a trained model's weights, stored in its manifest."""

from __future__ import annotations

from pydantic import BaseModel, Field


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
    # bf16 autocast on CPU; CUDA always runs mixed precision (bf16, else fp16 + loss scaling).
    bf16: bool = False
    threads: int = 2
    seed: int = 0
    eval_every: int = 250
    eval_limit: int | None = 400
    fp16_weights: bool = True
    name: str = "clamp-index-minilm-small"
    version: str = "0.1.0"
