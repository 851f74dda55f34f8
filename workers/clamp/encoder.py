"""Batched, normalised CLaMP inference over patch arrays and texts."""

from __future__ import annotations

import contextlib
import copy
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from workers.abc import encode_patches
from workers.abc.profiles import input_profile
from workers.clamp.configuration_clamp import PATCH_FEATURES, PATCH_LENGTH
from workers.clamp.hardware import autocast_dtype, bf16_supported, resolve_device
from workers.clamp.loading import LoadedClamp, ModelManifest
from workers.clamp.modeling_clamp import masked_mean

__all__ = ["ClampEncoder", "bf16_supported", "plan_batches", "resolve_device"]

Precision = Literal["exact", "fast"]
LongPiece = Literal["truncate", "windows"]
TEXT_MAX_TOKENS = 128


# A batch stops taking pieces shorter than this share of its longest one, so no piece is
# padded by more than ~10%. On WikiMT in 256-piece encode calls with a 4,096 budget this
# cuts padding from 22% to 4.5% of the patches run; a pure budget rule lets one batch span
# lengths 189..90 when a call has few pieces. Only the sparse long tail ends up in small
# batches, and those pieces are long, so their matmuls stay large.
_LENGTH_TOLERANCE = 0.9


def plan_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Group indices longest first into length buckets whose padded size fits budget.

    Sorting keeps neighbours of similar length together, so padding stays small; a piece
    longer than the whole budget still gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        if current:
            # Descending order: a batch's first index is its longest, hence its padded length.
            longest = lengths[current[0]]
            full = (len(current) + 1) * longest > budget
            too_short = lengths[index] < _LENGTH_TOLERANCE * longest
            if full or too_short:
                batches.append(current)
                current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


