"""Embedded pipeline through the CLI: ingest, failures, search, incremental rescans, retry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.search import SearchService
from tests.conftest import settings_from_env
from workers.runtime import close_contexts, get_context

JIG = """X:1
T:The Kesh
R:jig
M:6/8
L:1/8
K:G
|:GAG GAB|ABA ABd|edd gdd|edB dBA|GAG GAB|ABA ABd|edd gdB|AGF G3:|
"""
REEL = """X:2
T:Drowsy Maggie
R:reel
M:4/4
L:1/8
K:Edor
|:E2BE dEBE|E2BE AFDF|E2BE dEBE|BABc dAFD:|
"""
WALTZ = """X:1
T:Valse de Café
R:waltz
M:3/4
L:1/4
K:D
|:A2 d|f2 e|d2 c|B3|A2 d|f2 a|g2 e|d3:|
"""
NO_KEY = """X:3
T:Broken, no key line
M:4/4
ABcd|efga|
"""


@pytest.fixture()
def runner(embedded_env: dict[str, str]) -> CliRunner:
    close_contexts()
    yield CliRunner(env=embedded_env)
    close_contexts()


def invoke_json(runner: CliRunner, *args: str) -> object:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output + str(result.exception)
    return json.loads(result.stdout)


def point_count(env: dict[str, str]) -> int:
    settings = settings_from_env(env)
    ctx = get_context(settings)
    name = ctx.store.resolve_alias(settings.collection_alias)
    assert name is not None
    return ctx.store.count(name)


def test_ingest_failures_search_rescan_retry(
    runner: CliRunner, embedded_env: dict[str, str], tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "session.abc").write_text(JIG + "\n" + REEL, encoding="utf-8")
    (corpus / "mixed.abc").write_text(WALTZ + "\n" + NO_KEY, encoding="utf-8")
    (corpus / "empty.abc").write_bytes(b"")
    (corpus / "junk.abc").write_bytes(bytes(range(256)) * 40)
    (corpus / "folder.abc").mkdir()
    (corpus / "notes.txt").write_text("not music", encoding="utf-8")

    summary = invoke_json(runner, "ingest", str(corpus))
    assert summary == {
        **summary,
        "files": 4,
        "pieces": 3,
        "indexed": 3,
        "failed": 4,
        "skipped": 0,
    }
    assert {"job_id", "files", "pieces", "indexed", "failed", "skipped"} <= set(summary)
    assert point_count(embedded_env) == 3

    failures = invoke_json(runner, "failures")
    by_file = {Path(f["uri"]).name: f for f in failures}
    assert set(by_file) == {"empty.abc", "junk.abc", "folder.abc", "mixed.abc"}
    assert by_file["empty.abc"]["stage"] == "read"
    assert "empty" in by_file["empty.abc"]["message"]
    assert "binary" in by_file["junk.abc"]["message"]
    assert by_file["folder.abc"]["stage"] == "scan"
    assert by_file["mixed.abc"]["stage"] == "parse"
    assert "K:" in by_file["mixed.abc"]["message"]

    hits = invoke_json(runner, "search", "a jig in G", "-k", "2")
    assert len(hits) == 2
    assert {"piece_id", "score", "title", "key", "meter", "source", "index_in_file"} <= set(hits[0])

    hits = invoke_json(runner, "similar", str(corpus / "session.abc"), "--tune", "1")
    assert hits[0]["title"] == "Drowsy Maggie"
    assert hits[0]["index_in_file"] == 1
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert hits[0]["key"] == "Edor" and hits[0]["meter"] == "4/4"

    filtered = invoke_json(runner, "search", "tune", "--filter", "meter=3/4")
    assert [h["title"] for h in filtered] == ["Valse de Café"]

    # Unchanged files are skipped; failed ones are tried again (and fail again).
    again = invoke_json(runner, "ingest", str(corpus))
    assert again["skipped"] == 2 and again["indexed"] == 0
    assert point_count(embedded_env) == 3

    # A tune removed from a file loses its point; a deleted file loses all of its points.
    (corpus / "session.abc").write_text(JIG, encoding="utf-8")
    (corpus / "mixed.abc").unlink()
    invoke_json(runner, "ingest", str(corpus))
    assert point_count(embedded_env) == 1
    titles = [h["title"] for h in invoke_json(runner, "search", "anything", "-k", "10")]
    assert titles == ["The Kesh"]

    # Fix a broken file, then `retry` indexes it and closes its failure.
    (corpus / "empty.abc").write_text(REEL, encoding="utf-8")
    retried = invoke_json(runner, "retry")
    assert retried["indexed"] == 1
    assert point_count(embedded_env) == 2
    open_uris = {Path(f["uri"]).name for f in invoke_json(runner, "failures")}
    assert "empty.abc" not in open_uris

    status = invoke_json(runner, "status")
    assert status["job_id"] == retried["job_id"] and status["status"] == "done"


def test_query_errors_are_clear(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["search", "anything"])
    assert result.exit_code == 1
    assert "no index in" in result.output and "clamp-index ingest PATH" in result.output

    bad = tmp_path / "bad.abc"
    bad.write_bytes(b"\x00\x01\x02" * 100)
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.abc").write_text(JIG, encoding="utf-8")
    invoke_json(runner, "ingest", str(corpus))
    # A query that cannot be read is a bad argument: exit 2, like a usage error.
    result = runner.invoke(app, ["similar", str(bad)])
    assert result.exit_code == 2
    assert "binary" in result.output
    result = runner.invoke(app, ["search", "   "])
    assert result.exit_code == 2 and "empty" in result.output


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    close_contexts()
    env = {
        "CLAMP_INDEX_DATA_DIR": str(tmp_path / "s"),
        "CLAMP_INDEX_MODEL_DIR": str(tmp_path / "nowhere"),
    }
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.abc").write_text(JIG, encoding="utf-8")
    result = CliRunner(env=env).invoke(app, ["ingest", str(corpus)])
    assert result.exit_code == 1
    assert "no model at" in result.output and "unset it to use the shipped model" in result.output
    close_contexts()


def test_identical_music_is_encoded_once(embedded_env: dict[str, str], tmp_path: Path) -> None:
    """Pieces whose music matches an indexed one reuse its vector instead of re-encoding."""
    from orchestrator.jobs import job_counts, plan_ingest, run_embedded

    close_contexts()
    settings = settings_from_env(embedded_env)
    ctx = get_context(settings)
    try:
        first, second = tmp_path / "a", tmp_path / "b"
        first.mkdir()
        second.mkdir()
        (first / "kesh.abc").write_text(JIG + "\n" + REEL, encoding="utf-8")
        # Same music under other titles, twice in one file: metadata differs, vectors must not.
        renamed = JIG.replace("The Kesh", "Kesh Jig")
        (second / "copy.abc").write_text(
            renamed + "\n" + renamed.replace("X:1", "X:5"), encoding="utf-8"
        )

        encoded = []
        for folder in (first, second):
            plan = plan_ingest(ctx.sessions, settings, [folder])
            before = ctx.encoder.stats.pieces
            run_embedded(settings, plan.job_id)
            encoded.append(ctx.encoder.stats.pieces - before)
            counts = job_counts(ctx.sessions, plan.job_id)
            assert counts is not None and counts.indexed == 2
        assert encoded == [2, 0]
        assert ctx.store.count(ctx.active_collection()) == 4
        hits = SearchService(ctx).similar_abc(JIG, k=4).hits
        exact = sorted(h.title or "" for h in hits if h.score > 0.9999)
        assert exact == ["Kesh Jig", "Kesh Jig", "The Kesh"]
    finally:
        close_contexts()


def test_other_model_is_refused_and_job_still_ends(
    runner: CliRunner, embedded_env: dict[str, str], tmp_path: Path
) -> None:
    from tests.support.random_checkpoint import write_random_checkpoint

    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.abc").write_text(JIG, encoding="utf-8")
    invoke_json(runner, "ingest", str(corpus))

    other_model = write_random_checkpoint(tmp_path / "other", seed=7, name="other")
    (corpus / "b.abc").write_text(REEL, encoding="utf-8")
    close_contexts()
    other = CliRunner(env={**embedded_env, "CLAMP_INDEX_MODEL_DIR": str(other_model)})
    result = other.invoke(app, ["ingest", str(corpus)])
    assert result.exit_code == 1
    assert "holds vectors of model" in result.output
    result = other.invoke(app, ["search", "a reel"])
    assert result.exit_code == 1 and "not comparable" in result.output

    # The refused work waits in the ledger: the right model resumes it, nothing is lost.
    status = invoke_json(other, "status")
    assert status["status"] == "interrupted" and status["pieces_pending"] == 1
    assert status["failed"] == 0 and status["indexed"] == 0
    close_contexts()
    resumed = invoke_json(runner, "ingest", str(corpus))
    assert resumed["status"] == "done" and resumed["indexed"] == 1 and resumed["skipped"] == 2
    assert point_count(embedded_env) == 2


def test_fixed_file_is_indexed_by_retry(runner: CliRunner, tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    corpus.mkdir()
    tune = corpus / "waltz.abc"
    tune.write_text(WALTZ.replace("K:", "Q:1/4=90\n"), encoding="utf-8")  # no K: line
    summary = invoke_json(runner, "ingest", str(corpus))
    assert summary["failed"] == 1 and summary["indexed"] == 0
    # Retrying an unfixed file records the same problem once, not once per retry.
    assert invoke_json(runner, "retry")["indexed"] == 0
    [failure] = invoke_json(runner, "failures")
    assert failure["stage"] == "parse"

    tune.write_text(WALTZ, encoding="utf-8")
    assert invoke_json(runner, "retry")["indexed"] == 1
    assert invoke_json(runner, "failures") == []
    assert len(invoke_json(runner, "failures", "--all")) == 1


def test_classify_files_and_indexed_agree(runner: CliRunner, tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "session.abc").write_text(JIG + "\n" + REEL, encoding="utf-8")
    (corpus / "waltz.abc").write_text(WALTZ, encoding="utf-8")
    invoke_json(runner, "ingest", str(corpus))

    labels = "jig,reel,waltz"
    from_files = invoke_json(
        runner,
        "classify",
        str(corpus / "session.abc"),
        str(corpus / "waltz.abc"),
        "--labels",
        labels,
        "--template",
        "a {label}",
    )
    from_index = invoke_json(
        runner, "classify", "--indexed", "--labels", labels, "--template", "a {label}"
    )
    assert len(from_files) == len(from_index) == 3
    assert {"piece_id", "source", "title", "label", "probabilities"} <= set(from_files[0])
    by_id = {r["piece_id"]: r for r in from_index}
    for r in from_files:
        assert set(r["probabilities"]) == {"jig", "reel", "waltz"}
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)
        indexed = by_id[r["piece_id"]]  # same piece ids whether indexed or read from disk
        assert indexed["label"] == r["label"]
        for name, p in r["probabilities"].items():
            assert indexed["probabilities"][name] == pytest.approx(p, abs=1e-3)

    for bad_args, words in [
        (["--indexed", "--labels", "jig"], "at least two labels"),
        (["--indexed", "--labels", "jig,reel", "--template", "no placeholder"], "{label}"),
        (["--labels", "jig,reel"], "either PATH"),
    ]:
        result = runner.invoke(app, ["classify", *bad_args])
        assert result.exit_code != 0 and words in result.output, result.output


def test_classify_uses_the_configured_templates(
    tmp_path: Path, embedded_env: dict[str, str]
) -> None:
    from schemas.settings import Settings

    tune = tmp_path / "kesh.abc"
    tune.write_text(JIG, encoding="utf-8")
    assert len(Settings().classify_templates) > 1  # an ensemble by default
    good = CliRunner(env={**embedded_env, "CLAMP_INDEX_CLASSIFY_TEMPLATES": '["the {label}"]'})
    result = good.invoke(app, ["classify", str(tune), "--labels", "jig,reel", "--json"])
    assert result.exit_code == 0, result.output
    # The setting is what classify reads when no --template is given.
    bad = CliRunner(env={**embedded_env, "CLAMP_INDEX_CLASSIFY_TEMPLATES": '["no placeholder"]'})
    refused = bad.invoke(app, ["classify", str(tune), "--labels", "jig,reel"])
    assert refused.exit_code != 0 and "{label}" in refused.output


def test_a_ctrl_c_lost_in_a_finaliser_still_stops_the_run(
    embedded_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal
    import sys

    from orchestrator.jobs import JobInterruptedError, ingest, job_counts
    from workers.runner import stop_signals

    corpus = tmp_path / "c"
    corpus.mkdir()
    for i in range(5):
        (corpus / f"t{i}.abc").write_text(JIG.replace("The Kesh", f"Tune {i}"), encoding="utf-8")
    settings = settings_from_env(embedded_env, parse_claim_files=1)

    class SignalsWhenCollected:
        def __del__(self) -> None:
            signal.raise_signal(signal.SIGINT)
            sum(range(1000))  # the handler runs here, inside the finaliser

    lost: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", lost.append)

    def on_first_claim(_counts: object) -> None:
        if not lost:
            SignalsWhenCollected()

    # As in a terminal: a suite started in the background (`cmd &`) inherits SIGINT ignored,
    # and stop_signals leaves an ignored SIGINT alone.
    terminal = signal.signal(signal.SIGINT, signal.default_int_handler)
    close_contexts()
    try:
        with stop_signals(), pytest.raises(JobInterruptedError) as stopped:
            ingest(settings, [corpus], on_progress=on_first_claim)
        counts = job_counts(get_context(settings).sessions, stopped.value.job_id)
    finally:
        close_contexts()
        signal.signal(signal.SIGINT, terminal)
    # Python dropped the KeyboardInterrupt; the run stopped at its next claim all the same.
    assert [type(u.exc_value) for u in lost] == [KeyboardInterrupt]  # type: ignore[attr-defined]
    assert counts is not None and counts.status == "interrupted"
    assert counts.files < 5 or counts.indexed < 5
