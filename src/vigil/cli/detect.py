"""`vigil detect` (the detection applications on Kafka) and `vigil eval` (quality against the simulator).

The lead registers them: ``app.command("detect")(detect.detect)`` and
``app.command("eval")(detect.eval_)``.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from vigil.cli._common import (
    MetricsPortOpt,
    check_writable,
    console,
    err_console,
    serve_metrics_of,
    settings,
    shown,
    sigterm_interrupts,
)
from vigil.detect.eval import HOLD_SCENARIOS, EvalResult, evaluate
from vigil.detect.rules.validate import load_rules
from vigil.errors import ConfigError
from vigil.hub.client import check_reachable

log = logging.getLogger(__name__)

RulesOpt = Annotated[Path, typer.Option("--rules", help="Rule file or directory")]


def detect(
    rules: RulesOpt = Path("rules"),
    guarantee: Annotated[
        str | None,
        typer.Option(help="exactly_once (Kafka transactions) or at_least_once", show_default="exactly_once"),
    ] = None,
    at_least_once: Annotated[
        bool,
        typer.Option(
            help="Lower latency; after a crash, duplicates downstream, and a rule counting "
            "sightings may count some twice (as vigil run and normalize take it)."
        ),
    ] = False,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1, max=1_000_000, help="Records per micro-batch, at most", show_default="the runtime's, 500"
        ),
    ] = None,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Run detection over the canonical topics; alerts go to `alerts`, decisions to `decisions`."""
    from vigil.detect.app import DetectionService

    if guarantee is not None and guarantee not in ("exactly_once", "at_least_once"):
        msg = f"--guarantee must be exactly_once or at_least_once; got {guarantee!r}"
        raise ConfigError(msg)
    if at_least_once and guarantee == "exactly_once":
        msg = "--at-least-once and --guarantee exactly_once say different things; give one"
        raise ConfigError(msg)
    guarantee = "at_least_once" if at_least_once else guarantee or "exactly_once"
    # The command's own inputs first: a missing rules directory was reported as an unreachable
    # broker when no broker ran, and as itself only once one did.
    ruleset = load_rules([rules])
    cfg = settings()
    check_reachable(cfg)
    sizing = {} if batch_size is None else {"batch_size": batch_size}
    service = DetectionService(cfg, ruleset, guarantee=guarantee, **sizing)  # type: ignore[arg-type]
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Before the handlers change: a port in use ends the command with nothing to put back.
    metrics = serve_metrics_of(cfg, metrics_port, lambda: [service.route_app, service.detect_app])
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    console.print(
        f"detection: {len(ruleset)} rules from {shown(str(rules))}; loading intel, then consuming "
        "(Ctrl-C stops)"
    )
    failing = True  # (until the loop ends without an error)
    try:
        service.start(abort=stop.is_set)
        if not stop.is_set():  # (asked to stop while the list loaded: it is not loaded)
            console.print(
                f"intel index: {len(service.index)} indicators ({escape(service.index.version or 'none')})"
            )
        last = 0.0
        while not stop.wait(0.5):
            service.check()
            now = time.monotonic()
            if now - last >= 10:
                last = now
                m = service.detect_app.metrics
                console.print(
                    f"processed {m.processed} routed records; {service.alerts} alerts, "
                    f"{service.decisions} decisions"
                )
        service.check()
        failing = False
    finally:
        try:
            service.stop()  # raises a stage's failure (a last checkpoint's too): the exit code shows it
        except BaseException:
            # The failure already on its way out is the one to tell, not the stop's account of
            # it again (the intel feed's was worded "failed while loading" once stopped, pointing
            # at the start, until the table kept when it failed: found in review).
            if not failing:
                raise
            log.debug("stopping detection after its failure", exc_info=True)
        finally:
            if metrics is not None:
                metrics.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    console.print(f"stopped: {service.alerts} alerts, {service.decisions} decisions")


