"""``vigil run``: the whole platform in one process — connectors, normalise, detection.

Each part is what its own command runs (``vigil source``, ``vigil normalize``,
``vigil detect``), here in threads of one process for a single machine.  Every part is
a Kafka client in its own consumer group, so the same parts can be moved to separate
processes or machines (or run several times) without changing anything else.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from vigil.cli._common import MetricsPortOpt, console, serve_metrics_of, settings, shown, sigterm_interrupts
from vigil.cli.source import _options, build_connector, option_shown, run_connector, say_where_it_listens
from vigil.errors import ConfigError, VigilError
from vigil.hub import admin as topic_admin
from vigil.hub.broker import from_settings
from vigil.hub.client import check_reachable, make_admin
from vigil.hub.topics import TOPICS
from vigil.sources.registry import SOURCES
from vigil.sources.sink import KafkaRawSink, raw_topic
from vigil.stream.base import Guarantee


def _split_options(names: list[str], pairs: list[str]) -> dict[str, dict[str, str]]:
    """``--option coinbase.products=BTC-USD`` -> {"coinbase": {"products": "BTC-USD"}}."""
    out: dict[str, dict[str, str]] = {n: {} for n in names}
    for n, pair in enumerate(pairs, 1):
        target, dot, rest = pair.partition(".")
        if not dot or target not in out:
            # Named by its key, never its value: a mistyped source name, or one whose --source
            # was left out, is most often beside a client secret or a node URL holding its key.
            known = sorted(out) or "the --source names"
            msg = f"{option_shown(pair, n)}: expected SOURCE.KEY=VALUE with SOURCE one of {known}"
            raise ConfigError(msg)
        out[target].update(_options([rest], first=n))
    return out


#: Seconds each part has to stop once asked (after a last checkpoint of its own).
STOP_WAIT_S = 30.0


def run(
    source_names: Annotated[
        list[str] | None, typer.Option("--source", "-s", help="Also run this connector (repeatable).")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help="Connector option SOURCE.KEY=VALUE (repeatable)."),
    ] = None,
    rules: Annotated[Path, typer.Option(help="Rule file or directory.")] = Path("rules"),
    at_least_once: Annotated[
        bool,
        typer.Option(
            help="Lower latency; after a crash, duplicates downstream, and a detection rule "
            "counting sightings may count some twice."
        ),
    ] = False,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Run connectors, the normalise application and detection together until Ctrl-C."""
    from vigil.detect.app import DetectionService
    from vigil.detect.rules.validate import load_rules
    from vigil.sources.normalize import build

    names = list(source_names or [])
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        msg = f"unknown source(s) {unknown}; known: {', '.join(sorted(SOURCES))}"
        raise ConfigError(msg)
    options = _split_options(names, list(option or []))
    cfg = settings()
    # Connectors first: a bad option is an error before anything starts (built last, it raised
    # while normalise and detection ran in daemon threads, which the exit killed mid-transaction).
    connectors = [build_connector(name, cfg, options[name]) for name in names]
    # The rules too: loaded after the broker started and the topics were created, a missing or
    # invalid rule file left both behind for nothing.
    ruleset = load_rules([rules])
    # (Decided before the local broker's address is filled in, which makes it "external".)
    local = not cfg.uses_external_cluster
    if local:
        with (
            sigterm_interrupts(),
            console.status("starting the local Apache Kafka broker (KRaft) ..."),
        ):  # (17 s, silent)
            started = from_settings(cfg).start()
        cfg = cfg.model_copy(update={"kafka_bootstrap": started.bootstrap})
        console.print(f"[green]broker[/] Kafka {started.info.version} at {started.bootstrap}")
    check_reachable(cfg)
    # On an existing cluster, only what is missing is created: its topics' settings are its
    # operators' (`vigil topics apply` changes them when asked).
    topic_admin.apply(make_admin(cfg), TOPICS, cfg, alter_configs=local)
    guarantee: Guarantee = "at_least_once" if at_least_once else "exactly_once"

    stop = threading.Event()
    failures: list[BaseException] = []
    said: list[BaseException] = []  # (printed as their part failed: not printed again at the end)
    stoppers: list[Any] = []
    threads: list[threading.Thread] = []

    def guarded(name: str, target: Any) -> None:
        try:
            target()
        except BaseException as exc:  # a dead part stops the whole process, loudly
            failures.append(exc)
            try:
                # The message may quote what a node or a feed sent: printed as text (its markup
                # made links, or raised here and left the process running without the part).
                console.print(f"[red]{name} failed:[/] {shown(str(exc))}", highlight=False, soft_wrap=True)
                said.append(exc)
            finally:
                stop.set()

    def spawn(name: str, target: Any) -> None:
        thread = threading.Thread(target=guarded, args=(name, target), name=name, daemon=True)
        thread.start()
        threads.append(thread)

    normalize = build(cfg, guarantee=guarantee)
    service = DetectionService(cfg, ruleset, guarantee=guarantee)
    metrics = serve_metrics_of(
        cfg, metrics_port, lambda: [normalize, service.route_app, service.detect_app], connectors=True
    )
    if metrics is not None:
        stoppers.append(metrics.stop)
    # Before anything runs: a SIGTERM while detection loaded its intel (up to a minute) took
    # Python's default and killed the process, normalise mid-transaction, with no last checkpoint.
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stoppers.append(normalize.stop)
        spawn("normalize", normalize.run)
        service.start(abort=stop.is_set)
        stoppers.append(service.stop)
        if not stop.is_set():  # (asked to stop while detection started: no connector starts)
            for name, connector in zip(names, connectors, strict=True):
                sink = KafkaRawSink(
                    cfg, source_id=connector.source_id, topic_for=getattr(connector, "topic_for", raw_topic)
                )
                stoppers.append(connector.stop)
                spawn(f"source-{name}", lambda c=connector, s=sink: run_connector(c, s))
                say_where_it_listens(name, connector)
            console.print(
                f"running: {', '.join(names) or 'no connectors'} -> normalise -> detection "
                f"({len(service.rules)} rules, {guarantee}); Ctrl-C stops"
            )
        while not stop.wait(0.5):
            try:
                service.check()
            except BaseException as exc:
                failures.append(exc)
                break
    except BaseException as exc:  # detection did not start (or an interrupt): stop what runs
        failures.append(exc)
    finally:
        for stopper in reversed(stoppers):
            try:
                stopper()
            except BaseException as exc:  # every part is stopped; the first failure is raised after
                failures.append(exc)
        for thread in threads:
            thread.join(timeout=STOP_WAIT_S)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failures:
        first = failures[0]
        if isinstance(first, VigilError) and any(first is exc for exc in said):
            # Said already, with the part's name: raised, it was printed a second time as the
            # command's "error:" line.  (Anything else, a bug, keeps its traceback.)
            raise typer.Exit(1)
        raise first
    stuck = [thread.name for thread in threads if thread.is_alive()]
    if stuck:
        # Said, not "stopped": the process ends with them running (daemon threads), so what
        # they had not committed is not (Kafka aborts an open transaction; records are read again).
        msg = f"{', '.join(stuck)} did not stop within {STOP_WAIT_S:g}s; exiting with it running"
        raise VigilError(msg)
    # (The local broker is not this command's to stop: another command may be using it; said, as
    # its JVM runs on after the command ends, found in review.)
    console.print("stopped" + ("; the local broker runs on (`vigil broker stop` stops it)" if local else ""))
