"""The training loop: length-bucketed batches, cached text features, schedule, precision."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from orchestrator.training.config import TrainConfig
from orchestrator.training.data import TuneRecord, evenly_spaced, sample_text, split_records
from orchestrator.training.eval import evaluate_heldout
from orchestrator.training.loss import same_text_mask
from orchestrator.training.model import (
    ContrastiveHead,
    RhythmFeatureHead,
    StartingPoint,
    fresh_start,
    in_memory_clamp,
)
from orchestrator.training.rhythm_words import rhythm_word_offer, rhythm_words
from orchestrator.training.views import RoundTrips, pick_two, view_patches
from workers.abc import MASK_ID, PAD_ID, PATCH_LENGTH
from workers.abc.sounding_rhythm import sounding_rhythm_features
from workers.clamp import ClampEncoder, ClampModel
from workers.clamp.encoder import TEXT_MAX_TOKENS
from workers.clamp.hardware import bf16_supported

log = logging.getLogger(__name__)

# Called after every optimiser step with (steps done, that step's loss).
Progress = Callable[[int, float], None]


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
    """Frozen text-tower mean-pooled features, cached: dropout texts repeat a lot."""

    def __init__(
        self,
        model: ClampModel,
        tokenizer: PreTrainedTokenizerBase,
        cache_size: int = 400_000,
        device: str = "cpu",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.cache: dict[str, torch.Tensor] = {}
        self.cache_size = cache_size
        self.device = device

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
            pooled = self.model.text_features(
                tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
            )
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


def lr_factor(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio over the run's progress (0..1)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine


def autocast_plan(
    device_type: str, cpu_bf16: bool, cuda_bf16: bool
) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype, None for fp32; whether the loss needs scaling) for a device type.

    CUDA always trains mixed: bf16 where the GPU has it, else fp16, whose narrow range
    needs a GradScaler. CPU runs fp32 unless bf16 is asked for (the shipped recipe).
    """
    if device_type == "cuda":
        return (torch.bfloat16, False) if cuda_bf16 else (torch.float16, True)
    return (torch.bfloat16 if cpu_bf16 else None), False


