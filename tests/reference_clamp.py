"""Test-only port of the reference CLaMP computation (microsoft/muzic `clamp/`), batch 1.

Written from shared/docs/clamp-format.md and deliberately independent of `workers.clamp`:
it reads config.json and the raw state dict itself, builds plain transformers modules with
eager attention (what the reference's transformers version ran), feeds the literal one-hot
tensor through `patch_embedding`, and encodes one piece or text at a time without padding.
The parity tests and `bench/encode.py` both compare `ClampEncoder` against this, so there
is exactly one reference implementation to trust.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, BertModel

PATCH_LENGTH = 64
PATCH_FEATURES = 98
TEXT_MAX_TOKENS = 128

# What the reference's `AutoModel.from_pretrained("distilroberta-base")` builds; only used
# when config.json has no `text_config` (the published checkpoints have none).
_DISTILROBERTA_BASE: dict[str, Any] = {
    "vocab_size": 50265,
    "hidden_size": 768,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}


def _read_state(model_dir: Path) -> dict[str, torch.Tensor]:
    safetensors = model_dir / "model.safetensors"
    if safetensors.is_file():
        from safetensors.torch import load_file

        return load_file(str(safetensors))
    return torch.load(model_dir / "pytorch_model.bin", weights_only=True, map_location="cpu")


def _sub_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    # position_ids: a buffer older transformers saved; rebuilt by the modules themselves.
    return {
        k[len(prefix) :]: v
        for k, v in state.items()
        if k.startswith(prefix) and not k.endswith("position_ids")
    }


def _linear(state: dict[str, torch.Tensor], prefix: str) -> nn.Linear:
    weight = state[prefix + "weight"]
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    layer.load_state_dict(_sub_state(state, prefix))
    return layer


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # The reference's avg_pooling: masked sum over the mask's count.
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1)


class ReferenceClamp:
    """The published forward pass, one input at a time, fp32, on CPU."""

    def __init__(self, model_dir: Path, tokenizer_dir: Path | None = None) -> None:
        model_dir = Path(model_dir)
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        state = _read_state(model_dir)
        self.max_length = int(config.get("max_length", config["max_position_embeddings"]))

        bert_keys = set(BertConfig().to_dict()) - {"text_config"}
        music_config = BertConfig(**{k: v for k, v in config.items() if k in bert_keys})
        music_config._attn_implementation = "eager"
        self.music_bert = BertModel(music_config, add_pooling_layer=False).eval()
        bert_state = {
            k: v for k, v in _sub_state(state, "music_enc.enc.").items() if "pooler" not in k
        }
        self.music_bert.load_state_dict(bert_state, strict=True)
        self.patch_embedding = _linear(state, "music_enc.patch_embedding.").eval()
        self.music_proj = _linear(state, "music_proj.").eval()

        text_kwargs = dict(config.get("text_config") or {"model_type": "roberta"})
        model_type = text_kwargs.pop("model_type")
        if "text_config" not in config:
            text_kwargs.update(_DISTILROBERTA_BASE)
        for key in ("architectures", "transformers_version", "_name_or_path"):
            text_kwargs.pop(key, None)
        text_config = AutoConfig.for_model(model_type, **text_kwargs)
        text_config._attn_implementation = "eager"
        self.text_enc = AutoModel.from_config(text_config).eval()
        text_state = _sub_state(state, "text_enc.")
        missing, unexpected = self.text_enc.load_state_dict(text_state, strict=False)
        # Only pooler weights may differ; they never reach the vectors.
        assert all("pooler" in k for k in [*missing, *unexpected]), (missing, unexpected)
        self.text_proj = _linear(state, "text_proj.").eval()
        self.tokenizer = AutoTokenizer.from_pretrained(
            str(tokenizer_dir or model_dir), local_files_only=True
        )

    @torch.no_grad()
    def music_vector(self, patches: np.ndarray) -> np.ndarray:
        """`[n, 64]` class ids (cut to max_length) -> unnormalised `[D]` float32 vector."""
        ids = torch.from_numpy(np.asarray(patches)[: self.max_length]).long().unsqueeze(0)
        one_hot = F.one_hot(ids, num_classes=PATCH_FEATURES).float()
        embeds = self.patch_embedding(one_hot.reshape(1, -1, PATCH_LENGTH * PATCH_FEATURES))
        mask = torch.ones(1, ids.shape[1], dtype=torch.long)
        hidden = self.music_bert(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        return self.music_proj(_mean_pool(hidden, mask))[0].numpy()

    @torch.no_grad()
    def text_vector(self, text: str) -> np.ndarray:
        tokens = self.tokenizer(
            text, truncation=True, max_length=TEXT_MAX_TOKENS, return_tensors="pt"
        )
        mask = torch.ones_like(tokens["input_ids"])
        hidden = self.text_enc(input_ids=tokens["input_ids"], attention_mask=mask)
        return self.text_proj(_mean_pool(hidden.last_hidden_state, mask))[0].numpy()

    def encode_music(self, pieces: list[np.ndarray]) -> np.ndarray:
        """The reference loop: one piece per forward pass, then unit length."""
        return _normalise(np.stack([self.music_vector(p) for p in pieces]))

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return _normalise(np.stack([self.text_vector(t) for t in texts]))


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = vectors.astype(np.float64)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
