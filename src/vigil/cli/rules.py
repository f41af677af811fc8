"""`vigil rules validate|test`: check rule files and run their example cases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vigil.cli._common import console, err_console, shown
from vigil.detect.cases import run_cases
from vigil.detect.rules.validate import describe, validate_paths

app = typer.Typer(no_args_is_help=True)

DEFAULT_RULES = Path("rules")
PathsArg = Annotated[
    list[Path] | None, typer.Argument(help="Rule files or directories (default: ./rules)", show_default=False)
]


@app.command("validate")
def validate(paths: PathsArg = None) -> None:
    """Check every rule file; report every problem with file:line:column and the expected form."""
    result = validate_paths(paths or [DEFAULT_RULES])
    for issue in result.issues:
        colour = "red" if issue.severity == "error" else "yellow"
        err_console.print(f"[{colour}]{shown(describe(issue))}[/]", soft_wrap=True)
    errors = len(result.errors)
    summary = f"{len(result.rules)} rule(s) and {len(result.cases)} case(s) in {len(result.files)} file(s)"
    if errors:
        err_console.print(f"[bold red]{errors} error(s)[/]; {summary} valid")
        raise typer.Exit(1)
    console.print(f"[green]ok[/]: {summary}")


@app.command("test")
def run_tests(paths: PathsArg = None) -> None:
    """Run each rule file's example cases (events in, expected alerts out) through its rules."""
    result = validate_paths(paths or [DEFAULT_RULES])
    if result.errors:
        for issue in result.errors:
            err_console.print(f"[red]{shown(describe(issue))}[/]", soft_wrap=True)
        err_console.print(f"[bold red]{len(result.errors)} validation error(s); fix them first[/]")
        raise typer.Exit(1)
    failed = 0
    for res in run_cases(result.cases, result.rules):
        if res.ok:
            console.print(f"[green]PASS[/] {shown(res.where)} {shown(res.case.name)}")
            continue
        failed += 1
        console.print(f"[red]FAIL[/] {shown(res.where)} {shown(res.case.name)}")
        for problem in res.problems:
            console.print(f"       {shown(problem, lines=True)}")
    total = len(result.cases)
    if failed:
        err_console.print(f"[bold red]{failed} of {total} case(s) failed[/]")
        raise typer.Exit(1)
    console.print(f"[green]{total} case(s) passed[/] ({len(result.rules)} rules)")
