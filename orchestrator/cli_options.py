"""Options shared by the command modules of `clamp-index`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
