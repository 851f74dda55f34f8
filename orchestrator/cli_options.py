"""Options and settings loading shared by the command modules of `clamp-index`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from schemas.settings import Settings, load_settings
from workers.database import require_existing

DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="State directory (default ./.clamp-index or CLAMP_INDEX_DATA_DIR)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
TopKOpt = Annotated[int, typer.Option("-k", "--top-k", min=1, max=1000, help="Results to return.")]
FilterOpt = Annotated[
    list[str] | None,
    typer.Option("--filter", "-f", help="Payload filter FIELD=VALUE (e.g. meter=6/8); repeatable."),
]


def command_settings(data_dir: Path | None, *, writes: bool = False) -> Settings:
    """Settings for a command; only commands that write may create the data dir."""
    settings = load_settings(data_dir)
    if writes:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    else:
        require_existing(settings.resolved_database_url())
    return settings
