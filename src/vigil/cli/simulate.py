"""`vigil simulate`: produce a simulated exchange, with injected labelled attacks, to Kafka."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vigil.cli._common import check_writable, console, settings, shown
from vigil.errors import ConfigError
from vigil.hub.client import check_reachable
from vigil.sim import SCENARIOS, SimConfig, Simulation
from vigil.sim.config import DEFAULT_START
from vigil.sim.publish import SimPublisher

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, *, option: str = "--duration") -> timedelta:
    """'90s', '10m', '2h', '1d', '1w' -> timedelta; anything else fails naming the option."""
    match = _DURATION.match(text)
    if not match:
        msg = f"{option} must be a duration like '90s', '10m', '2h' or '1d'; got {text!r}"
        raise ConfigError(msg)
    try:
        value = timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    except OverflowError:  # (was a traceback)
        msg = f"{option} must be at most {timedelta.max.days:,} days; got {text!r}"
        raise ConfigError(msg) from None
    if not value:
        msg = f"{option} must be longer than 0; got {text!r}"
        raise ConfigError(msg)
    return value


def parse_params(items: list[str]) -> dict[str, dict[str, str]]:
    """``["spoofing.max_rounds=12", ...]`` -> ``{"spoofing": {"max_rounds": "12"}}``; the
    simulation checks the names and values (and says which scenario and parameter is wrong)."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        head, eq, value = item.partition("=")
        name, dot, key = head.rpartition(".")
        if not eq or not dot or not name or not key or not value:
            msg = f"--param must look like NAME.KEY=VALUE (e.g. spoofing.max_rounds=12); got {item!r}"
            raise ConfigError(msg)
        out.setdefault(name.strip(), {})[key.strip()] = value.strip()
    return out


def parse_start(text: str | None, *, paced: bool) -> datetime | None:
    if text is None:
        # A paced run plays live from now; an unpaced one uses the fixed default (reproducible).
        return datetime.now(UTC).replace(microsecond=0) if paced else None
    if text == "now":
        return datetime.now(UTC).replace(microsecond=0)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        msg = f"--start must be an ISO 8601 time like 2026-11-01T00:00:00+00:00 or 'now'; got {text!r}"
        raise ConfigError(msg) from None
    if value.tzinfo is None:
        msg = f"--start must carry a time zone (UTC), e.g. {text}+00:00; got {text!r}"
        raise ConfigError(msg)
    return value.astimezone(UTC)


