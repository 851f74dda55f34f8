"""Batched, normalised CLaMP inference over patch arrays and texts."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from workers.clamp.configuration_clamp import PATCH_FEATURES, PATCH_LENGTH
from workers.clamp.hardware import autocast_dtype, bf16_supported, resolve_device
from workers.clamp.loading import LoadedClamp, ModelManifest

__all__ = ["ClampEncoder", "bf16_supported", "plan_batches", "resolve_device"]

Precision = Literal["exact", "fast"]
TEXT_MAX_TOKENS = 128


def plan_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Group indices longest first so each batch's padded size (count x longest) fits budget.

    Sorting keeps neighbours of similar length together, so padding stays small; a piece
    longer than the whole budget still gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Descending order: the first index of a batch is its longest, hence its padded length.
        if current and (len(current) + 1) * lengths[current[0]] > budget:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


class ClampEncoder:
    """Unit-length float32 vectors for music patches and texts, in input order."""

    def __init__(
        self,
        loaded: LoadedClamp,
        *,
        patch_budget: int = 4096,
        precision: Precision = "exact",
        device: str = "cpu",
        text_cache_size: int = 1024,
        text_batch_size: int = 64,
    ) -> None:
        if precision not in ("exact", "fast"):
            raise ValueError(f"precision must be 'exact' or 'fast', got {precision!r}")
        if patch_budget < 1:
            raise ValueError("patch_budget must be positive")
        self.loaded = loaded
        self.device = resolve_device(device)
        self.model = loaded.model.eval().to(self.device)
        self.tokenizer = loaded.tokenizer
        self.patch_budget = patch_budget
        self.precision: Precision = precision
        self.text_batch_size = text_batch_size
        self.text_cache_size = text_cache_size
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()
        # Fast tokenizers raise "Already borrowed" when one instance is used from two threads.
        self._tokenizer_lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self.loaded.config.dim

    @property
    def max_patches(self) -> int:
        return self.loaded.config.max_length

    @property
    def manifest(self) -> ModelManifest:
        return self.loaded.manifest

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        with torch.inference_mode():
            if self.precision == "fast":
                kind = torch.device(self.device).type
                with torch.autocast(kind, dtype=autocast_dtype(self.device)):
                    yield
            else:
                yield

    def _finish(self, vectors: torch.Tensor) -> np.ndarray:
        # Normalise in fp32: bf16 norms would leave vectors visibly off unit length.
        return F.normalize(vectors.float(), dim=-1).cpu().numpy().astype(np.float32, copy=False)

    def _check_piece(self, index: int, piece: np.ndarray) -> np.ndarray:
        piece = np.asarray(piece)
        if piece.ndim != 2 or piece.shape[1] != PATCH_LENGTH or piece.shape[0] == 0:
            raise ValueError(
                f"piece {index}: expected a non-empty [n, {PATCH_LENGTH}] array, "
                f"got shape {piece.shape}"
            )
        if int(piece.max()) >= PATCH_FEATURES or int(piece.min()) < 0:
            raise ValueError(f"piece {index}: class ids must lie in 0..{PATCH_FEATURES - 1}")
        return piece[: self.max_patches]

    def encode_music(self, pieces: Sequence[np.ndarray]) -> np.ndarray:
        """`[n, 64]` class-id arrays -> `[N, D]`; pieces past max_patches keep their start."""
        pieces = [self._check_piece(i, p) for i, p in enumerate(pieces)]
        out = np.empty((len(pieces), self.dim), dtype=np.float32)
        lengths = [len(p) for p in pieces]
        with self._inference():
            for batch in plan_batches(lengths, self.patch_budget):
                longest = lengths[batch[0]]
                # All-zero padding patches under mask 0: attention and pooling ignore them.
                ids = np.zeros((len(batch), longest, PATCH_LENGTH), dtype=np.uint8)
                mask = np.zeros((len(batch), longest), dtype=np.int64)
                for row, index in enumerate(batch):
                    ids[row, : lengths[index]] = pieces[index]
                    mask[row, : lengths[index]] = 1
                vectors = self.model.encode_music(
                    torch.from_numpy(ids).to(self.device),
                    torch.from_numpy(mask).to(self.device),
                )
                out[batch] = self._finish(vectors)
        return out

    def _cache_get(self, text: str) -> np.ndarray | None:
        with self._cache_lock:
            vector = self._text_cache.get(text)
            if vector is not None:
                self._text_cache.move_to_end(text)
            return vector

    def _cache_put(self, text: str, vector: np.ndarray) -> None:
        if self.text_cache_size <= 0:
            return
        vector = vector.copy()
        vector.setflags(write=False)
        with self._cache_lock:
            self._text_cache[text] = vector
            self._text_cache.move_to_end(text)
            while len(self._text_cache) > self.text_cache_size:
                self._text_cache.popitem(last=False)

    def _encode_text_batch(self, texts: list[str]) -> np.ndarray:
        with self._tokenizer_lock:
            tokens = self.tokenizer(
                texts,
                truncation=True,
                max_length=TEXT_MAX_TOKENS,
                padding=True,
                return_tensors="pt",
            )
        with self._inference():
            vectors = self.model.encode_text(
                tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
            )
        return self._finish(vectors)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> `[N, D]`, truncated at 128 tokens; repeated texts come from an LRU cache."""
        found: dict[str, np.ndarray] = {}
        missing: list[str] = []
        seen: set[str] = set()
        for text in texts:
            if text in seen:
                continue
            seen.add(text)
            cached = self._cache_get(text)
            if cached is None:
                missing.append(text)
            else:
                found[text] = cached
        # Similar lengths together keep token padding small.
        missing.sort(key=len)
        for start in range(0, len(missing), self.text_batch_size):
            chunk = missing[start : start + self.text_batch_size]
            for text, vector in zip(chunk, self._encode_text_batch(chunk), strict=True):
                found[text] = vector
                self._cache_put(text, vector)
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        return np.stack([found[text] for text in texts]).astype(np.float32, copy=False)

    def encode_text(self, text: str) -> np.ndarray:
        return self.encode_texts([text])[0]
