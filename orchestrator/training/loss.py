"""Symmetric InfoNCE over a batch of text/music pairs, where identical texts are no negatives."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def same_text_mask(texts: Sequence[str]) -> torch.Tensor:
    """`[B, B]` True where two different rows of the batch carry the same text."""
    same = torch.tensor([[a == b for b in texts] for a in texts])
    same.fill_diagonal_(False)
    return same


def info_nce(
    text: torch.Tensor,
    music: torch.Tensor,
    scale: torch.Tensor,
    same_text: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of text->music and music->text cross-entropy over cosine logits times `scale`."""
    logits = scale * F.normalize(text.float(), dim=-1) @ F.normalize(music.float(), dim=-1).T
    if same_text is not None:
        # Two tunes drawn as "a reel" are both right answers; punishing one as a negative
        # would teach the model to separate what the text cannot tell apart.
        logits = logits.masked_fill(same_text, float("-inf"))
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
