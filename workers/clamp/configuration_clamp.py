"""Configuration of a CLaMP checkpoint: the music BERT config plus the text encoder's."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoConfig, BertConfig, PretrainedConfig

PATCH_LENGTH = 64
PATCH_FEATURES = 98

# The published checkpoints carry no description of their text encoder: the reference code
# hard-codes `AutoModel.from_pretrained("distilroberta-base")`. These are that model's
# config values, so a published directory loads without any network access.
DISTILROBERTA_BASE: dict[str, Any] = {
    "model_type": "roberta",
    "vocab_size": 50265,
    "hidden_size": 768,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}


@dataclass
class ClampConfig:
    """The keys of a CLaMP `config.json`, plus our optional `text_config` extension."""

    hidden_size: int = 768
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    max_length: int = 512
    vocab_size: int = 1
    type_vocab_size: int = 2
    pad_token_id: int = 0
    initializer_range: float = 0.02
    # None means "the published default" (DistilRoBERTa-base); written to config.json only
    # when set, so published-style directories stay byte-compatible with the reference.
    text_config: dict[str, Any] | None = None
    # Unknown keys of config.json (architectures, transformers_version, ...) are kept so
    # that to_dict() round-trips the file.
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClampConfig:
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known}
        config = cls(**kwargs, extra=extra)
        if "max_length" not in data:
            # Older configs omit max_length; the reference uses the position table size.
            config.max_length = config.max_position_embeddings
        config.validate()
        return config

    @classmethod
    def from_dir(cls, path: str | Path) -> ClampConfig:
        config_path = Path(path) / "config.json"
        with config_path.open(encoding="utf-8") as fh:
            data = json.load(fh)
        if not isinstance(data, dict):
            raise ValueError(f"{config_path}: expected a JSON object")
        return cls.from_dict(data)

    def validate(self) -> None:
        if self.max_length > self.max_position_embeddings:
            raise ValueError(
                f"max_length {self.max_length} exceeds max_position_embeddings "
                f"{self.max_position_embeddings}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.text_config is not None and "model_type" not in self.text_config:
            raise ValueError("text_config needs a model_type (e.g. 'roberta' or 'bert')")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        if data["text_config"] is None:
            del data["text_config"]
        return {**extra, **data}

    def save(self, path: str | Path) -> Path:
        out = Path(path) / "config.json"
        out.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return out

    @property
    def dim(self) -> int:
        """Length of the vectors the model produces (both projections end in hidden_size)."""
        return self.hidden_size

    def music_bert_config(self) -> BertConfig:
        return BertConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            hidden_act=self.hidden_act,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attention_probs_dropout_prob=self.attention_probs_dropout_prob,
            max_position_embeddings=self.max_position_embeddings,
            type_vocab_size=self.type_vocab_size,
            initializer_range=self.initializer_range,
            layer_norm_eps=self.layer_norm_eps,
            pad_token_id=self.pad_token_id,
        )

    def text_config_dict(self) -> dict[str, Any]:
        return dict(self.text_config if self.text_config is not None else DISTILROBERTA_BASE)

    def text_model_config(self) -> PretrainedConfig:
        kwargs = self.text_config_dict()
        model_type = kwargs.pop("model_type")
        # Keys a saved transformers config carries but for_model() must not receive.
        for key in ("architectures", "transformers_version", "_name_or_path"):
            kwargs.pop(key, None)
        return AutoConfig.for_model(model_type, **kwargs)
