"""``vigil demo``: the Quickstart's main job on local defaults.

1. Starts the project's own broker (unless ``VIGIL_KAFKA_BOOTSTRAP`` points elsewhere) and
   applies the declared topics.
2. Loads the real OFAC and scam/drainer lists into the indicator topic.
3. Starts detection (the route and detect stream applications) as Kafka consumer groups.
4. Runs the simulated exchange at a watchable pace (a simulated day per minute by default),
   with every attack scenario and the benign look-alikes, into the canonical topics.
5. Prints alerts and hold decisions live as detection writes them to Kafka, and at the end
   a per-scenario table: recall, precision, time to detect, holds before funds left.

Every run uses topics and consumer groups of its own (``demo-<run>.`` prefix), so a
second run is not affected by the first and the table is reproducible for a seed.
"""

from __future__ import annotations

import glob
import logging
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from confluent_kafka import KafkaException, Message
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from vigil.cli._common import console, settings, sigterm_interrupts
from vigil.cli._lines import alert_line, decision_line
from vigil.config import Settings
from vigil.detect.app import DetectionService, DetectTopology
from vigil.detect.eval import EvalResult, intel_for, score
from vigil.detect.rules.validate import load_rules
from vigil.events.codec import EventCodec
from vigil.events.types import Alert, Decision
from vigil.hub import admin as topic_admin
from vigil.hub.answers import wait_answered
from vigil.hub.broker import from_settings
from vigil.hub.client import EventProducer, check_reachable, make_admin, make_consumer
from vigil.hub.topics import DOMAINS, TOPICS, TopicSpec
from vigil.sim import SimConfig, Simulation
from vigil.sim.publish import SimPublisher

log = logging.getLogger(__name__)

REPO_RULES = Path("rules")


#: How long a decision read before its alert waits to be printed under it (the two topics are
#: read side by side, so a decision may come first); past that it is printed alone.
DECISION_WAITS_S = 2.0


