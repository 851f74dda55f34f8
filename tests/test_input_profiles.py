"""Input profiles: a model's manifest says how its music text is read, and every path obeys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from orchestrator.search import SearchService
from tests.conftest import run_cli, settings_from_env
from tests.support.random_checkpoint import write_random_checkpoint
from workers.abc import ParsedPiece, bar_patches, encode_patches, parse_abc_text
from workers.abc.profiles import (
    REFERENCE_PROFILE,
    RHYTHM_SUMMARY_PROFILE,
    input_profile,
    rhythm_summary_line,
    with_rhythm_summary,
)
from workers.clamp import ClampEncoder, load_clamp
from workers.clamp.loading import CheckpointError
from workers.runtime import close_contexts, get_context

REEL = "M:2/4\nL:1/16\nK:D\nABcd BcdB|A2B2 c2d2|d2B2 A2A2|A>Bc(3def g4|\n"


def test_the_rhythm_summary_line_is_frozen() -> None:
    # Models trained under this profile read exactly these characters: changing the line
    # needs a new profile name, never an edit of this one.
    assert rhythm_summary_line(REEL) == "I:rhythm 000500030000900000044205"
    # The same bars spelled in cut time read the same line.
    assert rhythm_summary_line(REEL.replace("M:2/4\nL:1/16", "M:C|\nL:1/8")) == (
        rhythm_summary_line(REEL)
    )


def test_the_summary_is_one_patch_just_before_the_key() -> None:
    plain = bar_patches(REEL)
    summarised = bar_patches(with_rhythm_summary(REEL))
    key = plain.index("K:D")
    assert summarised == [*plain[:key], rhythm_summary_line(REEL), *plain[key:]]


@pytest.mark.parametrize("text", ["", "ABcd|", "\x00\xff junk", "M:2/4\nL:1/16\nABcd|"])
def test_text_without_a_key_line_is_left_alone(text: str) -> None:
    assert with_rhythm_summary(text) == text


def test_an_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=RHYTHM_SUMMARY_PROFILE):
        input_profile("rhythm-summary-v9")


def test_published_checkpoints_read_the_reference_text(tiny_model_dir: Path) -> None:
    manifest = json.loads((tiny_model_dir / "manifest.json").read_text())
    encoder = ClampEncoder(load_clamp(tiny_model_dir))
    assert encoder.manifest.input_profile == manifest["input_profile"] == REFERENCE_PROFILE
    assert np.array_equal(encoder.music_patches(REEL), encode_patches(REEL, encoder.patch_limit))


def test_a_manifest_from_before_profiles_reads_as_the_reference(tmp_path: Path) -> None:
    model_dir = write_random_checkpoint(tmp_path / "old", input_profile=RHYTHM_SUMMARY_PROFILE)
    path = model_dir / "manifest.json"
    path.write_text(
        json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "input_profile"})
    )
    assert load_clamp(model_dir).manifest.input_profile == REFERENCE_PROFILE


def test_a_profiled_checkpoint_is_read_its_way(tmp_path: Path) -> None:
    model_dir = write_random_checkpoint(tmp_path / "m", input_profile=RHYTHM_SUMMARY_PROFILE)
    encoder = ClampEncoder(load_clamp(model_dir))
    assert encoder.manifest.input_profile == RHYTHM_SUMMARY_PROFILE
    patches = encoder.music_patches(REEL, 16)
    assert np.array_equal(patches, encode_patches(with_rhythm_summary(REEL), 16))
    assert len(patches) == len(encode_patches(REEL, 16)) + 1


def test_an_unknown_profile_in_a_manifest_stops_loading(tmp_path: Path) -> None:
    model_dir = write_random_checkpoint(tmp_path / "m", input_profile="rhythm-summary-v9")
    with pytest.raises(CheckpointError, match="unknown input profile 'rhythm-summary-v9'"):
        load_clamp(model_dir)


def test_ingest_and_search_read_music_the_models_way(
    tmp_path: Path, embedded_env: dict[str, str]
) -> None:
    """Indexed vectors are the profiled encoding: a tune then finds itself at cosine 1,
    which it would not if ingest and search read the text differently."""
    model_dir = write_random_checkpoint(tmp_path / "m", input_profile=RHYTHM_SUMMARY_PROFILE)
    env = {**embedded_env, "CLAMP_INDEX_MODEL_DIR": str(model_dir)}
    tunes = tmp_path / "tunes"
    tunes.mkdir()
    bodies = ["ABcd BcdB|A2B2 c2d2|", "d2B2 A2A2|A>Bc (3def g4|", "GABc dBGB|cBAG F2D2|"]
    for i, body in enumerate(bodies):
        (tunes / f"t{i}.abc").write_text(f"X:1\nT:Tune {i}\nM:C|\nL:1/8\nK:D\n{body}\n")
    result = run_cli(["ingest", str(tunes), "--json"], env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["indexed"] == len(bodies)

    close_contexts()
    settings = settings_from_env(env)
    ctx = get_context(settings)
    try:
        encoder = ClampEncoder(load_clamp(model_dir))
        service = SearchService(ctx)
        for path in sorted(tunes.glob("*.abc")):
            piece = next(p for p in parse_abc_text(path.read_text()) if isinstance(p, ParsedPiece))
            top = service.similar_piece(piece, k=1).hits[0]
            assert top.source == str(path)
            assert top.score == pytest.approx(1.0, abs=1e-4)
            profiled = encoder.encode_music([encoder.music_patches(piece.music_text)])[0]
            reference = encoder.encode_music([encode_patches(piece.music_text, 128)])[0]
            assert float(profiled @ reference) < 0.9999  # the profile changes the vector
    finally:
        close_contexts()


def test_a_profile_edited_into_the_manifest_is_refused_by_its_collection(
    tmp_path: Path, embedded_env: dict[str, str]
) -> None:
    """The version names the weights only: with the manifest's profile changed in place, the
    registered model would write and query vectors of another input into the same collection."""
    model_dir = write_random_checkpoint(tmp_path / "m", input_profile=RHYTHM_SUMMARY_PROFILE)
    env = {**embedded_env, "CLAMP_INDEX_MODEL_DIR": str(model_dir)}
    tunes = tmp_path / "tunes"
    tunes.mkdir()
    (tunes / "a.abc").write_text(f"X:1\nT:A\n{REEL}")
    assert run_cli(["ingest", str(tunes), "--json"], env).returncode == 0

    manifest = model_dir / "manifest.json"
    original = manifest.read_text(encoding="utf-8")
    manifest.write_text(json.dumps({**json.loads(original), "input_profile": REFERENCE_PROFILE}))
    (tunes / "b.abc").write_text("X:1\nT:B\nM:6/8\nL:1/8\nK:G\nGAB cBA|GAB d2B|\n")
    # Ingest and queries both take the collection's model through encoder_for.
    refused = run_cli(["ingest", str(tunes)], env)
    assert refused.returncode == 1, refused.stdout
    assert f"read with input profile '{RHYTHM_SUMMARY_PROFILE}'" in refused.stderr
    assert "Restore input_profile" in refused.stderr

    manifest.write_text(original)
    resumed = run_cli(["ingest", str(tunes), "--json"], env)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["indexed"] == 1


def test_training_reads_every_view_under_the_runs_profile() -> None:
    from orchestrator.training.data import content_key
    from orchestrator.training.views import tune_views, view_patches
    from tests.test_training import record

    tune = record(music_text=REEL, key_hash=content_key(REEL))
    views = tune_views(tune, 3, 0, 0.5, None)
    rows = view_patches([tune], 3, 0, 0.5, 32, profile=RHYTHM_SUMMARY_PROFILE)[0]
    assert len(rows) == len(views) > 1
    for text, patches in zip(views, rows, strict=True):
        assert np.array_equal(patches, encode_patches(with_rhythm_summary(text), 32))


def test_a_trained_model_and_its_fine_tunes_keep_the_profile(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from orchestrator.training import TrainConfig, save_model
    from orchestrator.training.cli import parse_config
    from orchestrator.training.model import build_model, like_start, start_from_checkpoint
    from tests.test_training import TINY

    _, cfg = parse_config(["--out", "m", "--input-profile", RHYTHM_SUMMARY_PROFILE])
    assert cfg.input_profile == RHYTHM_SUMMARY_PROFILE
    assert parse_config(["--out", "m"])[1].input_profile == REFERENCE_PROFILE
    with pytest.raises(ValidationError, match="unknown input profile"):
        TrainConfig(input_profile="rhythm-summary-v9")

    cfg = TrainConfig(**TINY, input_profile=RHYTHM_SUMMARY_PROFILE)
    out = save_model(build_model(cfg).eval(), tmp_path / "m", cfg=cfg)
    assert load_clamp(out).manifest.input_profile == RHYTHM_SUMMARY_PROFILE
    # Catalogue retraining starts from the active model with default settings: the new
    # model must still read text the way its parent learnt to.
    again = like_start(TrainConfig(**TINY), start_from_checkpoint(out))
    assert again.input_profile == RHYTHM_SUMMARY_PROFILE
