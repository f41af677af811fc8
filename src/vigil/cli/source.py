"""``vigil source NAME`` runs one connector; ``vigil normalize`` runs the normalise application."""

from __future__ import annotations

import re
import signal
import threading
from typing import Annotated, Any

import typer

from vigil.cli._common import MetricsPortOpt, console, serve_metrics_of, settings, shown
from vigil.config import Settings
from vigil.errors import ConfigError, SourceError, VigilError
from vigil.hub.client import check_reachable
from vigil.sources.base import Source
from vigil.sources.registry import NORMALIZERS, SOURCES, source_class
from vigil.sources.sink import KafkaRawSink, raw_topic


def _options(pairs: list[str], *, first: int = 1) -> dict[str, str]:
    """``KEY=VALUE`` pairs as a dict; ``first``: the number of the first pair on the command line."""
    out: dict[str, str] = {}
    for n, pair in enumerate(pairs, first):
        key, sep, value = pair.partition("=")
        # (A key that is no option name is refused here: named by the connector as an unknown
        # option, a node URL given without ``url=`` but with a query printed its API key.)
        if not sep or not _KEY.fullmatch(key.strip()):
            msg = f"{option_shown(pair, n)}: expected KEY=VALUE (e.g. --option url=http://127.0.0.1:8545)"
            raise ConfigError(msg)
        out[key.strip().replace("-", "_")] = value
    return out


#: What an option's key looks like (``url``, ``client_secret``, ``hubspot.port`` under ``vigil run``).
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)?")


def option_shown(pair: str, n: int) -> str:
    """The ``n``-th ``--option`` as an error names it: by its key, its value as ``<hidden>``.
    Which value is a secret cannot be told from a key that is mistyped (``clinet_secret``,
    ``rpc_pasword``), and what is not a key at all may be nothing but a secret (``secret:...``,
    a node URL whose query holds an ``=``), so such a pair is named by its position alone."""
    key, sep, _ = pair.partition("=")
    if not sep or not _KEY.fullmatch(key.strip()):
        return f"--option number {n} (of those given)"
    return f"--option {key.strip()}=<hidden>"


def build_connector(name: str, cfg: Settings, options: dict[str, str]) -> Any:
    """The connector ``name`` built from its options; a bad option ends the command in one line.

    Connectors check their options as they are built, and some say so with a ValueError (no
    product ids, a negative confirmation depth, a number that is not one) or an OSError (a
    keys file that is not there): those are the user's mistakes, not Vigil's, so they become a
    ConfigError naming the source and the option instead of a traceback."""
    try:
        connector = source_class(name).from_settings(cfg, **options)
    except VigilError:
        raise
    except OSError as exc:
        if exc.filename is None:
            msg = f"source {name}: {exc.strerror or exc}"
            raise ConfigError(msg) from None
        given = [key for key, value in options.items() if value == str(exc.filename)]
        option = f"option {given[0]}={options[given[0]]!r}" if given else f"file {str(exc.filename)!r}"
        msg = (
            f"source {name}: {option}: cannot read it ({exc.strerror or exc}); "
            "expected an existing, readable file"
        )
        raise ConfigError(msg) from None
    except ValueError as exc:
        raise ConfigError(_option_problem(name, options, str(exc))) from None
    hint = acl_mismatch(connector)
    if hint is not None:
        console.print(f"[yellow]warning:[/] {shown(hint)}")
    return connector


def acl_mismatch(connector: Any) -> str | None:
    """Why a secured cluster would refuse ``connector``'s source id, if it would.

    Vigil's ACLs (``vigil topics acls``) let a raw topic's connectors use the transactional ids
    and cursor topics named after it (prefixed: ``backend-orders`` is one of ``backend``'s),
    so an id of another name (``orders``) runs on a local broker and is refused by the broker
    at start under the ACLs: said before, with the name that would work."""
    component = str(connector.default_topic).removeprefix("raw.")
    source_id = str(connector.source_id)
    if source_id.startswith(component):
        return None
    return (
        f"source id {source_id!r} does not start with {component!r}: under Vigil's ACLs "
        f"(vigil topics acls) source-{component} may use only the transactional ids "
        f"vigil.source.{component}* and the cursor topics vigil.cursors.{component}*, so a "
        f"secured cluster refuses this one; name it {component}-<something> there"
    )


def _option_problem(name: str, options: dict[str, str], text: str) -> str:
    # The connectors' own messages start with their name ("coinbase: ...", "ethereum source:
    # ..."): said once.  A bare conversion error ("could not convert string to float: 'x'")
    # names no option, so the option holding the value it quotes is named.
    for prefix in (f"{name} source: ", f"{name}: "):
        text = text.removeprefix(prefix)
    if text.startswith("could not convert string to float"):
        text = f"expected a number ({text})"
    elif text.startswith("invalid literal for int()"):
        text = f"expected a whole number ({text})"
    named = [key for key in options if key in text]
    # Secrets' values are never repeated (a bad port beside a client secret printed the secret);
    # a secret's value quoted by the error is no hint to which option is wrong.
    shown = {key: "<hidden>" if _secret_option(key) else repr(value) for key, value in options.items()}
    quoting = [
        key for key, value in options.items() if value and repr(value) in text and not _secret_option(key)
    ]
    if quoting and not named:
        text = f"option {quoting[0]}={shown[quoting[0]]}: {text}"
    elif not named and options:
        given = ", ".join(f"{key}={value}" for key, value in shown.items())
        text = f"{text} (options given: {given})"
    return f"source {name}: {text}"


