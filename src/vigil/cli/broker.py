"""``vigil broker``: the local Apache Kafka broker (KRaft, official jars, no Docker)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from vigil.cli._common import console, err_console, plain, settings, sigterm_interrupts
from vigil.config import Settings
from vigil.errors import BrokerError
from vigil.hub.broker import LocalBroker, from_settings

app = typer.Typer(no_args_is_help=True)


def _local(cfg: Settings, action: str) -> LocalBroker | None:
    """The local broker, or None (with a note) when an external cluster is configured."""
    if cfg.uses_external_cluster:
        err_console.print(
            f"VIGIL_KAFKA_BOOTSTRAP is set ({cfg.kafka_bootstrap}): using that cluster; "
            f"`broker {action}` manages only the local broker and does nothing."
        )
        return None
    return from_settings(cfg)


@app.command("start")
def start(
    nodes: Annotated[
        int | None,
        typer.Option(help="Combined broker+controller nodes (default: the running cluster's, else 1)."),
    ] = None,
    reformat: Annotated[
        bool,
        typer.Option(
            "--reformat",
            help="Delete the stopped local cluster's data (every topic) and make it anew with the "
            "nodes, host and port asked for.",
        ),
    ] = False,
) -> None:
    """Start the local broker (or find it running); returns once it answers a metadata request."""
    cfg = settings()
    broker = _local(cfg, "start")
    if broker is None:
        return
    with sigterm_interrupts(), console.status("starting Apache Kafka (KRaft) ..."):
        result = broker.start(nodes=nodes, reformat=reformat)
    verb = "already running" if result.already_running else f"started in {result.seconds:.1f}s"
    console.print(
        f"Kafka {result.info.version} {verb}: bootstrap [bold]{result.bootstrap}[/] "
        f"({result.info.nodes} node{'s' if result.info.nodes > 1 else ''}, data in {broker.data_root})"
    )


@app.command("stop")
def stop() -> None:
    """Shut the local broker down cleanly (controlled shutdown, then kill after a timeout)."""
    cfg = settings()
    broker = _local(cfg, "stop")
    if broker is None:
        return
    stopped = broker.stop()
    console.print(f"stopped node(s) {stopped}" if stopped else "no local broker was running")


@app.command("status")
def status() -> None:
    """Up or down, version, nodes and topic count."""
    cfg = settings()
    if cfg.uses_external_cluster:
        from vigil.hub.client import check_reachable, make_admin

        brokers = check_reachable(cfg)
        topics = len([t for t in make_admin(cfg).list_topics(timeout=10).topics if not t.startswith("__")])
        console.print(f"external cluster {cfg.kafka_bootstrap}: up, {brokers} broker(s), {topics} topics")
        return
    broker = from_settings(cfg)
    state = broker.status()
    if not state.up or state.info is None:
        console.print(f"local broker: [bold]down[/] (home {broker.home})")
        raise typer.Exit(3)
    info = state.info
    uptime = time.time() - info.started_at
    console.print(
        f"local broker: [bold green]up[/], Kafka {info.version}, bootstrap {info.bootstrap}, "
        f"nodes running {list(state.nodes_running)}/{info.nodes}, "
        f"topics {state.topics if state.topics is not None else 'unknown'}, "
        f"formatted {uptime / 60:.0f} min ago"
    )


@app.command("logs")
def logs(
    node: Annotated[int, typer.Option(min=1, help="Which node's log.")] = 1,
    lines: Annotated[int, typer.Option("-n", "--lines", min=1, help="How many last lines.")] = 50,
    path_only: Annotated[bool, typer.Option("--path", help="Print the log file's path only.")] = False,
) -> None:
    """The last lines of a node's server log."""
    broker = from_settings(settings())
    log: Path = broker.log_path(node)
    if path_only:
        console.print(str(log))
        return
    if not log.exists():
        msg = f"no log for node {node} at {log}; has the broker been started?"
        raise BrokerError(msg)
    # The node's own text, which quotes what clients sent (topic names, principals): inert.
    console.print(plain(broker.tail(node, lines), lines=True), markup=False, highlight=False, soft_wrap=True)
