"""`clamp-index serve` owns an embedded index, and the CLI goes through it instead of failing."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import CLI, REPO, run_cli
from tests.test_api import HORNPIPE, SLIP
from tests.test_pipeline import JIG, REEL, WALTZ


@pytest.fixture()
def served(embedded_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[dict[str, str], str]]:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "session.abc").write_text(JIG + "\n" + REEL, encoding="utf-8")
    (corpus / "valse.abc").write_text(WALTZ, encoding="utf-8")
    record = Path(embedded_env["CLAMP_INDEX_DATA_DIR"]) / "server.json"
    record.parent.mkdir(parents=True)
    # A record left by a server that died: a pid above the kernel's limit (pid_max <= 2**22)
    # cannot be running, so the CLI must ignore it and work on the index itself.
    record.write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": 2**22 + 7, "token": "x"}))
    first = run_cli(["ingest", str(corpus), "--json"], embedded_env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["indexed"] == 3
    env = {**embedded_env, "CLAMP_INDEX_CATALOGUE_ROOTS": json.dumps([str(tmp_path)])}
    server = subprocess.Popen(
        [str(CLI), "serve", "--port", "0"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not record.exists() or json.loads(record.read_text())["pid"] != server.pid:
            assert server.poll() is None, server.communicate()[0]
            assert time.monotonic() < deadline, "serve did not record its address"
            time.sleep(0.2)
        url = json.loads(record.read_text())["url"]
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve never became ready"
            time.sleep(0.2)
        assert oct(record.stat().st_mode & 0o777) == "0o600"  # it holds the write token
        yield env, url
    finally:
        server.send_signal(signal.SIGINT)
        try:
            output = server.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            server.kill()
            output = server.communicate()[0]
        assert server.returncode == 0, output
        assert not record.exists(), "serve left its address file behind"


def test_cli_goes_through_the_running_server(
    served: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    env, url = served
    found = run_cli(["search", "a jig", "--json", "-f", "key=g"], env)
    assert found.returncode == 0, found.stderr
    assert [h["title"] for h in json.loads(found.stdout)] == ["The Kesh"]

    query = tmp_path / "q.abc"
    query.write_text(REEL, encoding="utf-8")
    similar = run_cli(["similar", str(query), "--json", "-k", "1"], env)
    assert similar.returncode == 0, similar.stderr
    assert json.loads(similar.stdout)[0]["title"] == "Drowsy Maggie"

    labels = run_cli(["classify", str(query), "--labels", "jig,reel", "--json"], env)
    assert labels.returncode == 0, labels.stderr
    row = json.loads(labels.stdout)[0]
    assert (
        row["source"] == str(query)
        and row["piece_id"]
        and set(row["probabilities"])
        == {
            "jig",
            "reel",
        }
    )
    indexed = run_cli(["classify", "--indexed", "--labels", "jig,reel", "--json"], env)
    assert indexed.returncode == 0, indexed.stderr
    assert len(json.loads(indexed.stdout)) == 3

    more = tmp_path / "more"
    more.mkdir()
    (more / "tunes.abc").write_text(HORNPIPE + "\n" + SLIP, encoding="utf-8")
    ingest = run_cli(["ingest", str(more), "--json"], env)
    assert ingest.returncode == 0, ingest.stderr
    report = json.loads(ingest.stdout)
    assert report["status"] == "done" and report["indexed"] == 2
    assert url in ingest.stderr  # the user is told where the job ran

    bad = run_cli(["search", "a jig", "-f", "tempo=fast"], env)
    assert bad.returncode == 2 and "unknown filter field 'tempo'" in bad.stderr

    outside = run_cli(["ingest", "/etc/hostname"], env)
    assert outside.returncode == 1 and "catalogue root" in outside.stderr

    second = run_cli(["serve", "--port", "0"], env, timeout=120)
    assert second.returncode == 1
    assert "already open in another process" in second.stderr, second.stderr