def precision_name(dtype: torch.dtype | None) -> str:
    return "fp32" if dtype is None else str(dtype).removeprefix("torch.")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    cfg: TrainConfig,
    records: Sequence[TuneRecord] | None = None,
    *,
    log_every: int = 25,
    start: StartingPoint | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
    roundtrips: RoundTrips | None = None,
) -> tuple[ClampModel, ContrastiveHead, dict[str, Any]]:
    """Train until max_steps or the time budget; returns model, head and a history.

    Without `start` the model is built fresh from cfg (after seeding, so the seed decides
    its initial weights); with it, training continues from that model, whose shape must
    match cfg (see model.like_start). The model is left on `device`, in eval mode.
    `roundtrips` gives a tune's converter round trips (extra views; see views.py).
    """
    if records is None:
        from orchestrator.training.data import load_corpus

        records = load_corpus()
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    train_set, heldout = split_records(records, cfg.split_salt_bytes())
    if len(train_set) < 2:
        raise ValueError(f"need at least 2 training tunes after the split, got {len(train_set)}")
    start = fresh_start(cfg) if start is None else start
    model = start.model.to(device)
    head = ContrastiveHead(cfg.init_temperature).to(device)
    tokenizer = start.tokenizer
    features = TextFeatures(model, tokenizer, device=device)
    views = view_patches(
        train_set,
        cfg.music_views,
        cfg.seed,
        cfg.augment_p,
        cfg.max_patches,
        roundtrips,
        cfg.view_max_patches,
        cfg.augment_ops,
        cfg.input_profile,
    )
    lengths = [len(v[0]) for v in views]  # batches group by the original's length
    multi_view = any(len(v) > 1 for v in views)
    view_rng = random.Random(cfg.seed + 3)
    eval_set = evenly_spaced(heldout, cfg.eval_limit)
    text_rng = random.Random(cfg.seed)
    rhythm = [rhythm_words(r.music_text) if cfg.text_rhythm_words else [] for r in train_set]
    offer = rhythm_word_offer(cfg.text_rhythm_words_p, cfg.seed + 4)
    variants = [
        [
            sample_text(r, text_rng, offer(words), cfg.text_collection)
            for _ in range(cfg.text_variants)
        ]
        for r, words in zip(train_set, rhythm, strict=True)
    ]

    rhythm_head: RhythmFeatureHead | None = None
    rhythm_targets = torch.empty(0)
    if cfg.rhythm_feature_loss_weight > 0:
        # One target per tune, shared by all its views: a converted or respelled copy
        # sounds the same, so it must say the same about its rhythm.
        rhythm_targets = torch.from_numpy(
            np.stack([sounding_rhythm_features(r.music_text) for r in train_set])
        ).to(device)
        rhythm_head = RhythmFeatureHead(model.config.dim, rhythm_targets.shape[1]).to(device)
    auxiliary = list(rhythm_head.parameters()) if rhythm_head is not None else []
    trainable = (
        [p for p in model.parameters() if p.requires_grad] + list(head.parameters()) + auxiliary
    )
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
    device_type = torch.device(device).type
    amp_dtype, needs_scaler = autocast_plan(device_type, cfg.bf16, bf16_supported(device))
    scaler = torch.amp.GradScaler(device_type) if needs_scaler else None
    batch_rng = random.Random(cfg.seed + 1)
    mask_rng = np.random.default_rng(cfg.seed + 2)
    history: dict[str, Any] = {"loss": [], "evals": [], "precision": precision_name(amp_dtype)}
    started = time.monotonic()
    budget = cfg.minutes * 60 if cfg.minutes is not None else math.inf
    if not cfg.max_steps and math.isinf(budget):
        raise ValueError("set max_steps or minutes: the run would never end")
    step = 0
    epoch = 0
    done = False
    running: list[float] = []
    running_rhythm: list[float] = []
    while not done:
        batches = length_batches(lengths, cfg.batch_size, batch_rng)
        if not batches:
            raise ValueError(
                f"{len(train_set)} training tunes make no batch of batch_size {cfg.batch_size}"
            )
        for batch in batches:
            elapsed = time.monotonic() - started
            done_share = step / cfg.max_steps if cfg.max_steps else elapsed / budget
            if (cfg.max_steps and step >= cfg.max_steps) or elapsed >= budget:
                done = True
                break
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * lr_factor(cfg, step, done_share)
            if cfg.text_variants:
                texts = [text_rng.choice(variants[i]) for i in batch]
            else:
                texts = [
                    sample_text(train_set[i], text_rng, offer(rhythm[i]), cfg.text_collection)
                    for i in batch
                ]
            picks = [pick_two(len(views[i]), view_rng) if multi_view else (0, 0) for i in batch]
            ids, mask = collate_patches(
                [views[i][a] for i, (a, _) in zip(batch, picks, strict=True)],
                cfg.patch_mask_prob,
                mask_rng,
            )
            ids, mask = ids.to(device), mask.to(device)
            pair_music = multi_view and cfg.music_loss_weight > 0
            if pair_music:
                other_ids, other_mask = collate_patches(
                    [views[i][b] for i, (_, b) in zip(batch, picks, strict=True)],
                    cfg.patch_mask_prob,
                    mask_rng,
                )
                other_ids, other_mask = other_ids.to(device), other_mask.to(device)
            same = same_text_mask(texts).to(device)
            model.train()
            model.text_enc.eval()  # frozen: no dropout noise on fixed features
            with torch.autocast(
                device_type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None
            ):
                text_vec = model.text_proj(features(texts))
                music_vec = model.encode_music(ids, mask)
                loss = head(text_vec, music_vec, same)
                if pair_music:
                    # Two notations of one tune must find each other among the batch's
                    # other tunes; the text pair alone only ties them through the words.
                    other_vec = model.encode_music(other_ids, other_mask)
                    loss = loss + cfg.music_loss_weight * head(music_vec, other_vec)
                if rhythm_head is not None:
                    target = rhythm_targets[batch]
                    rhythm_loss = rhythm_head(music_vec, target)
                    if pair_music:
                        rhythm_loss = (rhythm_loss + rhythm_head(other_vec, target)) / 2
                    loss = loss + cfg.rhythm_feature_loss_weight * rhythm_loss
                    running_rhythm.append(rhythm_loss.item())
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                scaler.step(optimizer)
                scaler.update()
            step += 1
            value = loss.item()
            running.append(value)
            if progress is not None:
                progress(step, value)
            if step % log_every == 0:
                mean = sum(running) / len(running)
                entry = {"step": step, "loss": mean, "s": round(elapsed, 1)}
                if running_rhythm:
                    # Unweighted, so runs with different weights compare.
                    entry["rhythm_feature_mse"] = sum(running_rhythm) / len(running_rhythm)
                history["loss"].append(entry)
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
                running_rhythm = []
            if cfg.eval_every and step % cfg.eval_every == 0 and len(eval_set) >= 2:
                encoder = ClampEncoder(
                    in_memory_clamp(model, tokenizer, cfg.name, cfg.input_profile), device=device
                )
                metrics = evaluate_heldout(encoder, eval_set)
                history["evals"].append({"step": step, **metrics["text_to_music"]})
                log.info("step %d held-out %s", step, metrics["text_to_music"])
        epoch += 1
    cut_short = cfg.max_steps is not None and step < cfg.max_steps
    if cut_short:
        # The schedule was laid out for max_steps: the run ended before its learning rate decayed.
        log.warning(
            "stopped at the %.0f min time budget after %d of %d steps; give the run more "
            "minutes (--minutes) or fewer steps",
            cfg.minutes,
            step,
            cfg.max_steps,
        )
    history.update(
        stopped_by_time_budget=cut_short,
        steps=step,
        epochs=epoch,
        seconds=round(time.monotonic() - started, 1),
        temperature=head.temperature(),
        train_tunes=len(train_set),
        heldout_tunes=len(heldout),
        music_views=sum(len(v) for v in views),
    )
    model.eval()
    return model, head, history
