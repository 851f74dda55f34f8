"""The web page: its own files, abcjs from the npm install, and an offline soundfont.

abcjs is not in the repository: deploy/_venv.sh installs it from the npm registry under the
venv (the Dockerfile copies the same `dist/` into the image), and `abcjs_dir()` finds it.
abcjs's synth fetches one audio file per note from a soundfont URL on the internet; the page
points it at `/soundfont/` instead, where `soundfont.note_wav` makes each note, so playback
needs no network.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# Pinned here and in deploy/_venv.sh and deploy/Dockerfile (tests/test_web_page.py checks).
ABCJS_VERSION = "6.7.2"
WEB_PREFIX = Path(sys.prefix) / "share" / "clamp-index" / "web"
ABCJS_SCRIPT = "abcjs-basic-min.js"
ABCJS_HINT = (
    f"abcjs {ABCJS_VERSION} is not installed: run `bash deploy/_venv.sh` (needs npm), or "
    f"`npm install --prefix {WEB_PREFIX} abcjs@{ABCJS_VERSION}`"
)


def static_dir() -> Path:
    """The page's own files (index.html, app.js, style.css), shipped as package data."""
    return Path(__file__).resolve().parent / "static"


def abcjs_dir() -> Path | None:
    """abcjs's `dist/` folder under the venv, or None when setup did not install it."""
    dist = WEB_PREFIX / "node_modules" / "abcjs" / "dist"
    return dist if (dist / ABCJS_SCRIPT).is_file() else None


def mount(app: Any) -> None:
    """Serve the page on a FastAPI app: `/`, `/static/...`, `/static/abcjs/...`, `/soundfont/...`.

    Without abcjs the page still loads and says what to run; its script URL answers 404 with
    the same hint as JSON.
    """
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles

    from orchestrator.web.soundfont import note_wav

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(static_dir() / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/soundfont/{instrument}-mp3/{note}.mp3", include_in_schema=False)
    def soundfont_note(instrument: str, note: str) -> Response:
        try:
            body = note_wav(note)
        except ValueError as exc:
            return JSONResponse({"error": str(exc), "status": 404}, status_code=404)
        return Response(
            body, media_type="audio/wav", headers={"Cache-Control": "public, max-age=86400"}
        )

    found = abcjs_dir()
    if found is not None:
        app.mount("/static/abcjs", StaticFiles(directory=found), name="abcjs")
    else:

        @app.get("/static/abcjs/{path:path}", include_in_schema=False)
        def abcjs_missing(path: str) -> JSONResponse:
            return JSONResponse({"error": ABCJS_HINT, "status": 404}, status_code=404)

    app.mount("/static", StaticFiles(directory=static_dir()), name="static")
