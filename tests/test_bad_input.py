"""Hostile and broken input: every kind ends as a clear failure or a sane piece, never a crash."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from orchestrator.cli import app
from schemas.db import Piece, SourceFile
from schemas.settings import Settings
from tests.test_convert import BILLION_LAUGHS, G_MAJOR_TUNE, TWO_BARS, make_midi, make_mxl
from workers.database import session_factory, session_scope
from workers.runtime import close_contexts

BAD_DIR = Path(__file__).parent / "data" / "bad"
GOOD = "X:{n}\nT:Good tune {n}\nR:reel\nM:4/4\nL:1/8\nK:D\n|:DFAF dFAF|GBdB gBdB:|\n"


def make_generated(root: Path) -> None:
    """Kinds that cannot live in git (size, permissions, links, directories)."""
    with (root / "huge_200mb.abc").open("wb") as fh:
        fh.write(b"X:1\nT:Huge\nK:C\n")
        fh.truncate(200 * 1024 * 1024)  # sparse: no real disk or write time
    (root / "long_line.abc").write_text(
        "X:1\nT:One long line\nM:4/4\nK:C\n" + "c" * 100_000 + "|\n", encoding="utf-8"
    )
    (root / "many_bars.abc").write_text(
        "X:1\nT:Twenty thousand bars\nM:4/4\nK:C\n" + "CDEF|" * 20_000 + "\n", encoding="utf-8"
    )
    (root / "huge_header_field.abc").write_text(
        "X:1\nT:" + "Very long title " * 5000 + "\nM:4/4\nK:C\nCDEF|GABc|\n", encoding="utf-8"
    )
    unreadable = root / "unreadable.abc"
    unreadable.write_text(GOOD.format(n=99), encoding="utf-8")
    unreadable.chmod(0)
    os.symlink(root / "loop_b.abc", root / "loop_a.abc")
    os.symlink(root / "loop_a.abc", root / "loop_b.abc")
    os.symlink(root / "does_not_exist.abc", root / "dangling.abc")
    (root / "directory.abc").mkdir()
    # Other formats: good ones are converted and indexed, broken ones fail at "convert".
    (root / "score.musicxml").write_bytes(TWO_BARS)
    (root / "score_compressed.mxl").write_bytes(make_mxl(TWO_BARS))
    (root / "tune.MID").write_bytes(make_midi(G_MAJOR_TUNE))
    (root / "truncated.mxl").write_bytes(make_mxl(TWO_BARS)[:300])
    (root / "billion_laughs.xml").write_bytes(BILLION_LAUGHS)
    (root / "zero_tracks.mid").write_bytes(make_midi([], tracks=0))
    (root / "junk.musicxml").write_bytes(bytes(range(256)) * 8)


# name -> None (indexed, with that many pieces) or (stage, error class, words in the message)
EXPECTED: dict[str, tuple[str, str, str] | int] = {
    "empty.abc": ("read", "AbcDecodeError", "empty"),
    "binary_junk.abc": ("read", "AbcDecodeError", "binary"),
    "nul_bytes.abc": ("read", "AbcDecodeError", "binary"),
    "control_chars.abc": ("read", "AbcDecodeError", "binary"),
    "gzip_named_abc.abc": ("read", "AbcDecodeError", "binary"),
    "only_headers.abc": ("parse", "AbcParseError", "no music"),
    "no_key.abc": ("parse", "AbcParseError", "K:"),
    "only_comments.abc": ("parse", "AbcParseError", "no"),
    "x_line_only.abc": ("parse", "AbcParseError", "K:"),
    "huge_200mb.abc": ("read", "FileTooLargeError", "over the limit"),
    "loop_a.abc": ("scan", "OSError", "symbolic links"),
    "loop_b.abc": ("scan", "OSError", "symbolic links"),
    "dangling.abc": ("scan", "FileNotFoundError", "no such file"),
    "directory.abc": ("scan", "IsADirectoryError", "directory"),
    "truncated.mxl": ("convert", "ConversionError", "zip"),
    "billion_laughs.xml": ("convert", "ConversionError", "entit"),
    "zero_tracks.mid": ("convert", "ConversionError", "track"),
    "junk.musicxml": ("convert", "ConversionError", "xml"),
    # Recoverable: decoded or parsed as well as the text allows, and indexed.
    "invalid_utf8.abc": 1,
    "utf16_bom.abc": 1,
    "cr_only_endings.abc": 1,
    "latin1_title.abc": 1,
    "unterminated_tokens.abc": 1,
    "only_barlines.abc": 1,  # empty bars are valid ABC
    "long_line.abc": 1,
    "many_bars.abc": 1,
    "huge_header_field.abc": 1,
    "one_bad_tune_of_three.abc": 2,  # and one parse failure, checked below
    "score.musicxml": 1,
    "score_compressed.mxl": 1,
    "tune.MID": 1,
}


@pytest.fixture()
def hostile_corpus(tmp_path: Path) -> Path:
    root = tmp_path / "hostile"
    shutil.copytree(BAD_DIR, root, ignore=shutil.ignore_patterns("*.md"))
    make_generated(root)
    for n in range(5):
        (root / f"good_{n}.abc").write_text(GOOD.format(n=n), encoding="utf-8")
    return root


def test_every_bad_kind_is_reported_and_good_files_are_indexed(
    hostile_corpus: Path, embedded_env: dict[str, str]
) -> None:
    close_contexts()
    runner = CliRunner(env=embedded_env)
    try:
        result = runner.invoke(app, ["ingest", str(hostile_corpus), "--json"])
        assert result.exit_code == 0, result.output
        failures = json.loads(runner.invoke(app, ["failures", "--json"]).stdout)
        by_file: dict[str, list[dict[str, str]]] = {}
        for f in failures:
            by_file.setdefault(Path(f["uri"]).name, []).append(f)

        as_root = os.geteuid() == 0
        expected = dict(EXPECTED)
        # Permission bits do not stop root; anyone else gets a read failure.
        expected["unreadable.abc"] = 1 if as_root else ("scan", "PermissionError", "permission")
        for name, outcome in expected.items():
            if isinstance(outcome, tuple):
                stage, error_class, words = outcome
                [failure] = by_file.get(name, [{}])
                assert failure.get("stage") == stage, (name, failure)
                assert failure["error_class"] == error_class, (name, failure)
                assert words.lower() in failure["message"].lower(), (name, failure)
        [middle] = by_file["one_bad_tune_of_three.abc"]
        assert middle["stage"] == "parse" and "X:2" in middle["message"]

        hits = json.loads(runner.invoke(app, ["search", "tune", "-k", "100", "--json"]).stdout)
        indexed: dict[str, int] = {}
        for h in hits:
            indexed[Path(h["source"]).name] = indexed.get(Path(h["source"]).name, 0) + 1
        for n in range(5):
            assert indexed[f"good_{n}.abc"] == 1
        for name, outcome in expected.items():
            if isinstance(outcome, int):
                assert indexed.get(name) == outcome, (name, by_file.get(name))
        titles = {h["title"] for h in hits}
        assert "Sí Bheag, Sí Mhór" in titles  # Latin-1 title kept intact in metadata
        assert "Ünïcode sixteen" in titles

        # Each piece records the format it came from and the converter that made its ABC.
        settings = Settings(data_dir=Path(embedded_env["CLAMP_INDEX_DATA_DIR"]))
        with session_scope(session_factory(settings.resolved_database_url())) as session:
            origins = {
                Path(uri).name: (fmt, conv, bool(abc))
                for uri, fmt, conv, abc in session.execute(
                    select(
                        SourceFile.uri, Piece.source_format, Piece.converter, Piece.abc_text
                    ).join(Piece, Piece.file_id == SourceFile.id)
                )
            }
        assert origins["score.musicxml"][0] == "musicxml"
        assert origins["score_compressed.mxl"][0] == "mxl"
        assert origins["tune.MID"][0] == "midi"
        assert "xml2abc" in origins["score.musicxml"][1]
        assert "music21" in origins["tune.MID"][1]
        assert origins["good_0.abc"][:2] == ("abc", None)
        assert all(has_abc for _, _, has_abc in origins.values())
    finally:
        close_contexts()


def test_a_file_over_the_parse_time_limit_fails_alone(
    tmp_path: Path, embedded_env: dict[str, str]
) -> None:
    close_contexts()
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "slow.abc").write_text(
        "".join(GOOD.format(n=n) + "\n" for n in range(20_000)), encoding="utf-8"
    )
    (corpus / "fine.abc").write_text(GOOD.format(n=1), encoding="utf-8")
    runner = CliRunner(env={**embedded_env, "CLAMP_INDEX_PARSE_TIMEOUT_S": "0.2"})
    try:
        summary = json.loads(runner.invoke(app, ["ingest", str(corpus), "--json"]).stdout)
        assert summary["indexed"] == 1 and summary["failed"] == 1
        [failure] = json.loads(runner.invoke(app, ["failures", "--json"]).stdout)
        assert Path(failure["uri"]).name == "slow.abc"
        assert failure["error_class"] == "ItemTimeoutError"
        assert "longer than 0.2 s" in failure["message"]
    finally:
        close_contexts()
