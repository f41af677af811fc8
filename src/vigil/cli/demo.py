"""``vigil demo``: the Quickstart's main job on local defaults.

Starts the project's own broker (unless ``VIGIL_KAFKA_BOOTSTRAP`` points elsewhere),
applies the declared topics, produces a sample of canonical events (one of each type)
and reads them back from the broker, showing them flowing with partition and offset.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from vigil.cli._common import console, settings
from vigil.events.codec import decode_event
from vigil.events.examples import example_events
from vigil.hub import admin as topic_admin
from vigil.hub.broker import from_settings
from vigil.hub.client import EventProducer, check_reachable, make_admin, make_consumer
from vigil.hub.topics import TOPICS


def demo(
    keep_broker: Annotated[bool, typer.Option(help="Leave the local broker running afterwards.")] = True,
) -> None:
    """Start the broker, create the topics, stream a sample of events through Kafka and show them."""
    cfg = settings()
    if cfg.uses_external_cluster:
        console.print(f"using the cluster at [bold]{cfg.kafka_bootstrap}[/]")
    else:
        with console.status("starting the local Apache Kafka broker (KRaft) ..."):
            started = from_settings(cfg).start()
        console.print(
            f"[green]broker[/] Kafka {started.info.version} at [bold]{started.bootstrap}[/] "
            f"({'already running' if started.already_running else f'started in {started.seconds:.1f}s'})"
        )
        cfg = cfg.model_copy(update={"kafka_bootstrap": started.bootstrap})
    check_reachable(cfg)
    changed = topic_admin.apply(make_admin(cfg), TOPICS, cfg)
    console.print(f"[green]topics[/] {len(TOPICS)} declared, {len(changed)} created or updated")

    events = example_events(datetime.now(UTC))
    producer = EventProducer(cfg)
    producer.produce_all(events)
    producer.flush()
    console.print(f"[green]produced[/] {len(events)} canonical events, one of each type")

    wanted = {e.event_id for e in events}
    topics = sorted({producer.topic_for(e) for e in events})
    consumer = make_consumer(cfg, group_id=f"vigil-demo-{uuid.uuid4().hex[:8]}")
    consumer.subscribe(topics)
    table = Table("topic", "partition", "offset", "type", "key", "event id")
    seen: set[str] = set()
    try:
        for _ in range(600):
            if seen >= wanted:
                break
            for msg in consumer.consume(500, timeout=0.2):
                if msg.error() or msg.value() is None:
                    continue
                event = decode_event(msg.value(), where=f"{msg.topic()}[{msg.partition()}]@{msg.offset()}")
                if event.event_id in wanted and event.event_id not in seen:
                    seen.add(event.event_id)
                    table.add_row(
                        str(msg.topic()), str(msg.partition()), str(msg.offset()), event.type,
                        event.key() or "", event.event_id[:12],
                    )  # fmt: skip
    finally:
        consumer.close()
    console.print(table)
    console.print(f"[bold green]{len(seen)}/{len(wanted)} events flowed through Kafka[/]")
    if len(seen) < len(wanted):
        raise typer.Exit(1)
    if not keep_broker and not cfg.uses_external_cluster:
        from_settings(settings()).stop()
