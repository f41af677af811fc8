"""The ``vigil`` command line: a thin adapter over the library.

Each command group lives in its own module and is registered here, explicitly.
Settings are loaded once, at the entry point, and handed down through the Typer context.
"""

from __future__ import annotations

import typer
from rich.markup import escape

from vigil import __version__
from vigil.cli import broker, demo, detect, dlq, release, rules, run, schemas, source, topics
from vigil.cli._common import console, err_console, run_guarded
from vigil.cli.simulate import simulate
from vigil.compiled import stale, stale_message

app = typer.Typer(
    name="vigil",
    help="Vigil: real-time threat intelligence and fraud detection on Apache Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# The explicit registry of command groups and top-level commands.
app.add_typer(broker.app, name="broker", help="Run the local Apache Kafka broker (KRaft, no Docker).")
app.add_typer(
    topics.app, name="topics", help="Declared topics: apply, compare with the live cluster, access (ACLs)."
)
app.add_typer(schemas.app, name="schemas", help="JSON Schema contract files generated from the models.")
app.command("produce", help="Validate a JSONL file against a topic's contract and produce it.")(
    topics.produce
)
app.command("tail", help="Read a topic, decoded, with partition/offset/key.")(topics.tail)
app.add_typer(dlq.app, name="dlq", help="Dead letters: group them by reason, send them through again.")
app.command(
    "demo",
    help="The Quickstart: a simulated exchange through detection on Kafka, live alerts, a score table.",
)(demo.demo)
app.command("simulate", help="Simulate an exchange with injected, labelled attacks.")(simulate)
app.add_typer(rules.app, name="rules", help="Check rule files and run their example cases.")
app.command("detect", help="Run detection: canonical topics -> alerts and decisions.")(detect.detect)
app.command("eval", help="Detection quality per scenario against the simulator's ground truth.")(detect.eval_)
app.command("release", help="Release an alert's holds, blocks and step-ups, saying who and why.")(
    release.release
)
app.command("run", help="Connectors, normalise and detection together in one process.")(run.run)
app.command("source", help="Run one connector: publish what it receives to raw.<source>.")(source.source)
app.command("normalize", help="Run the normalise application: raw.<source> -> events.<domain>.")(
    source.normalize
)


@app.command("version")
def version() -> None:
    """Print Vigil's version."""
    console.print(f"vigil {__version__}")


def main() -> None:
    old = stale()
    if old:
        err_console.print(f"[yellow]warning:[/yellow] {escape(stale_message(old))}")
    run_guarded(app)
