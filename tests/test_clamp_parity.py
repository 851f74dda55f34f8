"""Parity of ClampEncoder with the reference computation (tests/reference_clamp.py).

The CLaMP-S-size checkpoint is written with init_std=0.02 (BERT's own initializer range),
not the demo default of 0.5: at 0.5 the attention logits are in the hundreds and the
random network is chaotic, so reordering one fp32 sum (one-hot matmul vs. gather-sum,
~1e-7 apart) already moves the vectors by ~4e-3. A trained model is not like that, and no
fp32 implementation could meet 1e-4 against another there, so the parity bound would test
the random weights rather than our code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import wikimt_entries
from tests.reference_clamp import ReferenceClamp
from tests.support.random_checkpoint import write_random_checkpoint
from workers.clamp import CheckpointError, ClampEncoder, load_clamp

PARITY_STD = 0.02
EXACT_MIN_COSINE = 0.99999
EXACT_MAX_ABS = 1e-4
FAST_MIN_COSINE = 0.9999
CLAMP_S = {"hidden_size": 768, "num_layers": 6, "num_heads": 12, "intermediate_size": 3072}
TEXTS = [
    "A lively Irish reel in D major.",
    "A slow jazz ballad with lush seventh chords and a melancholic melody.",
    "Children's song",
    "An eighteenth-century minuet " * 40,  # past the 128-token truncation
]


def wikimt_pieces(max_patches: int) -> list[np.ndarray]:
    from bench.encode import wikimt_patches

    return wikimt_patches(max_patches)


def spread_by_length(pieces: list[np.ndarray], count: int) -> list[np.ndarray]:
    """`count` pieces evenly spaced in length order: shortest, longest and all between."""
    order = sorted(range(len(pieces)), key=lambda i: (len(pieces[i]), i))
    picks = np.linspace(0, len(order) - 1, count).round().astype(int)
    return [pieces[order[i]] for i in picks]


def check_close(ours: np.ndarray, reference: np.ndarray, min_cosine: float, max_abs: float):
    assert ours.shape == reference.shape
    assert ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cosine = (ours.astype(np.float64) * reference).sum(axis=1)
    assert cosine.min() >= min_cosine, f"min cosine {cosine.min():.7f} at {cosine.argmin()}"
    diff = np.abs(ours - reference).max()
    assert diff <= max_abs, f"max abs diff {diff:.2e}"


@pytest.fixture(scope="session")
def clamp_s_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CLaMP-S music side (768, 6 layers, 512 patches), safetensors; cheap BERT text side."""
    return write_random_checkpoint(
        tmp_path_factory.mktemp("clamp-s") / "clamp-s-512",
        **CLAMP_S,
        max_length=512,
        text="tiny-bert",
        init_std=PARITY_STD,
    )


