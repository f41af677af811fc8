"""`vigil topics apply|list|acls`, `vigil produce` and `vigil tail`: the hub's debugging tools."""

from __future__ import annotations

import signal
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaError, TopicPartition
from rich.markup import escape
from rich.table import Table

from vigil.cli._common import console, err_console, settings, shown
from vigil.cli._lines import alert_line, decision_line, release_line
from vigil.errors import ConfigError, ContractError, DecodeError, TopicError
from vigil.events.addresses import canonical_addresses
from vigil.events.base import Event
from vigil.events.codec import EventCodec
from vigil.events.types import Alert, Decision, Release
from vigil.hub import acls
from vigil.hub import admin as topic_admin
from vigil.hub.client import EventProducer, check_reachable, listed_topic, make_admin, make_consumer
from vigil.hub.topics import RECORD_TYPES, TOPICS, TopicSpec

app = typer.Typer(no_args_is_help=True)


@app.command("apply")
def apply_cmd(
    add_partitions: Annotated[
        bool,
        typer.Option(
            "--add-partitions",
            help="Give live topics the partitions declared (stop the stages reading them first: "
            "keys that move start their windows and sequences afresh)",
        ),
    ] = False,
) -> None:
    """Create or update every declared topic; a second run changes nothing and says so."""
    cfg = settings()
    check_reachable(cfg)
    changed = topic_admin.apply(make_admin(cfg), TOPICS, cfg, add_partitions=add_partitions)
    if not changed:
        console.print(f"[green]all {len(TOPICS)} declared topics are in sync; nothing to do[/]")
        return
    for diff in changed:
        console.print(f"[yellow]{escape(diff.spec.name)}[/]: {escape(diff.describe())}")
    acted = sum(1 for diff in changed if not diff.in_sync)
    left = len(changed) - acted
    console.print(
        f"applied {acted} change(s); {len(TOPICS) - len(changed)} topic(s) already in sync"
        + (f"; {left} left as they are (see above)" if left else "")
    )


@app.command("list")
def list_cmd(
    all_live: Annotated[
        bool, typer.Option("--all", help="Also show live topics that are not declared")
    ] = False,
) -> None:
    """Declared topics against the live cluster, with any difference."""
    cfg = settings()
    check_reachable(cfg)
    live = topic_admin.describe_live(make_admin(cfg))
    table = Table()
    # Long names folded, not cut with "…": a demo run's changelog topics differ only at the end.
    table.add_column("topic", overflow="fold")
    for column in ("partitions", "rf", "cleanup", "key", "value", "status"):
        table.add_column(column)
    for diff in topic_admin.plan(TOPICS, live, cfg):
        ok = diff.in_sync and not diff.notes
        status = "[red]missing[/]" if diff.missing else ("[green]ok[/]" if ok else escape(diff.describe()))
        # Escaped, every text: a declared key "<type>:<value>@<feed>[#<STIX id>]" lost its
        # "[#<STIX id>]", read as a style.
        table.add_row(
            escape(diff.spec.name),
            str(diff.live.partitions if diff.live else diff.partitions),
            str(
                diff.live.replication
                if diff.live
                else (diff.replication if diff.replication > 0 else "default")
            ),
            escape(diff.spec.cleanup),
            escape(diff.spec.key),
            escape(diff.spec.value_name),
            status,
        )
    if all_live:
        for name in sorted(set(live) - set(TOPICS.names())):
            t = live[name]
            table.add_row(
                shown(name),
                str(t.partitions),
                str(t.replication),
                shown(t.config.get("cleanup.policy", "?")),
                "",
                "",
                "[dim]not declared[/]",
            )
    console.print(table)