#: Option names that carry a credential (a node URL holds its API key in the path).
_SECRET_WORDS = ("secret", "token", "password", "key", "url", "auth", "credential")


def _secret_option(key: str) -> bool:
    return any(word in key.lower() for word in _SECRET_WORDS)


def _stop_on_signals(stop: Any) -> None:
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop())


def say_where_it_listens(name: str, connector: Source) -> None:
    """Say where a receiver (syslog, webhooks, the ingest API) listens once it does, from a
    thread of its own: its port may be any free one (0), known to no one before."""
    if type(connector).listening is Source.listening:  # (not a receiver)
        return

    def say() -> None:
        while connector.running:
            where = connector.listening(0.5)
            if where is not None:
                console.print(f"[green]{name}[/] listening on {shown(where)}", highlight=False)
                return

    threading.Thread(target=say, name=f"{name}-listening", daemon=True).start()


def run_connector(connector: Source, sink: KafkaRawSink) -> None:
    """``connector.run(sink)``, the sink's producer started first (:meth:`KafkaRawSink.prepare`)."""
    sink.prepare()
    connector.run(sink)


def source(
    name: Annotated[str, typer.Argument(help="Connector name, e.g. ethereum, coinbase, hubspot, intel.")],
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="Connector option KEY=VALUE (repeatable).")
    ] = None,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Run one connector: it publishes what it receives, unchanged, to raw.<source>."""
    if name not in SOURCES:
        msg = f"unknown source {name!r}; known: {', '.join(sorted(SOURCES))}"
        raise ConfigError(msg)
    cfg = settings()
    connector = build_connector(name, cfg, _options(option or []))
    check_reachable(cfg)  # a clear error when no broker answers, not a traceback
    # (Its counters: a websocket feed's sequence gaps and reconnects.  A port in use fails here.)
    metrics = serve_metrics_of(cfg, metrics_port, lambda: (), connectors=True)
    # A connector may route some records elsewhere (the ingest API sends rejected lines to
    # dlq.ingest); by default everything goes to raw.<source>.
    sink = KafkaRawSink(
        cfg, source_id=connector.source_id, topic_for=getattr(connector, "topic_for", raw_topic)
    )
    _stop_on_signals(connector.stop)
    console.print(
        f"[green]{name}[/] -> {connector.default_topic} (source id {connector.source_id}); Ctrl-C stops"
    )
    say_where_it_listens(name, connector)
    try:
        run_connector(connector, sink)
    finally:
        sink.close()
        if metrics is not None:
            metrics.stop()
    if getattr(connector, "drained", None) is False:
        # A receiver stopped with what it had accepted still unpublished (the broker out of
        # reach): said in its log line, and now in the exit code too (it was 0).
        msg = f"source {name}: stopped with accepted records not published to Kafka (see the log above)"
        raise SourceError(msg)


def normalize(
    source_names: Annotated[
        list[str] | None, typer.Option("--source", "-s", help="Only these sources (repeatable).")
    ] = None,
    at_least_once: Annotated[bool, typer.Option(help="Lower latency; duplicates possible.")] = False,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Run the normalise application: raw.<source> -> events.<domain>, rejects to dlq.normalize."""
    from vigil.sources.normalize import build

    # Checked before the broker is asked: an unknown name was refused only once one answered.
    unknown = [n for n in source_names or [] if n not in NORMALIZERS]
    if unknown:
        known = ", ".join(sorted(NORMALIZERS))
        msg = f"--source {', '.join(unknown)}: no normaliser by that name; known: {known}"
        raise ConfigError(msg)
    cfg = settings()
    check_reachable(cfg)  # a clear error when no broker answers, not a traceback
    app = build(cfg, source_names, guarantee="at_least_once" if at_least_once else "exactly_once")
    # (Served as by `vigil detect` and `vigil run`: moved to a process of its own, normalise's lag
    # went unseen, and a VIGIL_METRICS_PORT set for every process was ignored here.)
    metrics = serve_metrics_of(cfg, metrics_port, lambda: [app])
    console.print(f"normalising {', '.join(app.inputs)}; Ctrl-C stops")
    try:
        app.run()
    finally:
        if metrics is not None:
            metrics.stop()
        # (As vigil detect says its totals: a stop said nothing of what was done; found in review.)
        m = app.metrics
        console.print(f"processed {m.processed} records; {m.dead_lettered} dead-lettered to {app.dlq_topic}")
