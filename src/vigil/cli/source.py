"""``vigil source NAME`` runs one connector; ``vigil normalize`` runs the normalise application."""

from __future__ import annotations

import signal
import threading
from typing import Annotated, Any

import typer

from vigil.cli._common import console, settings
from vigil.errors import ConfigError
from vigil.hub.client import check_reachable
from vigil.sources.registry import SOURCES, source_class
from vigil.sources.sink import KafkaRawSink, raw_topic


def _options(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            msg = f"--option {pair!r}: expected KEY=VALUE (e.g. --option url=http://127.0.0.1:8545)"
            raise ConfigError(msg)
        out[key.strip().replace("-", "_")] = value
    return out


def _stop_on_signals(stop: Any) -> None:
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop())


def source(
    name: Annotated[str, typer.Argument(help="Connector name, e.g. ethereum, coinbase, hubspot, intel.")],
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="Connector option KEY=VALUE (repeatable).")
    ] = None,
) -> None:
    """Run one connector: it publishes what it receives, unchanged, to raw.<source>."""
    if name not in SOURCES:
        msg = f"unknown source {name!r}; known: {', '.join(sorted(SOURCES))}"
        raise ConfigError(msg)
    cfg = settings()
    connector = source_class(name).from_settings(cfg, **_options(option or []))
    check_reachable(cfg)  # a clear error when no broker answers, not a traceback
    # A connector may route some records elsewhere (the ingest API sends rejected lines to
    # dlq.ingest); by default everything goes to raw.<source>.
    sink = KafkaRawSink(
        cfg, source_id=connector.source_id, topic_for=getattr(connector, "topic_for", raw_topic)
    )
    _stop_on_signals(connector.stop)
    console.print(
        f"[green]{name}[/] -> {connector.default_topic} (source id {connector.source_id}); Ctrl-C stops"
    )
    try:
        connector.run(sink)
    finally:
        sink.close()


def normalize(
    source_names: Annotated[
        list[str] | None, typer.Option("--source", "-s", help="Only these sources (repeatable).")
    ] = None,
    at_least_once: Annotated[bool, typer.Option(help="Lower latency; duplicates possible.")] = False,
) -> None:
    """Run the normalise application: raw.<source> -> events.<domain>, rejects to dlq.normalize."""
    from vigil.sources.normalize import build

    cfg = settings()
    check_reachable(cfg)  # a clear error when no broker answers, not a traceback
    app = build(cfg, source_names, guarantee="at_least_once" if at_least_once else "exactly_once")
    console.print(
        f"normalising {', '.join(app.inputs) if hasattr(app, 'inputs') else 'raw topics'}; Ctrl-C stops"
    )
    app.run()