@app.command("acls")
def acls_cmd(
    principal: Annotated[
        list[str] | None,
        typer.Option(
            "--principal",
            help="COMPONENT=User:name, repeatable (default: User:vigil-<component>)",
        ),
    ] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Create the ACLs on the cluster (as the admin principal)")
    ] = False,
    component: Annotated[
        list[str] | None,
        typer.Option(
            "--component",
            help="Only this component's grants, repeatable (an analyst's own principal: "
            "--component release --principal release=User:alice)",
        ),
    ] = None,
) -> None:
    """Least-privilege ACLs: what each component's principal may do; --apply creates them."""
    granted = acls.grants(acls.parse_principals(principal or []))
    if component:
        known = {g.component for g in granted}
        unknown = sorted(set(component) - known)
        if unknown:
            msg = f"unknown component(s) {unknown}; known: {', '.join(sorted(known))}"
            raise ConfigError(msg)
        mapped = sorted(set(acls.parse_principals(principal or [])) - set(component))
        if mapped:
            msg = (
                f"--principal {mapped[0]}=... names a component not among --component "
                f"({', '.join(component)}): its principal would be granted nothing"
            )
            raise ConfigError(msg)
        granted = [g for g in granted if g.component in component]
    table = Table()
    for column in ("component", "principal", "operation", "resource", "pattern"):
        # Folded, never cut short: a principal or resource name shown in part would mislead.
        table.add_column(column, overflow="fold")
    for g in granted:
        table.add_row(g.component, escape(g.principal), g.operation.name, g.resource, g.pattern.name)
    console.print(table)
    if not apply:
        console.print(f"{len(granted)} bindings; --apply creates them")
        return
    cfg = settings()
    check_reachable(cfg)
    created = acls.create(make_admin(cfg), [g.binding() for g in granted])
    console.print(f"[green]{created} ACL bindings in place[/] (existing ones are kept as they are)")


def _value_decoder(spec: TopicSpec) -> Any:
    if spec.event_types:
        return EventCodec(spec.event_types)
    if spec.value in RECORD_TYPES:
        return msgspec.json.Decoder(RECORD_TYPES[spec.value])
    return None


def produce(
    topic: Annotated[str, typer.Argument(help="A declared topic, e.g. events.identity")],
    file: Annotated[
        Path, typer.Argument(help="JSON lines, one record per line", exists=True, dir_okay=False)
    ],
) -> None:
    """Validate each line against the topic's contract; report bad lines by number and produce the rest."""
    cfg = settings()
    spec = TOPICS.get(topic)
    if not spec.event_types:
        msg = (
            f"topic {topic!r} carries {spec.value_name!r}, not canonical events; "
            "`produce` validates events only"
        )
        raise TopicError(msg)
    codec = EventCodec(spec.event_types)
    check_reachable(cfg)
    producer = EventProducer(cfg)
    good = bad = 0
    with file.open("rb") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{file}:{n}"
            try:
                event = _as_normalised(codec.decode(line, where=where), datetime.now(UTC), where=where)
            except (DecodeError, ContractError) as exc:
                bad += 1
                # (Not folded at the terminal's width: a line's message stays whole for grep.)
                err_console.print(f"[red]{shown(str(exc))}[/]", highlight=False, soft_wrap=True)
                continue
            producer.produce(event, topic=topic)
            good += 1
    producer.flush()
    colour = "green" if not bad else "yellow"
    console.print(f"[{colour}]produced {good} event(s) to {topic}; rejected {bad} line(s)[/]")
    if bad:
        raise typer.Exit(code=2)


def _as_normalised(event: Event, received_at: datetime, *, where: str) -> Event:
    """``event`` as the normalise stage would have passed it to its canonical topic, for events
    written straight there: a back-end event's times in UTC and its IP and addresses in their one
    spelling (:func:`~vigil.sources.backend.canonical_event`), another's addresses (a
    checksum-case wallet was a second key, on another partition, with a state of its own);
    ``ingested_at`` filled in, and refused when dated further ahead than a back-end service may be
    (an event dated 2099 moved its partition's watermark, and every later event of the partition
    was late)."""
    from vigil.sources.backend import INGEST_DOMAINS, BackendNormalizer, canonical_event
    from vigil.sources.normalize import ahead_reason

    allowed = BackendNormalizer.max_ahead
    if event.occurred_at - received_at > allowed:
        msg = f"{where}: {ahead_reason(event, received_at, BackendNormalizer.source, allowed)}"
        raise ContractError(msg)
    if event.ingested_at is None:
        event = msgspec.structs.replace(event, ingested_at=received_at)
    if type(event).domain not in INGEST_DOMAINS:
        # Intel indicators, alerts, decisions: not a back-end service's events, nor checked as
        # one (the intel normaliser writes a network, 203.0.113.0/24, where the IP goes).
        return canonical_addresses(event)
    return canonical_event(event, where=where)


