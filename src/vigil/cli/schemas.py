"""`vigil schemas export|check`: the JSON Schema contract files generated from the models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vigil.cli._common import console, err_console, shown
from vigil.events import schema

app = typer.Typer(no_args_is_help=True)


@app.command("export")
def export(directory: Annotated[Path, typer.Argument()] = Path("schemas")) -> None:
    """Write one JSON Schema file per event type and record."""
    files = schema.export(directory)
    console.print(f"wrote {len(files)} schema files to {shown(str(directory))}")


@app.command("check")
def check(directory: Annotated[Path, typer.Argument()] = Path("schemas")) -> None:
    """Fail if the committed schema files differ from the models."""
    if not directory.is_dir():
        # "Out of date" with every file's name, and advice that would make the mistyped directory.
        err_console.print(
            f"[red]no schema directory {shown(str(directory))}[/] (relative to {shown(str(Path.cwd()))}); "
            "expected the directory of the committed schema files (schemas, by default)"
        )
        raise typer.Exit(code=1)
    drift = schema.drift(directory)
    if drift:
        err_console.print(f"[red]schemas out of date (run `vigil schemas export`):[/] {', '.join(drift)}")
        raise typer.Exit(code=1)
    console.print("[green]schemas match the models[/]")
