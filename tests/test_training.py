"""Fast checks of training: corpus records, split, text dropout, one step, save and load."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator.training.data import (
    TuneRecord,
    content_key,
    full_text,
    normalise_meter,
    parse_key,
    sample_text,
    split_of,
    split_records,
    text_fields,
)

ABC = """X:1
T:The Kesh
R:jig
O:Ireland
M:6/8
L:1/8
K:G
GAG GAB|ABA ABd|edd gdd|edB dBA|
GAG GAB|ABA ABd|edd gdB|AGF G3:|
"""


def record(**overrides: object) -> TuneRecord:
    base = TuneRecord(
        key_hash=content_key("M:6/8\nK:G\nGAG GAB|"),
        collection="oneills1850",
        source="oneills1850/x.abc",
        title="The Kesh",
        composer=None,
        places=("Ireland",),
        rhythm="jig",
        genre=None,
        meter="6/8",
        tonic="G",
        mode="major",
        tempo_words=(),
        music_text="M:6/8\nL:1/8\nK:G\nGAG GAB|ABA ABd|edd gdd|edB dBA|\n",
        patch_count=7,
    )
    return replace(base, **overrides)


def many_records(n: int) -> list[TuneRecord]:
    return [record(key_hash=content_key(f"tune {i}"), title=f"Tune {i}") for i in range(n)]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("Ador", ("A", "dorian")),
        ("Em", ("E", "minor")),
        ("E Minor", ("E", "minor")),
        ("Bb", ("B flat", "major")),
        ("F#m", ("F sharp", "minor")),
        ("Dmix", ("D", "mixolydian")),
        ("G clef=bass", ("G", "major")),
        ("E phr -8va", ("E", "phrygian")),
        ("none", None),
        ("Hp", None),
        ("", None),
    ],
)
def test_parse_key(key: str, expected: tuple[str, str] | None) -> None:
    assert parse_key(key) == expected


def test_normalise_meter() -> None:
    assert normalise_meter("C") == "4/4"
    assert normalise_meter("C|") == "2/2"
    assert normalise_meter(" 6/8") == "6/8"
    assert normalise_meter("FREI4/4") == "4/4"
    assert normalise_meter("none") is None


def test_dropout_text_never_empty_and_seeded() -> None:
    rec = record()
    texts = [sample_text(rec, random.Random(seed)) for seed in range(200)]
    assert all(t.strip() for t in texts)
    assert texts == [sample_text(rec, random.Random(seed)) for seed in range(200)]
    # A random subset in random order: the texts must actually vary.
    assert len(set(texts)) > 50


def test_dropout_text_uses_only_available_fields() -> None:
    bare = record(title=None, places=(), rhythm=None, meter=None, tonic=None, mode=None)
    assert set(text_fields(bare)) == {"collection"}
    rng = random.Random(0)
    for _ in range(50):
        text = sample_text(bare, rng)
        assert "O'Neill" in text
        assert "jig" not in text and "Kesh" not in text and "major" not in text


def test_texts_can_leave_the_book_out_unless_it_is_all_a_tune_has() -> None:
    rec = record()
    assert "a jig from O'Neill's Music of Ireland" in text_fields(rec)["phrase"]
    rng = random.Random(0)
    texts = [sample_text(rec, rng, collection=False) for _ in range(300)]
    assert not any("O'Neill" in text for text in texts)
    assert any("Kesh" in text for text in texts) and any("jig" in text for text in texts)
    bare = record(title=None, places=(), rhythm=None, meter=None, tonic=None, mode=None)
    assert "O'Neill" in sample_text(bare, random.Random(0), collection=False)


def test_dropout_text_phrases() -> None:
    rec = record()
    phrases = text_fields(rec)["phrase"]
    assert "a jig in G major" in phrases
    assert "a jig in 6/8" in phrases
    assert "a jig from Ireland" in phrases
    assert "dorian" in " ".join(text_fields(record(tonic="A", mode="dorian"))["mode"])
    assert "The Kesh" in full_text(rec) and "a jig in G major" in full_text(rec)


def test_split_is_deterministic_and_disjoint() -> None:
    records = many_records(2000)
    train, heldout = split_records(records)
    assert {r.key_hash for r in train}.isdisjoint(r.key_hash for r in heldout)
    assert len(train) + len(heldout) == len(records)
    assert 0.07 < len(heldout) / len(records) < 0.13
    # Keyed by content only: reordering the input changes nothing.
    _, again_heldout = split_records(list(reversed(records)))
    assert {r.key_hash for r in again_heldout} == {r.key_hash for r in heldout}
    # Pinned: the shipped metrics were measured on this split, so it must never drift.
    assert len(heldout) == 215
    picked = [i for i in range(40) if split_of(content_key(f"tune {i}")) == "heldout"]
    assert picked == [13, 18, 29, 37, 38]


def test_content_key_ignores_whitespace() -> None:
    assert content_key("K:G\nGAG GAB|") == content_key("K:G\n GAG  GAB|\n")
    assert content_key("K:G\nGAG|") != content_key("K:G\nGAB|")


def test_corpus_records_from_abc(tmp_path: Path) -> None:
    from orchestrator.training.data import load_corpus

    folder = tmp_path / "ryansMammoth"
    folder.mkdir()
    (folder / "a.abc").write_text(ABC + "\n" + ABC.replace("X:1", "X:2"))
    records = load_corpus(tmp_path)
    assert len(records) == 1  # the second tune is a copy: deduplicated
    (rec,) = records
    assert rec.rhythm == "jig" and rec.meter == "6/8" and rec.key_name == "G major"
    assert rec.places == ("Ireland",) and rec.collection == "ryansMammoth"
    assert "T:" not in rec.music_text


TINY = {
    "hidden_size": 32,
    "num_layers": 1,
    "num_heads": 2,
    "intermediate_size": 64,
    "max_patches": 32,
    "dropout": 0.0,
    "threads": 1,
}


def test_one_training_step_lowers_loss() -> None:
    from orchestrator.training.config import TrainConfig
    from orchestrator.training.loop import TextFeatures, collate_patches
    from orchestrator.training.model import ContrastiveHead, build_model
    from workers.abc import encode_patches
    from workers.clamp.loading import load_tokenizer
    from workers.clamp.minilm import minilm_dir

    torch.manual_seed(0)
    cfg = TrainConfig(**TINY)
    model = build_model(cfg)
    head = ContrastiveHead(cfg.init_temperature)
    features = TextFeatures(model, load_tokenizer(minilm_dir()))
    texts = ["a jig in G major", "a reel in D major", "a waltz in 3/4", "a hornpipe"]
    bodies = ["GAG GAB|ABA ABd|", "dAFA dAFA|BAFA D2FA|", "A2 B2 c2|d4 e2|", "GABc dBAG|"]
    meters = ["6/8", "4/4", "3/4", "4/4"]
    pieces = [
        encode_patches(f"M:{m}\nK:G\n{body}\n", 32) for m, body in zip(meters, bodies, strict=True)
    ]
    ids, mask = collate_patches(pieces)
    text_in = features(texts)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    assert not any(p.requires_grad for p in model.text_enc.parameters())
    optimizer = torch.optim.AdamW(params, lr=3e-4)

    def loss_now() -> torch.Tensor:
        return head(model.text_proj(text_in), model.encode_music(ids, mask))

    model.train()
    first = loss_now()
    for _ in range(8):
        optimizer.zero_grad()
        loss = loss_now()
        loss.backward()
        optimizer.step()
    assert loss_now().item() < first.item()


def test_same_text_pairs_are_not_negatives() -> None:
    from orchestrator.training.model import ContrastiveHead

    head = ContrastiveHead(0.07)
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    music = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    same = torch.tensor([[False, True], [True, False]])
    assert head(text, music, same).item() == pytest.approx(0.0, abs=1e-6)
    assert head(text, music).item() == pytest.approx(np.log(2), abs=1e-4)


def test_save_then_load_round_trip(tmp_path: Path) -> None:
    from safetensors import safe_open

    from orchestrator.training import TrainConfig, save_model
    from orchestrator.training.model import build_model
    from workers.abc import encode_patches
    from workers.clamp import ClampEncoder, load_clamp
    from workers.clamp.minilm import MINILM_WEIGHTS_REF

    cfg = TrainConfig(**TINY)
    model = build_model(cfg).eval()
    out = save_model(model, tmp_path / "m", cfg=cfg, metrics={"x": 1})
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["text_weights"] == MINILM_WEIGHTS_REF
    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        keys = list(fh.keys())
        assert fh.get_tensor("music_proj.weight").dtype == torch.float16
    assert not any(k.startswith("text_enc.") for k in keys)

    loaded = load_clamp(out)  # text tower resolved from the package
    assert loaded.manifest.kind == manifest["kind"]
    encoder = ClampEncoder(loaded)
    piece = encode_patches("M:6/8\nK:G\nGAG GAB|ABA ABd|\n", cfg.max_patches)
    vector = encoder.encode_music([piece])[0]
    assert vector.shape == (cfg.hidden_size,)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    # fp16 storage costs ~1e-3 against the in-memory fp32 model, no more.
    with torch.no_grad():
        ids, mask = torch.from_numpy(piece[None]), torch.ones(1, len(piece), dtype=torch.long)
        direct = torch.nn.functional.normalize(model.encode_music(ids, mask), dim=-1)[0].numpy()
    assert np.abs(direct - vector).max() < 5e-3
    text = encoder.encode_text("a jig in G major")
    assert text.shape == (cfg.hidden_size,)

    # With the text tower bundled, today's load_clamp reads the directory unchanged.
    full = save_model(model, tmp_path / "full", cfg=cfg, include_text=True)
    again = ClampEncoder(load_clamp(full))
    assert np.allclose(again.encode_music([piece])[0], vector, atol=1e-6)


def test_package_text_weights_are_checked(tmp_path: Path) -> None:
    from orchestrator.training import TrainConfig, save_model
    from orchestrator.training.model import build_model
    from workers.clamp import CheckpointError, load_clamp

    out = save_model(
        build_model(TrainConfig(**TINY)).eval(), tmp_path / "m", cfg=TrainConfig(**TINY)
    )
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for key, value, words in [
        ("text_weights", "package:not_a_real_package", "unknown text_weights"),
        ("text_weights_sha256", "0" * 64, "not the text encoder"),
    ]:
        manifest_path.write_text(json.dumps({**manifest, key: value}))
        with pytest.raises(CheckpointError, match=words):
            load_clamp(out)


def dance_records(n: int = 48) -> list[TuneRecord]:
    bodies = ["GAG GAB|ABA ABd|", "dAFA dAFA|BAFA D2FA|", "A2 B2 c2|d4 e2|", "GABc dBAG|"]
    return [
        record(
            key_hash=content_key(f"tune {i}"),
            title=f"Tune {i}",
            rhythm=["jig", "reel", "waltz", "hornpipe"][i % 4],
            music_text=f"M:6/8\nK:G\n{bodies[i % 4]}{bodies[(i // 4) % 4]}\n",
        )
        for i in range(n)
    ]


def test_a_step_count_cut_short_by_the_time_budget_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from orchestrator.training import TrainConfig, train

    cfg = TrainConfig(**TINY, batch_size=8, max_steps=500, minutes=1e-9, eval_every=0)
    with caplog.at_level("WARNING"):
        _, _, history = train(cfg, dance_records())
    assert history["stopped_by_time_budget"] is True and history["steps"] < 500
    assert f"after {history['steps']} of 500 steps" in caplog.text
    _, _, history = train(cfg.model_copy(update={"max_steps": 2, "minutes": None}), dance_records())
    assert history["stopped_by_time_budget"] is False and history["steps"] == 2


def test_training_is_reproducible_from_its_seed() -> None:
    """Same config and data, same weights bit for bit: the shipped model can be rebuilt."""
    from orchestrator.training import TrainConfig, train

    records = dance_records()
    cfg = TrainConfig(
        **{**TINY, "dropout": 0.1},
        batch_size=8,
        max_steps=4,
        warmup_steps=2,
        eval_every=0,
        text_variants=2,
        patch_mask_prob=0.1,
        bf16=True,
        music_views=2,
        music_loss_weight=1.0,
    )

    def roundtrips(key: str) -> list[str]:
        # Stand-in for cached converter output: another spelling of the same tune.
        return [records_by_key[key].music_text.replace("K:G", "L:1/8\nK:G")]

    records_by_key = {r.key_hash: r for r in records}
    first, _, history = train(cfg, records, log_every=1, roundtrips=roundtrips)
    second, _, _ = train(cfg, records, log_every=1, roundtrips=roundtrips)
    assert history["steps"] == 4
    # Every tune has its original, augmented copies and the round trip to pair up.
    assert history["music_views"] > 2 * history["train_tunes"]
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other, _, _ = train(
        cfg.model_copy(update={"seed": 1}), records, log_every=1, roundtrips=roundtrips
    )
    assert not torch.equal(other.state_dict()["music_proj.weight"], a["music_proj.weight"])


def test_the_rhythm_feature_loss_trains_the_tower_and_is_not_exported() -> None:
    """The auxiliary head changes the music tower, stays reproducible from the seed, and
    leaves nothing of itself in the saved weights."""
    from orchestrator.training import TrainConfig, train

    records = dance_records()
    cfg = TrainConfig(
        **TINY,
        batch_size=8,
        max_steps=6,
        warmup_steps=2,
        eval_every=0,
        music_views=2,
        music_loss_weight=1.0,
        rhythm_feature_loss_weight=1.0,
        input_profile="rhythm-summary-v2",
    )
    first, _, history = train(cfg, records, log_every=2)
    second, _, _ = train(cfg, records, log_every=2)
    plain, _, plain_history = train(
        cfg.model_copy(update={"rhythm_feature_loss_weight": 0.0}), records, log_every=2
    )
    a, b, c = first.state_dict(), second.state_dict(), plain.state_dict()
    assert a.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["music_proj.weight"], c["music_proj.weight"])
    # The tunes' features differ, so there is something to regress; it is logged.
    mse = [entry["rhythm_feature_mse"] for entry in history["loss"]]
    assert len(mse) == 3 and all(value > 0 for value in mse)
    assert all("rhythm_feature_mse" not in entry for entry in plain_history["loss"])


def test_training_without_the_book_in_texts_trains_other_weights() -> None:
    """text_collection reaches the texts a run pairs (its manifest field alone is not it)."""
    from orchestrator.training import TrainConfig, train

    records = [
        replace(r, collection=("oneills1850", "ryansMammoth")[i % 2])
        for i, r in enumerate(dance_records())
    ]
    cfg = TrainConfig(**TINY, batch_size=8, max_steps=4, warmup_steps=2, eval_every=0)
    named, _, _ = train(cfg, records)
    unnamed, _, _ = train(cfg.model_copy(update={"text_collection": False}), records)
    again, _, _ = train(cfg.model_copy(update={"text_collection": False}), records)
    a, b, c = named.state_dict(), unnamed.state_dict(), again.state_dict()
    assert all(torch.equal(b[k], c[k]) for k in b)
    assert not torch.equal(a["text_proj.weight"], b["text_proj.weight"])


def test_a_fine_tune_leaves_the_book_out_when_its_parent_did(tmp_path: Path) -> None:
    from orchestrator.training import TrainConfig, save_model
    from orchestrator.training.model import build_model, like_start, start_from_checkpoint

    bookless = TrainConfig(**TINY, text_collection=False)
    parent = save_model(build_model(bookless).eval(), tmp_path / "bookless", cfg=bookless)
    # Catalogue retraining runs the default recipe, which names the book.
    assert not like_start(TrainConfig(**TINY), start_from_checkpoint(parent)).text_collection
    plain = TrainConfig(**TINY)
    other = save_model(build_model(plain).eval(), tmp_path / "plain", cfg=plain)
    assert like_start(TrainConfig(**TINY), start_from_checkpoint(other)).text_collection
    # A run may still leave the book out below a parent that named it.
    assert not like_start(bookless, start_from_checkpoint(other)).text_collection
    # A manifest from before the field, or hand-edited into junk, named the book.
    data = json.loads((parent / "manifest.json").read_text(encoding="utf-8"))
    (parent / "manifest.json").write_text(json.dumps({**data, "train_config": ["junk"]}))
    assert start_from_checkpoint(parent).text_collection


def test_command_line_flags_override_the_config_file(tmp_path: Path) -> None:
    from orchestrator.training.cli import parse_config

    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"hidden_size": 128, "seed": 9, "max_steps": 10}))
    flags = ["--out", "m", "--steps", "4500", "--threads", "2", "--bf16", "--seed", "0"]
    out, cfg = parse_config([*flags, "--config", str(config)])
    assert out == Path("m")
    assert (cfg.max_steps, cfg.threads, cfg.bf16, cfg.seed) == (4500, 2, True, 0)
    assert cfg.hidden_size == 128 and cfg.minutes == 50.0
    # The shipped recipe: views and the music pair loss on, restricted sources and the
    # evaluation collection out.
    assert cfg.music_views > 0 and cfg.music_loss_weight > 0
    assert cfg.collections is not None
    assert "essenFolksong" not in cfg.collections and "josquin" not in cfg.collections
    assert cfg.heldout_collections == ["ryansMammoth"]
    assert "ryansMammoth" not in cfg.collections


def test_a_fold_run_never_sees_its_collection() -> None:
    from orchestrator.training.cli import parse_config
    from orchestrator.training.sources import LOCO_FOLDS

    for fold in LOCO_FOLDS:
        _, cfg = parse_config(["--out", "m", "--heldout-collection", fold])
        assert cfg.heldout_collections == [fold]
        assert cfg.collections is not None and fold not in cfg.collections
        assert len(cfg.collections) >= 3


def test_meter_spelling_is_an_opt_in_recorded_in_the_config() -> None:
    from orchestrator.training.augment import BASE_OPS
    from orchestrator.training.cli import parse_config
    from orchestrator.training.config import TrainConfig

    _, cfg = parse_config(["--out", "m"])
    assert cfg.augment_ops == list(BASE_OPS)
    _, cfg = parse_config(["--out", "m", "--augment-op", "meter_spelling"])
    assert cfg.augment_ops == [*BASE_OPS, "meter_spelling"]
    # A manifest written before the field existed reads as the ops it was trained with.
    assert TrainConfig.model_validate({"seed": 0}).augment_ops == list(BASE_OPS)
    with pytest.raises(ValueError, match="known"):
        TrainConfig(augment_ops=["meter"])
    with pytest.raises(SystemExit):
        parse_config(["--out", "m", "--augment-op", "transpose"])  # already in the recipe


def test_restricted_sources_need_an_explicit_opt_in() -> None:
    from orchestrator.training.cli import parse_config
    from orchestrator.training.sources import SOURCES, UnknownSourceError, training_collections

    default = training_collections()
    assert all(SOURCES[c].redistributable for c in default)
    assert "essenFolksong" not in default
    assert "essenFolksong" in training_collections(include_restricted=["essenFolksong"])
    assert "ryansMammoth" in training_collections(exclude=())
    with pytest.raises(UnknownSourceError, match="known"):
        training_collections(include_restricted=["nonsense"])
    _, cfg = parse_config(["--out", "m", "--include-restricted", "essenFolksong"])
    assert cfg.collections is not None and "essenFolksong" in cfg.collections
    _, cfg = parse_config(["--out", "m", "--no-heldout-collection"])
    assert cfg.collections is not None and "ryansMammoth" in cfg.collections
    with pytest.raises(SystemExit):  # argparse refuses a name that is not a restricted source
        parse_config(["--out", "m", "--include-restricted", "oneills1850"])


def test_runtime_code_never_imports_test_support() -> None:
    import workers.clamp

    repo = Path(__file__).resolve().parents[1]
    assert not hasattr(workers.clamp, "write_random_checkpoint")
    for package in ("workers", "orchestrator", "schemas"):
        for path in (repo / package).rglob("*.py"):
            text = path.read_text()
            assert "tests.support" not in text and "from tests" not in text, path


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("Miss Hay's Reel.", "reel"),
        ("The Soldier's Hornpipe", "hornpipe"),
        ("Drops of Brandy, Slip Jig", "slip jig"),
        ("German Waltz.", "waltz"),
        ("The Gentle Air", None),  # "air" at the end of a title is too often no genre
        ("Reel of Tulloch, The", None),  # only the title's end names the dance
        ("Acacia -- Reel", "reel"),
    ],
)
def test_dance_type_from_the_title(title: str, expected: str | None) -> None:
    from orchestrator.training.data import normalise_rhythm

    assert normalise_rhythm(None, title) == (expected, None)
    assert normalise_rhythm("jig", title) == ("jig", None)  # R: wins
