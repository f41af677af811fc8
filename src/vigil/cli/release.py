"""`vigil release ALERT --by NAME --reason TEXT`: an analyst releases what detection held.

Reads the ``decisions`` and ``releases`` topics (committed records, to their ends as they are
now, a record at a time), finds the decisions of the alert, and sends a ``release`` for each one
standing to ``releases`` (see :mod:`vigil.detect.release`).  A decision released before, or
lapsed, is said and left; so is a withdrawal another alert still holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import typer

from vigil.cli._common import console, err_console, settings, shown
from vigil.cli._lines import decision_line, release_line
from vigil.config import Settings
from vigil.detect.release import MIN_ID_PREFIX, Finder, checked, plan
from vigil.errors import ContractError
from vigil.events.base import Event
from vigil.events.codec import EventCodec
from vigil.events.types import Decision, Release
from vigil.hub.client import EventProducer, check_reachable, iter_committed, listed_topic, make_admin

E = TypeVar("E", bound=Event)
#: How long reading a topic to its end may take.
READ_TIMEOUT_S = 300.0
DECISIONS, RELEASES = "decisions", "releases"


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
    topic_prefix: Annotated[
        str,
        typer.Option(
            "--topic-prefix", help="Before the topics' names (a demo run's: demo-<run>.); default none"
        ),
    ] = "",
) -> None:
    """Release an alert's holds, blocks and step-ups: a `release` for each on the releases topic,
    naming who released it and why (`ttl: until_released` holds stand until then)."""
    request = checked(alert, by, reason)  # (refused before anything is read)
    cfg = settings()
    check_reachable(cfg)
    decisions, releases = topic_prefix + DECISIONS, topic_prefix + RELEASES
    _exists(cfg, decisions, releases)
    found = Finder(request.alert)
    for decision in _read(cfg, decisions, Decision):
        found.decision(decision)
    found.alert_id()  # (refused here, naming no alert or several, before reading again)
    if found.stops:  # (a second reading: which other alerts' decisions stop the same)
        for decision in _read(cfg, decisions, Decision, quiet=True):
            found.other(decision)
    for earlier in _read(cfg, releases, Release):
        found.release(earlier)
    planned = plan(found, request, datetime.now(UTC))
    for decision, earlier in planned.released:
        who = f"by {shown(earlier.payload.released_by)}: {shown(earlier.payload.reason)}"
        _say(f"already released {earlier.occurred_at:%Y-%m-%d %H:%MZ} {who}: " + decision_line(decision))
    for decision in planned.expired:
        _say("lapsed, nothing to release: " + decision_line(decision))
    if planned.releases and not dry_run:
        producer = EventProducer(cfg)
        for out in planned.releases:
            producer.produce(out, topic=releases)
        producer.flush()  # (raises, saying what was not delivered)
    for out in planned.releases:
        _say(("would send: " if dry_run else "sent: ") + release_line(out))
    for other in planned.still_held:
        _say("[yellow]still stopped by another alert's:[/] " + decision_line(other))
    done = "would release" if dry_run else "released"
    parts = [f"[green]{done} {len(planned.releases)} decision(s) of alert {shown(planned.alert_id)}[/]"]
    if planned.released:
        parts.append(f"{len(planned.released)} released before")
    if planned.expired:
        parts.append(f"{len(planned.expired)} lapsed")
    if planned.still_held:
        parts.append(f"[yellow]{len(planned.still_held)} other decision(s) stopping it stand[/]")
    console.print("; ".join(parts), highlight=False, soft_wrap=True)


def _say(line: str) -> None:
    console.print(line, highlight=False, soft_wrap=True)


def _exists(cfg: Settings, *topics: str) -> None:
    """Refuse a topic missing (or not this credential's to see), naming it and where."""
    admin = make_admin(cfg)
    hint = ": `vigil topics apply` makes it, and the release principal may see only decisions and releases"
    for topic in topics:
        listed_topic(cfg, admin, topic, hint)


def _read(cfg: Settings, topic: str, kind: type[E], *, quiet: bool = False) -> Iterator[E]:
    """Every committed record of ``topic``, decoded as ``kind``, as read; records that are none
    are counted and said (unless ``quiet``: said at the first reading)."""
    codec = EventCodec([kind])
    unreadable = 0
    with console.status(f"reading {topic} to its end"):
        for message in iter_committed(cfg, topic, timeout_s=READ_TIMEOUT_S):
            try:
                event = codec.decode(message.value() or b"", where=f"{topic}[{message.partition()}]")
            except ContractError:
                unreadable += 1
                continue
            if isinstance(event, kind):  # (the codec's one type)
                yield event
    if unreadable and not quiet:
        what = f"not {kind.__name__.lower()}s Vigil can read (another type, or refused by its contract)"
        err_console.print(f"[yellow]{unreadable} record(s) of {topic} are {what}; left out[/]")