def simulate(
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same stream")] = 7,
    customers: Annotated[int, typer.Option(min=10, help="Number of customers")] = 2000,
    events: Annotated[
        int | None, typer.Option(min=0, help="Total events (default 100000, or derived from --duration)")
    ] = None,
    duration: Annotated[str | None, typer.Option(help="Simulated span, e.g. 12h or 2d (default 1d)")] = None,
    start: Annotated[
        str | None, typer.Option(help="Simulated start (ISO 8601 UTC or 'now'; paced runs default to now)")
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(
            min=0.001, help="At most this many records per wall second (raw records; events with --canonical)"
        ),
    ] = None,
    speed: Annotated[
        float | None,
        typer.Option(min=0.001, help="Simulated seconds per wall second (1440 = a day per minute)"),
    ] = None,
    scenario: Annotated[
        list[str] | None, typer.Option("--scenario", help="Only this attack scenario (repeatable)")
    ] = None,
    attack_rate: Annotated[
        float, typer.Option(min=0.0, help="Multiplier on the episodes per scenario")
    ] = 1.0,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            help="A scenario parameter, NAME.KEY=VALUE, e.g. spoofing.max_rounds=12 (repeatable; see --list)",
        ),
    ] = None,
    lookalikes: Annotated[bool, typer.Option(help="Mix in benign look-alikes of attacks")] = True,
    canonical: Annotated[
        bool, typer.Option("--canonical", help="Produce canonical events to events.* instead of raw.<source>")
    ] = False,
    labels_file: Annotated[
        Path | None, typer.Option(help="Ground-truth JSONL file (default <home>/sim/labels-seed<N>.jsonl)")
    ] = None,
    topic_prefix: Annotated[str, typer.Option(help="Prefix every topic name (shared clusters, tests)")] = "",
    list_scenarios: Annotated[bool, typer.Option("--list", help="List the scenarios and exit")] = False,
    into_live_topics: Annotated[
        bool,
        typer.Option(help="On a configured cluster, write to its unprefixed (live) topics all the same"),
    ] = False,
) -> None:
    """Simulate an exchange with injected, labelled attacks and produce it to Kafka."""
    if list_scenarios:
        for name, cls in SCENARIOS.items():
            # The first paragraph whole (its first line alone stopped mid-sentence).
            summary = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
            console.print(f"{name:<26} alerts on {cls.entity_kind:<9} {summary}", highlight=False)
            knobs = ", ".join(f"{k}={v:g}" for k, v in cls.parameters().items())
            console.print(f"{'':<26} parameters: {knobs}", highlight=False)
        return
    cfg = settings()
    span = parse_duration(duration) if duration else None
    begin = parse_start(start, paced=bool(rate or speed))
    sim_cfg = SimConfig(
        seed=seed,
        customers=customers,
        events=events if events is not None else (None if span else 100_000),
        duration=span,
        scenarios=list(scenario) if scenario else None,
        attack_rate=attack_rate,
        scenario_params=parse_params(param or []),
        lookalikes=lookalikes,
        start=begin or DEFAULT_START,
    )
    sim = Simulation(sim_cfg)
    target = sim_cfg.total_events
    labels_path = labels_file or cfg.home / "sim" / f"labels-seed{seed}.jsonl"
    if cfg.uses_external_cluster and not topic_prefix and not into_live_topics:
        # Simulated attacks in a production cluster's raw.* and events.* topics would reach its
        # detection, its analysts and its reports.
        msg = (
            f"the cluster at {cfg.kafka_bootstrap} is configured: without --topic-prefix the simulated "
            "exchange would go into its live topics; pass --topic-prefix NAME. (or --into-live-topics)"
        )
        raise ConfigError(msg)
    check_writable(
        labels_path,
        f"--labels-file {str(labels_path)!r}"
        if labels_file is not None
        else f"the labels file {str(labels_path)!r} (under VIGIL_HOME)",
    )
    check_reachable(cfg)
    publisher = SimPublisher(cfg, topic_prefix=topic_prefix)
    publisher.ensure_topics(canonical=canonical)
    console.print(
        f"simulating {target:,} events over {sim_cfg.span} from {sim_cfg.start.isoformat()} "
        f"({len(sim.labels)} attack episodes, {len(sim.lookalikes)} look-alikes) -> "
        f"{'canonical events.*' if canonical else 'raw.<source>'} topics"
    )
    started = time.perf_counter()
    with Progress(
        TextColumn("[bold]producing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>12} ev/s"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("produce", total=target, rate="-")

        def update(done: int) -> None:
            elapsed = time.perf_counter() - started
            # The count is approximate (consequences trail the span); never overflow the bar.
            total = max(target, done)
            bar.update(
                task, completed=done, total=total, rate=f"{done / elapsed:,.0f}" if elapsed > 0 else "-"
            )

        stats = publisher.publish(
            sim, canonical=canonical, rate=rate, speed=speed, labels_file=labels_path, progress=update
        )
        # Native records group events (a block, a webhook), so their count is not the event count.
        bar.update(task, total=stats.events, completed=stats.events)
    console.print(
        f"[green]produced {stats.events:,} records in {stats.seconds:.1f}s ({stats.rate:,.0f}/s) to "
        f"{len(stats.topics)} topics; {stats.labels} labels to {shown(topic_prefix)}labels and "
        f"{shown(str(labels_path))}[/]"
    )