class _AlertWatcher:
    """Reads alerts and decisions from Kafka as detection commits them, printing each once, a
    decision under its alert (printed as they came, a hold could be many lines from the alert
    it belongs to: an analyst's-view review)."""

    def __init__(
        self, cfg: Settings, alerts: str, decisions: str, quiet: bool, group: str | None = None
    ) -> None:
        self.alerts: dict[str, Alert] = {}
        self.decisions: dict[str, Decision] = {}
        #: Decisions read before their alert, by alert id: (when read, decision).
        self._waiting: dict[str, list[tuple[float, Decision]]] = {}
        self.last_seen = time.monotonic()
        self._quiet = quiet
        self._stop = threading.Event()
        self._codec = EventCodec([Alert, Decision])
        self._consumer = make_consumer(cfg, group_id=group or f"vigil-demo-watch-{uuid.uuid4().hex[:8]}")
        self._consumer.subscribe([alerts, decisions])
        self._thread = threading.Thread(target=self._run, name="demo-alerts", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._take(self._consumer.consume(500, timeout=0.2))
        finally:
            # (Here, not in stop(): only this thread touches what waits.)
            self._show_waiting(float("inf"))

    def _take(self, msgs: list[Message]) -> None:
        """Print a batch: each new alert with the decisions that name it under it, whichever
        was read first (detection sends the alert first, and a batch holds one partition's
        records after another's: several alerts, then their holds)."""
        fresh: list[Alert] = []
        for msg in msgs:
            if msg.error() or msg.value() is None:
                continue
            event = self._codec.decode(msg.value(), where=f"{msg.topic()}@{msg.offset()}")
            self.last_seen = time.monotonic()
            if isinstance(event, Alert) and event.event_id not in self.alerts:
                self.alerts[event.event_id] = event
                fresh.append(event)
            elif isinstance(event, Decision) and event.event_id not in self.decisions:
                self.decisions[event.event_id] = event
                self._waiting.setdefault(event.payload.alert_id, []).append((time.monotonic(), event))
        for alert in fresh:
            self._show_alert(alert)
            for _, decision in self._waiting.pop(alert.event_id, []):
                self._show_decision(decision)
        # A decision whose alert was printed in an earlier batch: at once, as it names its alert.
        for alert_id in [a for a in self._waiting if a in self.alerts]:
            for _, decision in self._waiting.pop(alert_id, []):
                self._show_decision(decision)
        self._show_waiting(time.monotonic() - DECISION_WAITS_S)

    def _show_waiting(self, read_before: float) -> None:
        """Print the decisions read before ``read_before`` (monotonic) whose alert has not come:
        alone, as they are (their line names their alert)."""
        for alert_id in [a for a, waiting in self._waiting.items() if waiting[0][0] <= read_before]:
            for _, decision in self._waiting.pop(alert_id, []):
                self._show_decision(decision)

    def _show_decision(self, decision: Decision) -> None:
        if not self._quiet:
            # Indented: under its alert (see _take).
            console.print("  " + decision_line(decision), highlight=False, emoji=False)

    def _show_alert(self, alert: Alert) -> None:
        if not self._quiet:
            console.print(alert_line(alert), highlight=False, emoji=False)


def _prefixed(prefix: str, names: list[str]) -> list[TopicSpec]:
    import dataclasses

    return [dataclasses.replace(TOPICS.get(n), name=prefix + n) for n in names]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def demo(
    seed: Annotated[int, typer.Option(help="Simulator seed (same seed, same stream, same table).")] = 7,
    customers: Annotated[int, typer.Option(min=10, help="Simulated customers.")] = 400,
    events: Annotated[int, typer.Option(min=0, help="Simulated events.")] = 30_000,
    speed: Annotated[
        float,
        typer.Option(
            min=0.0, help="Simulated seconds per wall second (1440 = a day per minute; 0: unpaced)."
        ),
    ] = 1440.0,
    quiet: Annotated[bool, typer.Option(help="Only the summary, no live alerts.")] = False,
    keep_topics: Annotated[bool, typer.Option(help="Keep this run's topics afterwards.")] = False,
    rules: Annotated[Path, typer.Option(help="Rule file or directory.")] = REPO_RULES,
) -> None:
    """The whole pipeline on a simulated exchange: broker, intel, detection, live alerts, a score table."""
    # Before the broker starts and topics are made: a missing or invalid rule file ends it here.
    ruleset = load_rules([rules])
    cfg = settings()
    # (Decided before the local broker's address is filled in, which makes it "external".)
    local = not cfg.uses_external_cluster
    if not local:
        console.print(f"using the cluster at [bold]{cfg.kafka_bootstrap}[/]")
    else:
        with sigterm_interrupts(), console.status("starting the local Apache Kafka broker (KRaft) ..."):
            started = from_settings(cfg).start()
        state = "already running" if started.already_running else f"started in {started.seconds:.1f}s"
        console.print(
            f"[green]broker[/] Kafka {started.info.version} at [bold]{started.bootstrap}[/] ({state})"
        )
        cfg = cfg.model_copy(update={"kafka_bootstrap": started.bootstrap})
    check_reachable(cfg)
    # (Settings of an existing cluster's topics are its operators': only missing ones are made.)
    applied = topic_admin.apply(make_admin(cfg), TOPICS, cfg, alter_configs=local)
    changed = [diff for diff in applied if not diff.in_sync]
    console.print(f"[green]topics[/] {len(TOPICS)} declared, {len(changed)} created or updated")

    run = uuid.uuid4().hex[:6]
    prefix = f"demo-{run}."
    sim = Simulation(SimConfig(seed=seed, customers=customers, events=events, lookalikes=True))
    console.print(
        f"[green]simulation[/] seed {seed}: {customers} customers, {events:,} events, "
        f"{len(sim.labels)} attack episodes, {len(sim.lookalikes)} benign look-alikes; run {run}"
    )

    # This run's topics: canonical inputs, indicators, outputs (same declarations, prefixed names).
    names = [f"events.{d}" for d in DOMAINS] + [
        "intel.indicators",
        "alerts",
        "decisions",
        "releases",
        "labels",
        "dlq.detect",
    ]
    topic_admin.ensure_topics(cfg, _prefixed(prefix, names))
    indicators = intel_for(sim.config.intel_dir, sim.config.start)
    producer = EventProducer(cfg)
    for indicator in indicators:
        producer.produce(indicator, topic=prefix + "intel.indicators")
    producer.flush()
    console.print(f"[green]intel[/] {len(indicators):,} indicators (OFAC, scam and drainer lists) loaded")

    topology = DetectTopology(
        inputs=tuple(prefix + f"events.{d}" for d in DOMAINS),
        routed=prefix + "detect.routed",
        alerts=prefix + "alerts",
        decisions=prefix + "decisions",
        intel=prefix + "intel.indicators",
        dlq=prefix + "dlq.detect",
        route_app=f"{prefix}detect-route",
        detect_app=f"{prefix}detect",
    )
    service = DetectionService(cfg, ruleset, topology=topology, guarantee="at_least_once")
    watcher = _AlertWatcher(cfg, topology.alerts, topology.decisions, quiet, group=f"{prefix}watch")
    # SIGTERM as Ctrl-C: it killed the demo outright, the stages mid-transaction and the run's
    # 47 topics left behind (found in review).
    previous = signal.signal(signal.SIGTERM, _interrupt) if _on_main_thread() else None
    try:
        service.start()
        watcher.start()
        console.print(
            f"[green]detection[/] {len(ruleset)} rules running; alerts appear below as they happen\n"
        )
        produced = _publish(cfg, sim, prefix, speed)
        _drain(service, watcher, produced)
    finally:
        try:
            service.stop()
        finally:
            watcher.stop()
            if not keep_topics:
                _delete_prefixed(cfg, prefix)
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    alerts = list(watcher.alerts.values())
    decisions = list(watcher.decisions.values())
    attack_ids = {eid for label in sim.labels for eid in label.event_ids}
    result = score(
        sim.labels, alerts, decisions, rules=ruleset, events=produced,
        benign_events=produced - len(attack_ids),
    )  # fmt: skip
    _summary(result, len(decisions))


def _publish(cfg: Settings, sim: Simulation, prefix: str, speed: float) -> int:
    publisher = SimPublisher(cfg, topic_prefix=prefix)
    total = sim.config.events
    with Progress(
        TextColumn("[bold]simulating[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("events", total=total)
        stats = publisher.publish(
            sim, canonical=True, speed=speed, progress=lambda n: bar.update(task, completed=n)
        )
    return stats.events


def _drain(service: DetectionService, watcher: _AlertWatcher, produced: int, timeout: float = 120.0) -> None:
    """Wait until detection has read everything produced and no alert arrived for a moment."""
    deadline = time.monotonic() + timeout
    with console.status("detection catching up ..."):
        while time.monotonic() < deadline:
            service.check()
            routed_all = service.route_app.metrics.processed >= produced
            if routed_all and time.monotonic() - watcher.last_seen > 3.0 and _detect_idle(service):
                return
            time.sleep(0.25)
    console.print("[yellow]detection did not go idle within the timeout; the table may be incomplete[/]")


def _detect_idle(service: DetectionService) -> bool:
    before = service.detect_app.metrics.processed
    time.sleep(1.0)
    return service.detect_app.metrics.processed == before


def _delete_prefixed(cfg: Settings, prefix: str) -> None:
    """The run's topics, consumer groups and local state: the groups and the state (11.6 MB for
    3,000 events) were left by every run (found in review)."""
    admin = make_admin(cfg)
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    if names:
        futures = admin.delete_topics(names, operation_timeout=30)
        wait_answered(admin, futures.values(), 60)
        for future in futures.values():
            future.result()  # (answered, or failed at the request's timeout)
    listing = admin.list_consumer_groups(request_timeout=10)
    wait_answered(admin, [listing], 20)
    listed = listing.result()
    for error in listed.errors:  # (a broker that did not answer: its groups are left)
        log.warning("demo: consumer groups not all listed, so not all deleted: %s", error)
    groups = [g.group_id for g in listed.valid if g.group_id.startswith(prefix)]
    if groups:
        deleting = admin.delete_consumer_groups(groups, request_timeout=30)
        wait_answered(admin, deleting.values(), 60)
        for group, future in deleting.items():
            try:
                future.result()
            except KafkaException as exc:  # (one still winding down: the run's data is gone)
                log.warning("demo: consumer group %s not deleted: %s", group, exc)
    state = cfg.home / "state"
    for path in state.glob(f"{glob.escape(prefix)}*") if state.is_dir() else ():
        shutil.rmtree(path, ignore_errors=True)


def _summary(result: EvalResult, decisions: int) -> None:
    # A light box: the table must fit an 80-column terminal (and CI logs) with its short headers.
    table = Table(
        title="Detection on the simulated exchange, per scenario",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    table.add_column("scenario", no_wrap=True, min_width=23)
    for col in ("eps", "alerts", "recall", "prec", "ttd50", "ttd95", "held"):
        table.add_column(col, justify="right", no_wrap=True)

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.0%}"

    def secs(x: float | None) -> str:
        return "-" if x is None else (f"{x:.0f}s" if x < 120 else f"{x / 60:.0f}m")

    for name, s in sorted(result.scenarios.items()):
        recall_style = "green" if s.recall >= 0.95 else "red"
        table.add_row(
            name, str(s.episodes), str(s.alerts), f"[{recall_style}]{s.recall:.0%}[/]", pct(s.precision),
            secs(s.ttd_p50_s), secs(s.ttd_p95_s),
            pct(s.hold_before_funds_leave) if s.hold_before_funds_leave is not None else "",
        )  # fmt: skip
    console.print()
    console.print(table)
    console.print(
        f"{result.alerts} alerts, {decisions} decisions; precision over all alerts {result.precision:.0%} "
        f"({result.unattributed} attributed to no scenario); false positives: "
        f"{result.false_positives_per_10k:.2f} per 10k benign events\n"
        "eps: attack episodes; alerts: those charged to the scenario, matching its episodes or false alarms "
        "of its rules (an alert can count under two, so the column may add to more than the total); recall: "
        "episodes alerted on the right entity, in time, with the attack's own events as evidence; prec: the "
        "share of its alerts matching an episode; ttd: time to detect from the episode's first event; held: "
        "a hold decision came before the funds left"
    )
