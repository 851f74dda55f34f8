"""CLaMP model package: strict loading, gather-sum patch embedding, batching equivalence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.support.random_checkpoint import write_random_checkpoint
from workers.clamp import (
    CheckpointError,
    ClampConfig,
    ClampEncoder,
    ClampModel,
    load_clamp,
)
from workers.clamp.encoder import plan_batches

TEXTS = [
    "A lively Irish reel in D major.",
    "A slow jazz ballad with lush seventh chords and a melancholic melody.",
    "Children's song",
    "",
    "An eighteenth-century minuet " * 40,  # far past the 128-token truncation
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def encoder(tiny_dir: Path) -> ClampEncoder:
    return ClampEncoder(load_clamp(tiny_dir), patch_budget=300)


def random_pieces(count: int, seed: int, max_len: int = 140) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    pieces = []
    for _ in range(count):
        n = int(rng.integers(1, max_len))
        piece = rng.integers(0, 98, size=(n, 64), dtype=np.uint8)
        # Realistic shape: text, then one end-of-patch id, then class-0 padding.
        lengths = rng.integers(0, 65, size=n)
        for row, length in enumerate(lengths):
            if length < 64:
                piece[row, length] = 97
                piece[row, length + 1 :] = 0
        pieces.append(piece)
    return pieces


def copy_checkpoint(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for item in src.iterdir():
        (dst / item.name).write_bytes(item.read_bytes())
    return dst


def resave_weights(model_dir: Path, edit: dict[str, torch.Tensor | None]) -> None:
    from safetensors.torch import load_file, save_file

    path = model_dir / "model.safetensors"
    state = load_file(str(path))
    for key, value in edit.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    save_file(state, str(path))
    (model_dir / "manifest.json").unlink()  # the weights changed, so would its hash


# --- loading ---------------------------------------------------------------------------


@pytest.mark.parametrize("weights_format", ["safetensors", "bin"])
def test_load_round_trip(tmp_path: Path, weights_format: str) -> None:
    out = write_random_checkpoint(tmp_path / "m", weights_format=weights_format, seed=3)
    expected = "model.safetensors" if weights_format == "safetensors" else "pytorch_model.bin"
    assert (out / expected).is_file()
    loaded = load_clamp(out)
    assert not loaded.model.training
    assert loaded.manifest.dim == loaded.config.hidden_size == 64
    assert loaded.manifest.max_patches == 128
    assert loaded.manifest.name == "random-clamp"
    assert loaded.manifest.version == loaded.manifest.weights_sha256[:16]
    # Every saved tensor arrived in the model unchanged.
    if weights_format == "safetensors":
        from safetensors.torch import load_file

        saved = load_file(str(out / expected))
    else:
        saved = torch.load(out / expected, weights_only=True)
    state = loaded.model.state_dict()
    assert saved.keys() == state.keys()
    for key, value in saved.items():
        assert torch.equal(state[key], value), key


def test_published_key_layout(tiny_dir: Path) -> None:
    from safetensors.torch import load_file

    keys = load_file(str(tiny_dir / "model.safetensors")).keys()
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == {"text_enc", "text_proj", "music_enc", "music_proj"}
    assert "music_enc.patch_embedding.weight" in keys
    assert "music_enc.enc.embeddings.word_embeddings.weight" in keys
    assert "music_enc.enc.pooler.dense.weight" in keys
    assert "music_enc.enc.encoder.layer.1.output.LayerNorm.bias" in keys


def test_derived_manifest_without_manifest_file(tmp_path: Path, tiny_dir: Path) -> None:
    model_dir = copy_checkpoint(tiny_dir, tmp_path / "no-manifest")
    (model_dir / "manifest.json").unlink()
    manifest = load_clamp(model_dir).manifest
    assert manifest.name == "no-manifest"
    assert manifest.kind == "clamp-v1"
    assert len(manifest.version) == 16
    assert manifest.version == manifest.weights_sha256[:16]


def test_position_ids_keys_are_tolerated(tmp_path: Path, tiny_dir: Path) -> None:
    model_dir = copy_checkpoint(tiny_dir, tmp_path / "old")
    resave_weights(
        model_dir,
        {
            "music_enc.enc.embeddings.position_ids": torch.arange(128).unsqueeze(0),
            "text_enc.embeddings.position_ids": torch.arange(512).unsqueeze(0),
        },
    )
    load_clamp(model_dir)


def test_missing_key_is_named(tmp_path: Path, tiny_dir: Path) -> None:
    model_dir = copy_checkpoint(tiny_dir, tmp_path / "missing")
    resave_weights(model_dir, {"music_proj.bias": None})
    with pytest.raises(CheckpointError, match=r"missing keys \['music_proj\.bias'\]") as info:
        load_clamp(model_dir)
    assert str(model_dir) in str(info.value)


def test_unexpected_key_is_named(tmp_path: Path, tiny_dir: Path) -> None:
    model_dir = copy_checkpoint(tiny_dir, tmp_path / "unexpected")
    resave_weights(model_dir, {"music_enc.extra_head.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"unexpected keys \['music_enc\.extra_head"):
        load_clamp(model_dir)


def test_shape_mismatch_is_a_checkpoint_error(tmp_path: Path, tiny_dir: Path) -> None:
    model_dir = copy_checkpoint(tiny_dir, tmp_path / "shape")
    resave_weights(model_dir, {"music_proj.bias": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"music_proj\.bias"):
        load_clamp(model_dir)


def test_missing_dir_config_weights_tokenizer(tmp_path: Path, tiny_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_clamp(tmp_path / "nowhere")
    model_dir = copy_checkpoint(tiny_dir, tmp_path / "broken")
    (model_dir / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_clamp(model_dir)
    model_dir = copy_checkpoint(tiny_dir, tmp_path / "no-weights")
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        load_clamp(model_dir)
    bare = write_random_checkpoint(tmp_path / "bare", with_tokenizer=False)
    with pytest.raises(CheckpointError, match="no tokenizer"):
        load_clamp(bare)
    # A separate tokenizer directory makes it loadable.
    load_clamp(bare, tokenizer_dir=tiny_dir)


def test_manifest_contradicting_weights_is_refused(tmp_path: Path, tiny_dir: Path) -> None:
    model_dir = copy_checkpoint(tiny_dir, tmp_path / "stale-manifest")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["weights_sha256"] = "0" * 64
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="weights_sha256"):
        load_clamp(model_dir)


def test_config_round_trip_and_published_default(tiny_dir: Path) -> None:
    config = ClampConfig.from_dir(tiny_dir)
    assert ClampConfig.from_dict(config.to_dict()) == config
    published = ClampConfig.from_dict(
        {"hidden_size": 768, "max_position_embeddings": 512, "max_length": 512}
    )
    assert "text_config" not in published.to_dict()
    text = published.text_model_config()
    assert text.model_type == "roberta"
    assert (text.hidden_size, text.num_hidden_layers, text.vocab_size) == (768, 6, 50265)
    assert (text.max_position_embeddings, text.pad_token_id) == (514, 1)


# --- model -----------------------------------------------------------------------------


def test_gather_sum_equals_one_hot_matmul() -> None:
    config = ClampConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=16, max_length=16,
        text_config={"model_type": "bert", "vocab_size": 10, "hidden_size": 8,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 8},
    )  # fmt: skip
    torch.manual_seed(0)
    model = ClampModel(config)
    layer = model.music_enc.patch_embedding
    with torch.no_grad():
        # Large distinct values everywhere, so skipping any row (class 0 included) shows.
        layer.weight.normal_(0, 1.0)
        layer.bias.normal_(0, 1.0)
    ids = torch.randint(0, 98, (3, 7, 64))
    ids[0, 0] = 0  # an all-padding patch still sums the 64 class-0 rows
    ids[1, 2, 10:] = 0
    ids[2, 3] = 97
    one_hot = F.one_hot(ids, num_classes=98).reshape(3, 7, 64 * 98).float()
    reference = F.linear(one_hot, layer.weight, layer.bias)
    gathered = model.music_enc.embed_patches(ids.to(torch.uint8))
    assert gathered.shape == reference.shape
    assert torch.allclose(gathered, reference, atol=1e-5, rtol=0)


def test_plan_batches_respects_budget() -> None:
    lengths = [5, 100, 7, 30, 300, 1, 30]
    batches = plan_batches(lengths, budget=120)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert lengths[batch[0]] == longest
        assert len(batch) == 1 or len(batch) * longest <= 120


# --- encoder ---------------------------------------------------------------------------


def test_batched_music_equals_one_at_a_time(encoder: ClampEncoder) -> None:
    pieces = random_pieces(40, seed=1)
    pieces.append(random_pieces(1, seed=2, max_len=2)[0].repeat(200, axis=0)[:200])
    batched = encoder.encode_music(pieces)
    assert batched.dtype == np.float32
    assert batched.shape == (len(pieces), encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    singles = np.concatenate([encoder.encode_music([p]) for p in pieces])
    assert np.abs(batched - singles).max() <= 1e-5
    # The over-long piece was cut to max_patches, not rejected.
    cut = encoder.encode_music([pieces[-1][: encoder.max_patches]])
    assert np.abs(cut[0] - batched[-1]).max() <= 1e-5


def test_music_vectors_match_unbatched_model(encoder: ClampEncoder) -> None:
    piece = random_pieces(1, seed=5)[0]
    with torch.inference_mode():
        ids = torch.from_numpy(piece).long().unsqueeze(0)
        raw = encoder.model.encode_music(ids, torch.ones(1, len(piece), dtype=torch.long))
    expected = F.normalize(raw, dim=-1)[0].numpy()
    assert np.abs(encoder.encode_music([piece])[0] - expected).max() <= 1e-6


def test_music_input_validation(encoder: ClampEncoder) -> None:
    assert encoder.encode_music([]).shape == (0, encoder.dim)
    with pytest.raises(ValueError, match="shape"):
        encoder.encode_music([np.zeros((0, 64), dtype=np.uint8)])
    with pytest.raises(ValueError, match="class ids"):
        encoder.encode_music([np.full((2, 64), 98, dtype=np.uint8)])


def test_batched_texts_equal_one_at_a_time(tiny_dir: Path) -> None:
    encoder = ClampEncoder(load_clamp(tiny_dir), text_cache_size=0)
    batched = encoder.encode_texts(TEXTS)
    assert batched.shape == (len(TEXTS), encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    singles = np.concatenate([encoder.encode_texts([t]) for t in TEXTS])
    assert np.abs(batched - singles).max() <= 1e-5
    assert encoder.encode_texts([]).shape == (0, encoder.dim)


def test_text_cache(tiny_dir: Path) -> None:
    encoder = ClampEncoder(load_clamp(tiny_dir), text_cache_size=2)
    first = encoder.encode_texts(TEXTS[:2])
    again = encoder.encode_texts([TEXTS[1], TEXTS[0], TEXTS[1]])
    assert np.array_equal(again, first[[1, 0, 1]])
    encoder.encode_texts(TEXTS[2:4])  # evicts both
    assert len(encoder._text_cache) == 2
    # Evicted: recomputed alone, so equal up to batching noise only.
    np.testing.assert_allclose(encoder.encode_texts(TEXTS[:1]), first[:1], atol=1e-5)


def test_fast_precision_is_close(tiny_dir: Path) -> None:
    loaded = load_clamp(tiny_dir)
    fast = ClampEncoder(loaded, precision="fast")
    pieces = random_pieces(4, seed=9)
    exact = ClampEncoder(load_clamp(tiny_dir)).encode_music(pieces)
    approx = fast.encode_music(pieces)
    assert approx.dtype == np.float32
    assert (approx * exact).sum(axis=1).min() > 0.99


# --- random checkpoints ----------------------------------------------------------------


def test_same_seed_same_vectors(tmp_path: Path) -> None:
    a = write_random_checkpoint(tmp_path / "a", seed=7)
    b = write_random_checkpoint(tmp_path / "b", seed=7)
    c = write_random_checkpoint(tmp_path / "c", seed=8)
    pieces = random_pieces(5, seed=3)
    vec_a = ClampEncoder(load_clamp(a)).encode_music(pieces)
    vec_b = ClampEncoder(load_clamp(b)).encode_music(pieces)
    vec_c = ClampEncoder(load_clamp(c)).encode_music(pieces)
    assert np.array_equal(vec_a, vec_b)
    assert not np.allclose(vec_a, vec_c)
    assert load_clamp(a).manifest.version == load_clamp(b).manifest.version


def test_distinct_pieces_are_spread(encoder: ClampEncoder) -> None:
    vectors = encoder.encode_music(random_pieces(20, seed=11))
    cosines = (vectors @ vectors.T)[np.triu_indices(20, 1)]
    assert cosines.max() < 0.999


def test_minilm_text_mode(tmp_path: Path) -> None:
    out = write_random_checkpoint(tmp_path / "minilm", text="minilm")
    loaded = load_clamp(out)
    assert loaded.model.text_enc.config.hidden_size == 384
    encoder = ClampEncoder(loaded)
    vectors = encoder.encode_texts(["a cheerful folk dance", "a cheerful folk dance tune"])
    assert vectors.shape == (2, 64)
    assert np.isfinite(vectors).all()
    # The text tower is the real MiniLM: near-paraphrases land close together.
    assert float(vectors[0] @ vectors[1]) > 0.5
