"""The web page in headless Chromium against a real `clamp-index serve` over an embedded index.

Debian's chromium and chromedriver drive it (deploy/test.sh installs them); Selenium is given
the driver's path, so Selenium Manager never downloads a browser. Under CI a missing browser,
driver or abcjs fails the test, since a skip would hide a page nobody checked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import wave
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from orchestrator import web
from orchestrator.web import soundfont
from tests.conftest import CLI, IN_CI, REPO, run_cli
from tests.support.folk import copy_ryans_tunes

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACT = REPO / "tests" / "artifacts" / "web-page.png"
README_SHOT = REPO / "deploy" / "web-page.png"  # the copy the README shows
TUNES = 24
TOKEN = "web-page-test-token"
WAIT_S = 60


def _require(ok: bool, problem: str) -> None:
    if ok:
        return
    if IN_CI:
        pytest.fail(problem)
    pytest.skip(problem)


# No browser needed: the pins agree, and the offline soundfont makes real audio.


def test_abcjs_pin_is_the_same_everywhere() -> None:
    deploy = REPO / "deploy"
    venv_sh = (deploy / "_venv.sh").read_text()
    dockerfile = (deploy / "Dockerfile").read_text()
    assert re.search(rf"^ABCJS_VERSION={re.escape(web.ABCJS_VERSION)}$", venv_sh, re.M)
    assert re.search(rf"^ARG ABCJS_VERSION={re.escape(web.ABCJS_VERSION)}$", dockerfile, re.M)


def test_soundfont_notes_are_audible_wav() -> None:
    for name, hz in (("A4", 440.0), ("Bb3", 233.08), ("C4", 261.63)):
        assert soundfont.note_frequency(name) == pytest.approx(hz, abs=0.01)
        with wave.open(BytesIO(soundfont.note_wav(name))) as wav:
            assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
            assert wav.getnframes() == int(soundfont.SAMPLE_RATE * soundfont.NOTE_SECONDS)
            frames = wav.readframes(wav.getnframes())
        assert max(frames) > 0
    for bad in ("H4", "A#4", "../x", "A", "C99"):
        with pytest.raises(ValueError):
            soundfont.note_frequency(bad)


# The browser test.


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of `clamp-index serve` over two dozen folk tunes, with the shipped model.

    The shipped model rather than a random one: the screenshot in the README then shows
    what a user would see for "a lively jig".
    """
    root = tmp_path_factory.mktemp("web")
    corpus = root / "corpus"
    copy_ryans_tunes(corpus, TUNES)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAMP_INDEX_")}
    env.update(
        CLAMP_INDEX_DATA_DIR=str(root / "state"),
        CLAMP_INDEX_TORCH_THREADS="2",
        CLAMP_INDEX_API_TOKEN=TOKEN,
    )
    ingest = run_cli(["ingest", str(corpus), "--json"], env)
    assert ingest.returncode == 0, ingest.stderr
    assert json.loads(ingest.stdout)["indexed"] == TUNES

    port = _free_port()
    log = (root / "serve.log").open("w")
    proc = subprocess.Popen(
        [str(CLI), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            assert proc.poll() is None, (root / "serve.log").read_text()
            try:
                if _get_json(f"{base}/ready").get("ready"):
                    break
            except (OSError, urllib.error.URLError, ValueError):
                pass
            assert time.monotonic() < deadline, (root / "serve.log").read_text()
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _require(CHROMIUM.is_file(), f"no {CHROMIUM}: run `apt-get install -y chromium`")
    _require(CHROMEDRIVER.is_file(), f"no {CHROMEDRIVER}: run `apt-get install -y chromium-driver`")
    _require(web.abcjs_dir() is not None, web.ABCJS_HINT)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _require(False, "selenium is not installed: run `bash deploy/_venv.sh`")

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # containers run tests as root, where the sandbox cannot start
        "--disable-dev-shm-usage",
        "--window-size=1100,1250",
        "--hide-scrollbars",
        # Playback starts from a click, but headless has no real user gesture to unlock audio.
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition)
    except TimeoutException:
        banner = driver.find_element("id", "banner").text
        summary = driver.find_element("id", "summary").text
        pytest.fail(f"timed out waiting for {what}; banner={banner!r} summary={summary!r}")


def _results(driver: Any) -> list[Any]:
    return driver.find_elements("css selector", "#results .result")


def _all_rendered(driver: Any) -> bool:
    """Every result has its notation drawn as SVG (or said why not)."""
    results = _results(driver)
    if not results:
        return False
    for item in results:
        if item.get_attribute("data-rendered") != "true":
            if item.find_elements("css selector", ".notation.error"):
                raise AssertionError(item.find_element("css selector", ".notation").text)
            return False
    return len(driver.find_elements("css selector", "#results .result .notation svg")) == len(
        results
    )


def test_search_notation_playback_and_more_like_this(browser: Any, server: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    driver = browser
    driver.get(server + "/")
    assert driver.execute_script("return typeof window.ABCJS") == "object", "abcjs did not load"
    assert not driver.find_element("id", "abcjs-missing").is_displayed()
    assert not driver.find_element("id", "banner").is_displayed()

    driver.find_element("id", "q").send_keys("a lively jig")
    driver.find_element("id", "search-btn").click()
    _wait(driver, _all_rendered, "text search results with notation")
    results = _results(driver)
    assert len(results) == 10
    first = results[0]
    assert first.find_element("css selector", ".title").text
    assert re.fullmatch(r"-?\d\.\d{3}", first.find_element("css selector", ".score").text)
    meta = first.find_element("css selector", ".meta").text
    assert first.find_elements("css selector", ".meta-key"), meta
    assert "a lively jig" in driver.find_element("id", "summary").text

    # Sound comes from the server's own soundfont: the test machine has no internet.
    first.find_element("css selector", ".play").click()
    status = first.find_element("css selector", ".play-status")
    _wait(driver, lambda _: status.text not in ("", "loading sounds…"), "playback to start")
    assert status.text == "playing", status.text
    assert first.get_attribute("data-playing") == "true"
    first.find_element("css selector", ".play").click()
    assert first.get_attribute("data-playing") == "false"

    source_id = first.get_attribute("data-piece-id")
    source_title = first.find_element("css selector", ".title").text
    first.find_element("css selector", ".more-like-this").click()
    _wait(
        driver,
        lambda d: "tunes like" in d.find_element("id", "summary").text and _all_rendered(d),
        "'more like this' results with notation",
    )
    assert source_title in driver.find_element("id", "summary").text
    similar_ids = [item.get_attribute("data-piece-id") for item in _results(driver)]
    assert similar_ids and source_id not in similar_ids

    requested = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert requested and all(url.startswith(server) for url in requested), requested

    # Away from the buttons, so that no hover highlight ends up in the README's picture.
    ActionChains(driver).move_to_element(driver.find_element("tag name", "h1")).perform()
    driver.execute_script("window.scrollTo(0, 0)")
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACT))
    assert ARTIFACT.stat().st_size < 250_000, "the README copy should stay small"
    if os.environ.get("CLAMP_INDEX_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(ARTIFACT, README_SHOT)  # only on request: CI leaves the clone clean


def test_search_by_example_and_ingest_progress(browser: Any, server: str, tmp_path: Path) -> None:
    driver = browser
    driver.get(server + "/")
    example = copy_ryans_tunes(tmp_path / "example", 1)[0]
    driver.find_element("id", "example-file").send_keys(str(example))
    _wait(
        driver,
        lambda d: (
            f"tunes like {example.name}" in d.find_element("id", "summary").text
            and _all_rendered(d)
        ),
        "search-by-example results",
    )

    # A wrong token is refused with the API's own message, and nothing starts.
    token = driver.find_element("id", "token")
    token.send_keys("not-the-token")
    new_tune = copy_ryans_tunes(tmp_path / "new", 1, skip=TUNES)[0]
    driver.find_element("id", "ingest-files").send_keys(str(new_tune))
    banner = driver.find_element("id", "banner")
    _wait(driver, lambda _: banner.is_displayed() and banner.text, "the token error")
    assert "Token refused" in banner.text, banner.text

    token.clear()
    token.send_keys(TOKEN)
    driver.find_element("id", "ingest-files").send_keys(str(new_tune))
    job = driver.find_element("id", "job")
    _wait(
        driver,
        lambda _: job.get_attribute("data-status") in {"done", "failed", "interrupted"},
        "the ingest job to end",
    )
    assert job.get_attribute("data-status") == "done", job.text
    assert driver.find_element("id", "job-pieces-text").text == "1 / 1"
    assert driver.execute_script("return localStorage.getItem('clamp-index-token')") == TOKEN
