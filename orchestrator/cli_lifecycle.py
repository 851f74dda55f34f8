"""`clamp-index reindex | rollback | collections | models ...`: parse, call, render."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from orchestrator.cli_options import DataDirOpt, JsonOpt


def register(app: typer.Typer) -> None:
    """Add the lifecycle commands to the main app (called once cli.py defines its helpers)."""
    from orchestrator import cli as base

    def print_json(value: Any) -> None:
        print(json.dumps(value, default=str))

    @app.command()
    def reindex(
        model: Annotated[
            str | None,
            typer.Option(
                "--model",
                help="Registered model (id, NAME or NAME:VERSION) or a checkpoint directory; "
                "default: the active model.",
            ),
        ] = None,
        data_dir: DataDirOpt = None,
        as_json: JsonOpt = False,
        wait: Annotated[
            bool, typer.Option("--wait/--no-wait", help="Distributed mode: wait for the swap.")
        ] = True,
    ) -> None:
        """Fill a new collection from the indexed pieces, check it, then swap the alias to it."""
        from orchestrator.reindex import reindex as run_reindex

        settings = base._settings(data_dir)
        show = not as_json and base.err.is_terminal
        with base._progress(show) as progress, base._stop_signals():
            result = run_reindex(
                settings, model, on_progress=base._JobBars(progress).update, wait=wait
            )
        if as_json:
            print_json(result.to_dict())
            return
        base.out.print(
            f"reindex job {result.job_id}: {result.status} ({result.phase}); "
            f"{result.collection} serves {result.pieces} pieces with {result.model} "
            f"(was {result.previous}) in {result.seconds:.1f} s"
        )

    @app.command()
    def rollback(
        to: Annotated[
            str | None, typer.Option("--to", help="Swap to this collection instead.")
        ] = None,
        data_dir: DataDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Swap the alias back to the collection that served before the current one."""
        from orchestrator.reindex import rollback as run_rollback

        result = run_rollback(base._settings(data_dir), to)
        if as_json:
            print_json(result.to_dict())
            return
        base.out.print(f"{result.active} serves again ({result.model}); was {result.previous}")

    @app.command()
    def collections(data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
        """Every collection built: model, points, state, when created and activated."""
        from orchestrator.reindex import list_collections

        rows = list_collections(base._settings(data_dir))
        if as_json:
            print_json([r.to_dict() for r in rows])
            return
        table = Table("", "collection", "model", "state", "points", "created", "activated")
        for r in rows:
            table.add_row(
                "*" if r.active else "",
                r.name,
                r.model,
                r.state,
                "-" if r.points is None else str(r.points),
                f"{r.created_at:%Y-%m-%d %H:%M}",
                f"{r.activated_at:%Y-%m-%d %H:%M}" if r.activated_at else "",
            )
        base.out.print(table)

    @app.command()
    def train(
        from_model: Annotated[
            str | None,
            typer.Option("--from", help="Start from this model (default: the active one)."),
        ] = None,
        steps: Annotated[
            int | None, typer.Option("--steps", min=1, help="Optimiser steps (train_steps).")
        ] = None,
        seed: Annotated[int, typer.Option("--seed")] = 0,
        promote: Annotated[
            bool,
            typer.Option("--promote/--no-promote", help="Reindex with the model if it wins."),
        ] = True,
        data_dir: DataDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Fine-tune on the catalogue's own pieces; promote only if it beats the active model."""
        from orchestrator.lifecycle import retrain

        settings = base._settings(data_dir)
        show = not as_json and base.err.is_terminal
        with base._progress(show) as progress, base._stop_signals():
            result = retrain(
                settings,
                from_model=from_model,
                steps=steps,
                seed=seed,
                promote=promote,
                on_progress=base._PhaseBar(progress).update,
            )
        if as_json:
            print_json(result.to_dict())
        else:
            base.out.print(
                f"train job {result.job_id}: {result.status}; candidate {result.candidate}: "
                f"{result.reason or result.error}"
            )
            if result.reindex:
                base.out.print(
                    f"reindex job {result.reindex_job_id}: {result.reindex['status']} -> "
                    f"{result.reindex['collection']}"
                )
        if result.status == "failed":
            raise typer.Exit(1)

    models_app = typer.Typer(help="The model registry: list, show, register, promote, retire.")
    app.add_typer(models_app, name="models")

    @models_app.command("list")
    def models_list(data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
        """Registered models with their status and headline metrics."""
        from orchestrator import models

        rows = models.list_models(base._settings(data_dir))
        if as_json:
            print_json([r.to_dict() for r in rows])
            return
        table = Table("id", "name", "version", "status", "parent", "pieces", "collections")
        for r in rows:
            table.add_row(
                str(r.id),
                r.name,
                r.version,
                r.status,
                str(r.parent_id or ""),
                str(r.data_snapshot.get("pieces", "")),
                ", ".join(r.collections),
            )
        base.out.print(table)

    @models_app.command("show")
    def models_show(
        ref: Annotated[str, typer.Argument(help="id, NAME or NAME:VERSION")],
        data_dir: DataDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """One model: files, parent, data snapshot, parameters, metrics, notes."""
        from orchestrator import models

        info = models.show(base._settings(data_dir), ref)
        if as_json:
            print_json(info.to_dict())
            return
        table = Table("field", "value", show_header=False)
        for key, value in info.to_dict().items():
            table.add_row(key, json.dumps(value) if isinstance(value, dict | list) else str(value))
        base.out.print(table)

    @models_app.command("register")
    def models_register(
        model_dir: Annotated[Path, typer.Argument(help="A CLaMP checkpoint directory.")],
        in_place: Annotated[
            bool,
            typer.Option(
                "--in-place",
                help="Use the directory where it is (every worker must read it there) "
                "instead of copying it into the model store.",
            ),
        ] = False,
        tokenizer_dir: Annotated[
            Path | None, typer.Option("--tokenizer-dir", help="Its text tokenizer, if separate.")
        ] = None,
        data_dir: DataDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Add a checkpoint (the shipped model, a published CLaMP one, a trained one)."""
        from orchestrator import models

        settings = base._settings(data_dir, writes=True)
        info = models.register(settings, model_dir, copy=not in_place, tokenizer_dir=tokenizer_dir)
        if as_json:
            print_json(info.to_dict())
            return
        base.out.print(
            f"model {info.id}: {info.name}:{info.version} ({info.status}) at {info.path}"
        )

    @models_app.command("promote")
    def models_promote(
        ref: Annotated[str, typer.Argument(help="id, NAME or NAME:VERSION")],
        data_dir: DataDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Make a model serve: a blue/green reindex with it, swapped in when it checks out."""
        reindex(model=ref, data_dir=data_dir, as_json=as_json, wait=True)

    @models_app.command("retire")
    def models_retire(
        ref: Annotated[str, typer.Argument(help="id, NAME or NAME:VERSION")],
        data_dir: DataDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Mark a model retired (not the active one)."""
        from orchestrator import models

        info = models.retire(base._settings(data_dir), ref)
        if as_json:
            print_json(info.to_dict())
            return
        base.out.print(f"model {info.id}: {info.name}:{info.version} retired")
