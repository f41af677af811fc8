"""Shared pieces of the CLI: the console, settings loading, and error rendering."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from vigil.config import Settings, load_settings
from vigil.errors import VigilError

console = Console()
err_console = Console(stderr=True)


def settings() -> Settings:
    """Load settings once per command; a bad setting ends the command with its name."""
    return load_settings()


def run_guarded(app: typer.Typer) -> None:
    """Run the Typer app; Vigil errors end with a one-line message and exit code 1, not a traceback."""
    try:
        app()
    except VigilError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        sys.exit(1)