def eval_(
    seed: Annotated[int, typer.Option(help="Simulator seed")] = 7,
    # The bounds the simulator checks, as `vigil simulate` has them: its own error names its
    # internal SimConfig, not the option.
    events: Annotated[int, typer.Option(min=0, help="Events to simulate")] = 200_000,
    customers: Annotated[int, typer.Option(min=10, help="Simulated customers")] = 2000,
    attack_rate: Annotated[
        float,
        typer.Option(
            min=0.0, help="Episodes per scenario relative to the default (more for tighter estimates)"
        ),
    ] = 1.0,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Write the scores to this JSON file")
    ] = None,
    rules: RulesOpt = Path("rules"),
    kafka: Annotated[
        bool, typer.Option("--kafka", help="Run detection through the broker (starts the local one if none)")
    ] = False,
    backlog: Annotated[
        bool,
        typer.Option(
            help="With --kafka: produce every event before detection starts (a replay) instead of live"
        ),
    ] = False,
) -> None:
    """Simulate every scenario and the benign look-alikes, detect, and score per scenario.

    By default detection runs in memory through the same operator the Kafka application
    runs (one partition, so no re-keying stage is needed); with --kafka it runs the route
    and detect applications on the broker.  See `vigil.detect.eval` for the definitions.
    """
    if backlog and not kafka:
        # Ignored, the run was in memory: a replay's result taken for one on the broker.
        msg = "--backlog is for a run on the broker: pass --kafka with it"
        raise ConfigError(msg)
    if json_file is not None:
        check_writable(json_file, f"--json {str(json_file)!r}")  # (not after minutes of work)
    ruleset = load_rules([rules])
    started = time.perf_counter()
    # Minutes at the defaults with nothing said (the broker's catch-up waits up to 10 minutes).
    working = f"simulating {events:,} events and detecting" + (" on the broker" if kafka else "") + " ..."
    if kafka:
        from vigil.detect.eval import evaluate_kafka
        from vigil.hub.broker import from_settings

        cfg = settings()
        if not cfg.uses_external_cluster:
            with sigterm_interrupts(), console.status("starting the local Apache Kafka broker ..."):
                started_broker = from_settings(cfg).start()
            cfg = cfg.model_copy(update={"kafka_bootstrap": started_broker.bootstrap})
        check_reachable(cfg)
        with console.status(working):
            result = evaluate_kafka(
                cfg,
                ruleset,
                seed=seed,
                events=events,
                customers=customers,
                attack_rate=attack_rate,
                backlog=backlog,
            )
    else:
        with console.status(working):
            result = evaluate(ruleset, seed=seed, events=events, customers=customers, attack_rate=attack_rate)
    render(result, time.perf_counter() - started)
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps(result.as_json(), indent=2) + "\n")
        console.print(f"wrote {shown(str(json_file))}")


def render(result: EvalResult, seconds: float) -> None:
    # Every cell whole in 80 columns (CI logs, a narrow terminal): a light box and short headers,
    # explained under the table (the full box cut "account_takeover" to "accoun…").
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("scenario", no_wrap=True)
    for col in ("eps", "alerts", "recall", "prec", "ttd50", "ttd95", "held"):
        table.add_column(col, justify="right", no_wrap=True)
    for name, s in sorted(result.scenarios.items()):
        ok = s.recall >= 0.95 and s.precision >= 0.90
        hold = "" if s.hold_before_funds_leave is None else f"{s.hold_before_funds_leave:.2f}"
        if (
            name in HOLD_SCENARIOS
            and s.hold_before_funds_leave is not None
            and s.hold_before_funds_leave < 0.95
        ):
            ok = False
        colour = "green" if ok else "red"
        table.add_row(
            f"[{colour}]{escape(name)}[/]",
            str(s.episodes),
            str(s.alerts),
            f"{s.recall:.2f}",
            f"{s.precision:.2f}",
            "" if s.ttd_p50_s is None else f"{s.ttd_p50_s:.0f}",
            "" if s.ttd_p95_s is None else f"{s.ttd_p95_s:.0f}",
            hold,
        )
    console.print(table)
    console.print(
        "eps: attack episodes; prec: precision; ttd50/ttd95: seconds to detect (median, 95th "
        "percentile) from the episode's first event; held: share of episodes with a hold before the "
        "funds left",
        highlight=False,
    )
    where = {
        "memory": "in memory",
        "kafka": "through Kafka, produced a chunk at a time",
        "kafka-backlog": "through Kafka, replaying a backlog",
    }.get(result.mode, result.mode)
    console.print(
        f"{result.events} events ({result.benign_events} benign), {result.alerts} alerts "
        f"(precision over all {result.precision:.2f}, {result.unattributed} attributed to no scenario, "
        f"{result.late} late: on an episode's events, after it ended), "
        f"{result.decisions} decisions; false positives per 10k benign events: "
        f"{result.false_positives_per_10k:.2f}; detection {result.events / max(result.seconds, 1e-9):,.0f} "
        f"events/s ({where}); {seconds:.1f}s in all"
    )
    fooled = [f"{name} {hit}/{n}" for name, (n, hit) in result.lookalikes.items() if hit]
    if result.lookalikes:
        console.print(
            "benign look-alikes that drew an alert: " + (", ".join(fooled) if fooled else "none"),
            highlight=False,
        )
    if result.rules:
        # What each rule earned and cost: a scenario's precision hides which of its rules fired
        # wrongly, and a rule charged to no scenario shows only here.
        by_rule = Table("rule", "alerts", "true", "false", "false charged to")
        # Rule ids whole, whatever the terminal's width: they are what an analyst looks up.
        by_rule.columns[0].no_wrap = True
        by_rule.columns[0].min_width = max(len(rule) for rule in result.rules)
        for rule, r in sorted(result.rules.items()):
            charged = ", ".join(r.scenarios) if r.scenarios else "no scenario"
            by_rule.add_row(
                escape(rule),
                str(r.alerts),
                str(r.true_positives),
                f"[red]{r.false_positives}[/]" if r.false_positives else "0",
                escape(charged) if r.false_positives else "",
            )
        console.print(by_rule)
    noisy = [(rule, fp) for rule, (_, fp) in result.per_rule.items() if fp]
    if noisy:
        err_console.print("false positives by rule: " + ", ".join(f"{r} {n}" for r, n in noisy))