def tail(
    topic: Annotated[str, typer.Argument(help="Topic to read")],
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="Start at the earliest offset")
    ] = False,
    n: Annotated[int | None, typer.Option("-n", min=1, help="Stop after N records")] = None,
    timeout: Annotated[
        float, typer.Option(min=0.0, help="Stop after this many idle seconds (0: never)")
    ] = 0.0,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Alerts, decisions and releases as their JSON too (else as an analyst reads them)"
        ),
    ] = False,
) -> None:
    """Print records decoded, with partition/offset/key: alerts and decisions as lines an
    analyst reads (as ``vigil demo`` shows them), other records as JSON.  Ctrl-C stops."""
    cfg = settings()
    spec = declared_as(topic)
    decoder = _value_decoder(spec) if spec else None
    check_reachable(cfg)
    # Every partition assigned directly, under a group of its own that commits nothing: a
    # shared group split the partitions between two tails, and subscribing with an eager
    # assign() under the cooperative assignor failed at the first assignment.
    consumer = make_consumer(cfg, f"vigil-tail-{uuid.uuid4().hex[:12]}", **{"enable.partition.eof": False})
    start = OFFSET_BEGINNING if from_beginning else OFFSET_END
    try:
        found = listed_topic(cfg, consumer, topic)
    except ConfigError:
        consumer.close()
        raise
    consumer.assign([TopicPartition(topic, p, start) for p in sorted(found.partitions)])
    stop = {"now": False}
    # (Put back after: a caller running tail in its own process, a test, keeps its Ctrl-C.)
    before = signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    seen = 0
    idle = 0.0
    try:
        while not stop["now"] and (n is None or seen < n):
            msg = consumer.poll(0.5)
            if msg is None:
                idle += 0.5
                if timeout and idle >= timeout:
                    break
                continue
            idle = 0.0
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    err_console.print(f"[red]{shown(str(msg.error()))}[/]")
                continue
            seen += 1
            key, body = record_text(msg.key(), msg.value(), decoder, lines=not as_json)
            head = f"[dim]{msg.topic()}[{msg.partition()}]@{msg.offset()}[/] key=[cyan]{key}[/]"
            console.print(f"{head} {body}", highlight=False, soft_wrap=True, emoji=False)
    finally:
        if before is not None:
            signal.signal(signal.SIGINT, before)
        consumer.close()


def declared_as(topic: str) -> TopicSpec | None:
    """The declared topic ``topic`` is, or is a prefixed copy of (``demo-<run>.alerts``, a
    simulation's ``--topic-prefix``): its records are decoded as that one's.  Prefixed copies
    were printed as raw bytes cut at 2,000, mid-JSON for one alert in six."""
    if topic in TOPICS:
        return TOPICS.get(topic)
    rest = topic
    while "." in rest:
        rest = rest.split(".", 1)[1]
        if rest in TOPICS:
            return TOPICS.get(rest)
    return None


#: Bytes of a record shown when it is not decoded (a raw topic's webhook body, a syslog line).
SHOWN_BYTES = 2000


def record_text(
    key: bytes | None, value: bytes | None, decoder: Any, *, lines: bool = False
) -> tuple[str, str]:
    """A record's key and value as markup that prints them as text, decoded when ``decoder``
    is given (with ``lines``, an alert or a decision as :mod:`vigil.cli._lines` shows it).
    Keys of canonical topics are entity ids and raw topics hold what a source sent (syslog
    lines, webhook bodies): both are the sender's, so no ESC/OSC sequence, C1 control or bidi
    override in them reaches the terminal.  (JSON escapes the C0 controls of a
    decoded record, not U+009B or U+202E.)"""
    shown_key = shown((key or b"").decode(errors="replace"))
    if value is None:
        # A tombstone: a compacted topic's deletion (a withdrawn indicator, a reset cursor),
        # which was shown in red as an undecodable record.
        return shown_key, "[dim](tombstone: the key's deletion)[/]"
    raw = value
    if decoder is None:
        text = shown(raw[:SHOWN_BYTES].decode(errors="replace"))
        if len(raw) > SHOWN_BYTES:
            text += f" [dim]… (the first {SHOWN_BYTES:,} of {len(raw):,} bytes)[/]"
        return shown_key, text
    try:
        record = decoder.decode(raw)
    except (DecodeError, msgspec.ValidationError, msgspec.DecodeError) as exc:
        return shown_key, f"[red]undecodable: {shown(str(exc))}[/]"
    if lines and isinstance(record, Alert):
        return shown_key, alert_line(record)
    if lines and isinstance(record, Decision):
        return shown_key, decision_line(record)
    if lines and isinstance(record, Release):
        return shown_key, release_line(record)
    return shown_key, shown(msgspec.json.encode(record).decode())