@pytest.fixture(scope="session")
def published_1024_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The other published variant's shape: 1024 patches, DistilRoBERTa text side, a .bin
    with the stale `position_ids` buffers older transformers saved, and no manifest."""
    out = write_random_checkpoint(
        tmp_path_factory.mktemp("clamp-1024") / "clamp-small-1024",
        max_length=1024,
        text="distilroberta",
        weights_format="bin",
        init_std=PARITY_STD,
        seed=3,
    )
    weights = out / "pytorch_model.bin"
    state = torch.load(weights, weights_only=True)
    state["music_enc.enc.embeddings.position_ids"] = torch.arange(1024).unsqueeze(0)
    state["text_enc.embeddings.position_ids"] = torch.arange(514).unsqueeze(0)
    torch.save(state, weights)
    (out / "manifest.json").unlink()
    return out


@pytest.fixture(scope="session")
def clamp_s_reference(clamp_s_dir: Path) -> ReferenceClamp:
    return ReferenceClamp(clamp_s_dir)


@pytest.fixture(scope="session")
def clamp_s_loaded(clamp_s_dir: Path):
    return load_clamp(clamp_s_dir)


@pytest.fixture(scope="session")
def wikimt_512() -> list[np.ndarray]:
    return wikimt_pieces(512)


# --- music parity ----------------------------------------------------------------------


def test_music_parity_quick(clamp_s_loaded, clamp_s_reference, wikimt_512) -> None:
    pieces = spread_by_length(wikimt_512, 12)
    reference = clamp_s_reference.encode_music(pieces)
    exact = ClampEncoder(clamp_s_loaded, precision="exact", patch_budget=1024)
    check_close(exact.encode_music(pieces), reference, EXACT_MIN_COSINE, EXACT_MAX_ABS)
    fast = ClampEncoder(clamp_s_loaded, precision="fast", patch_budget=1024)
    check_close(fast.encode_music(pieces), reference, FAST_MIN_COSINE, 1.0)


@pytest.fixture(scope="session")
def wikimt_subset_reference(clamp_s_reference, wikimt_512):
    # 100 pieces across the length range; bench/encode.py runs all 1,010.
    pieces = spread_by_length(wikimt_512, 100)
    return pieces, clamp_s_reference.encode_music(pieces)


@pytest.mark.slow
@pytest.mark.parametrize("budget", [512, 4096])
def test_music_parity_exact_wikimt(clamp_s_loaded, wikimt_subset_reference, budget) -> None:
    pieces, reference = wikimt_subset_reference
    encoder = ClampEncoder(clamp_s_loaded, precision="exact", patch_budget=budget)
    check_close(encoder.encode_music(pieces), reference, EXACT_MIN_COSINE, EXACT_MAX_ABS)


@pytest.mark.slow
def test_music_parity_fast_wikimt(clamp_s_loaded, wikimt_subset_reference) -> None:
    pieces, reference = wikimt_subset_reference
    encoder = ClampEncoder(clamp_s_loaded, precision="fast", patch_budget=4096)
    check_close(encoder.encode_music(pieces), reference, FAST_MIN_COSINE, 1.0)


def test_text_parity(clamp_s_loaded, clamp_s_reference) -> None:
    texts = [*TEXTS, *(e["text"] for e in wikimt_entries()[:12])]
    encoder = ClampEncoder(clamp_s_loaded, precision="exact", text_cache_size=0)
    reference = clamp_s_reference.encode_texts(texts)
    check_close(encoder.encode_texts(texts), reference, EXACT_MIN_COSINE, EXACT_MAX_ABS)
    fast = ClampEncoder(clamp_s_loaded, precision="fast", text_cache_size=0)
    check_close(fast.encode_texts(texts), reference, FAST_MIN_COSINE, 1.0)


# --- loading ---------------------------------------------------------------------------


def test_safetensors_and_bin_give_the_same_vectors(
    tmp_path: Path, clamp_s_dir: Path, clamp_s_loaded, wikimt_512
) -> None:
    from safetensors.torch import load_file

    as_bin = tmp_path / "as-bin"
    as_bin.mkdir()
    for item in clamp_s_dir.iterdir():
        if item.name not in ("model.safetensors", "manifest.json"):
            (as_bin / item.name).write_bytes(item.read_bytes())
    state = load_file(str(clamp_s_dir / "model.safetensors"))
    # Like a checkpoint saved by the reference's older transformers.
    state["music_enc.enc.embeddings.position_ids"] = torch.arange(512).unsqueeze(0)
    torch.save(state, as_bin / "pytorch_model.bin")
    loaded = load_clamp(as_bin, device="cpu")
    assert loaded.manifest.max_patches == 512
    pieces = spread_by_length(wikimt_512, 6)
    a = ClampEncoder(clamp_s_loaded).encode_music(pieces)
    b = ClampEncoder(loaded).encode_music(pieces)
    assert np.array_equal(a, b)


def test_published_1024_variant(published_1024_dir: Path) -> None:
    config = json.loads((published_1024_dir / "config.json").read_text())
    assert "text_config" not in config  # the published default text tower: DistilRoBERTa
    loaded = load_clamp(published_1024_dir)
    assert loaded.manifest.max_patches == 1024
    assert loaded.model.text_enc.config.model_type == "roberta"
    reference = ReferenceClamp(published_1024_dir)
    rng = np.random.default_rng(4)
    # Up to and past 1024 patches: positions 512..1023 must come from the bigger table.
    pieces = [rng.integers(0, 98, size=(n, 64), dtype=np.uint8) for n in (3, 600, 1024, 1100)]
    encoder = ClampEncoder(loaded, patch_budget=2048)
    check_close(
        encoder.encode_music(pieces),
        reference.encode_music(pieces),
        EXACT_MIN_COSINE,
        EXACT_MAX_ABS,
    )
    check_close(
        encoder.encode_texts(TEXTS),
        reference.encode_texts(TEXTS),
        EXACT_MIN_COSINE,
        EXACT_MAX_ABS,
    )


def test_wrong_directory_names_the_keys(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import BertConfig, BertModel

    # A plain BERT checkpoint (what pointing at the bare text encoder would give).
    wrong = tmp_path / "plain-bert"
    bert = BertModel(
        BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    )
    bert.save_pretrained(wrong)
    with pytest.raises(CheckpointError) as info:
        load_clamp(wrong, tokenizer_dir=tiny_model_dir)
    message = str(info.value)
    assert str(wrong) in message
    assert "no weights at all under text_enc., text_proj., music_enc.patch_embedding." in message
    assert "missing keys ['music_enc.enc.embeddings" in message
    assert "unexpected keys ['embeddings." in message


# --- long pieces -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def short_window_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(
        tmp_path_factory.mktemp("windows") / "max16", max_length=16, init_std=PARITY_STD
    )


def test_long_piece_windows(short_window_dir: Path) -> None:
    loaded = load_clamp(short_window_dir)
    reference = ReferenceClamp(short_window_dir)
    rng = np.random.default_rng(7)
    lengths = (40, 5, 16, 17, 32)
    pieces = [rng.integers(0, 98, size=(n, 64), dtype=np.uint8) for n in lengths]
    windowed = ClampEncoder(loaded, long_piece="windows", patch_budget=64)
    truncated = ClampEncoder(loaded, patch_budget=64)
    got = windowed.encode_music(pieces)
    cut = truncated.encode_music(pieces)

    for piece, vector, first in zip(pieces, got, cut, strict=True):
        # Consecutive windows of 16, the last one shorter, weighted by their lengths.
        windows = [piece[s : s + 16] for s in range(0, len(piece), 16)]
        raw = sum(len(w) * reference.music_vector(w).astype(np.float64) for w in windows)
        expected = raw / np.linalg.norm(raw)
        assert np.abs(vector - expected).max() <= EXACT_MAX_ABS
        # Truncate (the default) is the reference's cut: only the first window counts.
        assert np.abs(first - reference.encode_music([piece])[0]).max() <= EXACT_MAX_ABS
        if len(piece) <= 16:
            # Same vector up to batch composition (other windows share its forward pass).
            assert np.abs(vector - first).max() <= 1e-6
        else:
            assert float(vector @ first) < 0.9999

    # Batched across pieces and in any order, windows land back on their own piece.
    order = [3, 0, 4, 1, 2]
    shuffled = windowed.encode_music([pieces[i] for i in order])
    assert np.abs(shuffled - got[order]).max() <= 1e-5


def test_long_piece_option_is_checked(short_window_dir: Path) -> None:
    with pytest.raises(ValueError, match="long_piece"):
        ClampEncoder(load_clamp(short_window_dir), long_piece="average")  # type: ignore[arg-type]


# --- batching --------------------------------------------------------------------------


def test_plan_batches_buckets_by_length() -> None:
    from workers.clamp.encoder import plan_batches

    # Few pieces per call (the pipeline's encode tasks): a pure budget rule would pad the
    # 40 short pieces up to 180 patches in the long pieces' batch.
    lengths = [180, 175, 170, 160, *([40] * 40), *([38] * 10)]
    batches = plan_batches(lengths, budget=4096)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    padded = sum(len(b) * lengths[b[0]] for b in batches)
    assert 1 - sum(lengths) / padded < 0.05
    for batch in batches:
        assert len(batch) == 1 or len(batch) * lengths[batch[0]] <= 4096
