"""CLaMP model: text and bar-patch music encoders in the published state-dict layout."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, BertModel, PreTrainedModel

from workers.clamp.configuration_clamp import PATCH_FEATURES, PATCH_LENGTH, ClampConfig


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden [B, L, H]` over the positions where `mask [B, L]` is 1."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1)


class ClampMusicEncoder(nn.Module):
    """Bar patches -> BERT -> mean over real patches; submodule names match `music_enc.*`."""

    def __init__(self, config: ClampConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embedding = nn.Linear(PATCH_LENGTH * PATCH_FEATURES, config.hidden_size)
        # Default key set (pooler included): the reference builds `BertModel(config)` and
        # saves its pooler, so a strict load of a published checkpoint needs it.
        self.enc = BertModel(config.music_bert_config())
        # Row `pos * 98 + class` of the one-hot input; a buffer so it follows .to(device).
        self.register_buffer(
            "_offsets",
            torch.arange(PATCH_LENGTH, dtype=torch.long) * PATCH_FEATURES,
            persistent=False,
        )

    def embed_patches(self, patch_ids: torch.Tensor) -> torch.Tensor:
        """`patch_embedding(one_hot(patch_ids).reshape(B, L, 6272))` without the one-hot.

        Every position carries exactly one class (0 included), so the matmul is a sum of 64
        columns of the weight: an embedding-bag over rows of its transpose.
        """
        batch, length, width = patch_ids.shape
        if width != PATCH_LENGTH:
            raise ValueError(f"patches must have {PATCH_LENGTH} ids, got {width}")
        rows = (patch_ids.long() + self._offsets).reshape(batch * length, PATCH_LENGTH)
        weight = self.patch_embedding.weight
        summed = F.embedding_bag(rows, weight.t().contiguous(), mode="sum")
        return (summed + self.patch_embedding.bias).reshape(batch, length, -1)

    def forward(self, patch_ids: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        embeds = self.embed_patches(patch_ids)
        out = self.enc(inputs_embeds=embeds, attention_mask=patch_mask)
        return masked_mean(out.last_hidden_state, patch_mask)


class ClampModel(nn.Module):
    """Text and music towers with linear heads into one space of `config.hidden_size`."""

    def __init__(self, config: ClampConfig) -> None:
        super().__init__()
        self.config = config
        text_config = config.text_model_config()
        # Default key set again (pooler included), matching the reference's AutoModel.
        self.text_enc: PreTrainedModel = AutoModel.from_config(text_config)
        self.text_proj = nn.Linear(text_config.hidden_size, config.hidden_size)
        self.music_enc = ClampMusicEncoder(config)
        self.music_proj = nn.Linear(config.hidden_size, config.hidden_size)

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    def encode_music(self, patch_ids: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        """`[B, L, 64]` class ids and `[B, L]` mask -> unnormalised `[B, D]` vectors."""
        return self.music_proj(self.music_enc(patch_ids, patch_mask))

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask -> the text encoder's mean-pooled `[B, H]`, before projection."""
        out = self.text_enc(input_ids=input_ids, attention_mask=attention_mask)
        return masked_mean(out.last_hidden_state, attention_mask)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask -> unnormalised `[B, D]` vectors."""
        return self.text_proj(self.text_features(input_ids, attention_mask))
