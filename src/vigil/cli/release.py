"""`vigil release ALERT --by NAME --reason TEXT`: an analyst releases what detection held.

Reads the ``decisions`` topic (committed records, to its end as it is now), finds the decisions
of the alert, and sends a ``release`` decision for each one standing (see
:mod:`vigil.detect.release`).  A decision released before, or lapsed, is said and left.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from vigil.cli._common import console, err_console, settings, shown
from vigil.cli._lines import decision_line
from vigil.detect.engine import DECISIONS_TOPIC
from vigil.detect.release import MIN_ID_PREFIX, plan
from vigil.errors import ConfigError, ContractError
from vigil.events.codec import EventCodec
from vigil.events.types import Decision
from vigil.hub.client import EventProducer, check_reachable, make_admin, read_committed

#: How long reading the decisions to their end may take.
READ_TIMEOUT_S = 120.0


def release(
    alert: Annotated[
        str,
        typer.Argument(
            help=f"The alert whose decisions are released: its id, or its first {MIN_ID_PREFIX} "
            "characters as alert and decision lines show them"
        ),
    ],
    by: Annotated[str, typer.Option("--by", help="Who releases: the back end and an audit read it")],
    reason: Annotated[str, typer.Option("--reason", help="Why what detection held may go")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be released, and send nothing")
    ] = False,
    topic: Annotated[
        str,
        typer.Option("--topic", help="The decisions topic (a demo run's: demo-<run>.decisions)"),
    ] = DECISIONS_TOPIC,
) -> None:
    """Release an alert's holds, blocks and step-ups: a `release` decision for each, naming who
    released it and why, on the decisions topic beside it (`ttl: until_released` holds stand
    until then)."""
    cfg = settings()
    check_reachable(cfg)
    found = make_admin(cfg).list_topics(topic, timeout=10).topics.get(topic)
    if found is None or found.error is not None:
        where = cfg.kafka_client_config()["bootstrap.servers"]
        msg = f"no topic {topic!r} on {where}" + (f" ({found.error})" if found else "")
        raise ConfigError(msg)
    codec = EventCodec([Decision])
    decisions: list[Decision] = []
    unreadable = 0
    with console.status(f"reading {topic} to its end"):
        for message in read_committed(cfg, topic, timeout_s=READ_TIMEOUT_S):
            value = message.value()
            try:
                event = codec.decode(value or b"", where=f"{topic}[{message.partition()}]")
            except ContractError:
                unreadable += 1  # (not a decision: said below, and left out)
                continue
            if isinstance(event, Decision):  # (the codec's one type)
                decisions.append(event)
    if unreadable:
        err_console.print(f"[yellow]{unreadable} record(s) of {topic} are no decisions; left out[/]")
    planned = plan(decisions, alert, by=by, reason=reason, now=datetime.now(UTC))
    for decision, earlier in planned.released:
        console.print(
            f"already released {earlier.occurred_at:%Y-%m-%d %H:%MZ} ({shown(earlier.payload.reason)}): "
            + decision_line(decision),
            highlight=False,
            soft_wrap=True,
        )
    for decision in planned.expired:
        console.print(
            "lapsed, nothing to release: " + decision_line(decision), highlight=False, soft_wrap=True
        )
    if planned.releases and not dry_run:
        producer = EventProducer(cfg)
        for out in planned.releases:
            producer.produce(out, topic=topic)
        producer.flush()  # (raises, saying what was not delivered)
    for out in planned.releases:
        head = "would send: " if dry_run else "sent: "
        console.print(head + decision_line(out), highlight=False, soft_wrap=True)
    count = len(planned.releases)
    done = "would release" if dry_run else "released"
    console.print(
        f"[green]{done} {count} decision(s) of alert {shown(planned.alert_id)}[/]"
        + (f"; {len(planned.released)} released before" if planned.released else "")
        + (f"; {len(planned.expired)} lapsed" if planned.expired else ""),
        highlight=False,
    )