@dataclass
class EncodeStats:
    """What the music path did: calls, pieces, and model forwards (patch-budget batches)."""

    calls: int = 0
    pieces: int = 0
    forwards: int = 0


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
        long_piece: LongPiece = "truncate",
        max_windows: int = 32,
    ) -> None:
        if precision not in ("exact", "fast"):
            raise ValueError(f"precision must be 'exact' or 'fast', got {precision!r}")
        if long_piece not in ("truncate", "windows"):
            raise ValueError(f"long_piece must be 'truncate' or 'windows', got {long_piece!r}")
        if patch_budget < 1:
            raise ValueError("patch_budget must be positive")
        self.loaded = loaded
        self.device = resolve_device(device)
        self.model = loaded.model.eval().to(self.device)
        self.tokenizer = loaded.tokenizer
        self.patch_budget = patch_budget
        self.precision: Precision = precision
        self.long_piece: LongPiece = long_piece
        self.max_windows = max_windows
        # Fast bf16 music path: a bf16 copy of the music BERT, cast once, instead of
        # autocast re-casting activations around every op (~6% of the time in copies) and
        # keeping fp32 activations between them. The patch embedding, pooling and
        # projection stay fp32; against the reference this gives cosine ~0.99999, the
        # same as autocast. fp16 (CUDA without bf16) keeps autocast: its narrow range
        # needs fp32 residuals.
        self._music_bert = self.model.music_enc.enc
        self._music_dtype = torch.float32
        if precision == "fast" and autocast_dtype(self.device) == torch.bfloat16:
            self._music_dtype = torch.bfloat16
            self._music_bert = copy.deepcopy(self._music_bert).to(torch.bfloat16).eval()
        self.text_batch_size = text_batch_size
        self.text_cache_size = text_cache_size
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()
        # Fast tokenizers raise "Already borrowed" when one instance is used from two threads.
        self._tokenizer_lock = threading.Lock()
        self.stats = EncodeStats()
        self._prepare_music = input_profile(loaded.manifest.input_profile)

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
        return piece

    def _windows(self, piece: np.ndarray) -> list[np.ndarray]:
        """The sequences one piece is encoded as, under the long_piece policy.

        `truncate` keeps the first max_patches rows, as the reference does. `windows` cuts
        the piece into consecutive, non-overlapping windows of max_patches rows; the last
        one may be shorter. The piece's single end patch stays where encode_patches put it,
        at the end of the last window: no window gets an extra one, because the model only
        ever saw the end patch at a piece's true end, and a truncated training piece has
        none, which is exactly what the earlier windows look like. So the first window is
        the `truncate` input, and a piece that fits is encoded identically by both modes.
        """
        limit = self.max_patches
        if self.long_piece == "truncate" or len(piece) <= limit:
            return [piece[:limit]]
        return [piece[start : start + limit] for start in range(0, len(piece), limit)]

    @property
    def patch_limit(self) -> int:
        """How many patches of a piece callers should produce before encoding.

        Truncation keeps max_patches (the reference); windows keep up to max_windows of
        them, so a 20,000-bar file still costs bounded time and memory.
        """
        max_patches = self.loaded.manifest.max_patches
        return max_patches if self.long_piece == "truncate" else max_patches * self.max_windows

    def music_patches(self, music_text: str, max_patches: int | None = None) -> np.ndarray:
        """One piece's patches as this model reads them: its manifest's input profile
        applied to the encoder music text, cut to `max_patches` (default patch_limit)."""
        limit = self.patch_limit if max_patches is None else max_patches
        return encode_patches(self._prepare_music(music_text), limit)

    def encode_music(self, pieces: Sequence[np.ndarray]) -> np.ndarray:
        """`[n, 64]` class-id arrays -> `[N, D]` unit vectors, in input order.

        Pieces longer than max_patches keep their start (`long_piece="truncate"`, the
        reference), or are encoded window by window and averaged (`"windows"`).
        """
        windows: list[np.ndarray] = []
        owner: list[int] = []
        for index, piece in enumerate(pieces):
            for window in self._windows(self._check_piece(index, piece)):
                windows.append(window)
                owner.append(index)
        raw = self._encode_sequences(windows)
        self.stats.calls += 1
        self.stats.pieces += len(pieces)
        if len(windows) != len(pieces):
            # Length-weighted mean of the unnormalised window vectors (CLaMP 2's rule): the
            # projection is affine with weights summing to 1, so this equals projecting the
            # length-weighted mean of the pooled hidden states.
            weights = np.array([len(w) for w in windows], dtype=np.float64)
            summed = np.zeros((len(pieces), raw.shape[1]), dtype=np.float64)
            np.add.at(summed, np.array(owner), raw * weights[:, None])
            totals = np.bincount(np.array(owner), weights=weights, minlength=len(pieces))
            raw = (summed / totals[:, None]).astype(np.float32)
        return self._finish(torch.from_numpy(raw))

    def _encode_sequences(self, sequences: list[np.ndarray]) -> np.ndarray:
        """Unnormalised float32 vectors of patch sequences no longer than max_patches."""
        out = np.empty((len(sequences), self.dim), dtype=np.float32)
        lengths = [len(p) for p in sequences]
        # With a bf16 copy of the BERT the precision is in the weights; no autocast needed.
        context = (
            self._inference() if self._music_dtype == torch.float32 else torch.inference_mode()
        )
        with context:
            for batch in plan_batches(lengths, self.patch_budget):
                self.stats.forwards += 1
                longest = lengths[batch[0]]
                # All-zero padding patches under mask 0: attention and pooling ignore them.
                ids = np.zeros((len(batch), longest, PATCH_LENGTH), dtype=np.uint8)
                mask = np.zeros((len(batch), longest), dtype=np.int64)
                for row, index in enumerate(batch):
                    ids[row, : lengths[index]] = sequences[index]
                    mask[row, : lengths[index]] = 1
                vectors = self._music_forward(
                    torch.from_numpy(ids).to(self.device),
                    torch.from_numpy(mask).to(self.device),
                )
                out[batch] = vectors.float().cpu().numpy()
        return out

    def _music_forward(self, patch_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ClampModel.encode_music, with the BERT in this encoder's music dtype."""
        model = self.model
        embeds = model.music_enc.embed_patches(patch_ids).to(self._music_dtype)
        hidden = self._music_bert(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        return model.music_proj(masked_mean(hidden.float(), mask))

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
