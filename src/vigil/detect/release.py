"""Releasing a decision: an analyst's word that what detection held may go.

Detection's holds, blocks and step-ups stand until they expire, and the sanctions rules' holds
(``ttl: until_released``) until someone releases them.  A release is a decision too, action
``release``, on the ``decisions`` topic beside the one it releases: the same entity (so the
same key and partition, read after it), alert, rule and withdrawal, and a reason that says who
released it and why.  Its id follows from the id of the decision it releases, so releasing
twice (two analysts, or a command run again) is one release downstream.

:func:`plan` decides from the decisions read what to release; ``vigil release`` reads the topic,
prints the plan and sends the releases.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from vigil.errors import ConfigError
from vigil.events.ids import stable_id
from vigil.events.types import Decision, DecisionPayload

#: The shortest start of an alert id taken for the whole: what an alert's or a decision's line
#: shows (``vigil demo``, ``vigil tail``), so that an analyst can paste it.
MIN_ID_PREFIX = 18
#: The ``source`` of a release decision.
SOURCE = "vigil.release"


@dataclass
class ReleasePlan:
    """What releasing an alert's decisions comes to, decision by decision."""

    alert_id: str
    #: Release decisions to send, one per standing decision.
    releases: list[Decision] = field(default_factory=list)
    #: Decisions released before (each with the release that did it).
    released: list[tuple[Decision, Decision]] = field(default_factory=list)
    #: Decisions lapsed by now (their ``expires_at`` past): nothing to release.
    expired: list[Decision] = field(default_factory=list)


def release_id(decision: Decision) -> str:
    """The id of the release of ``decision`` (the same for every release of it)."""
    return stable_id(decision.event_id, "release", prefix="release-")


def plan(decisions: Iterable[Decision], alert: str, *, by: str, reason: str, now: datetime) -> ReleasePlan:
    """The releases of the decisions of alert ``alert`` (its id, or a start of it at least
    ``MIN_ID_PREFIX`` characters long naming one alert), made at ``now`` by ``by`` for ``reason``.

    Raises :class:`ConfigError` naming what was wrong: an empty ``by`` or ``reason``, a start
    too short or naming several alerts, an alert no decision names (a wrong id, or an alert
    whose rule decides nothing)."""
    by, reason, alert = by.strip(), reason.strip(), alert.strip()
    if not by:
        msg = "a release needs who releases it (--by): it is what the back end and an audit read"
        raise ConfigError(msg)
    if not reason:
        msg = "a release needs a reason (--reason): why what detection held may go"
        raise ConfigError(msg)
    if now.tzinfo is None:
        msg = f"a release's time must be UTC-aware; got {now.isoformat()}"
        raise ValueError(msg)
    if len(alert) < MIN_ID_PREFIX:
        msg = (
            f"alert id {alert!r} is too short: give the whole id, or at least its first "
            f"{MIN_ID_PREFIX} characters (as alert and decision lines show it)"
        )
        raise ConfigError(msg)
    standing: list[Decision] = []
    releases: dict[str, Decision] = {}
    for decision in decisions:
        if decision.payload.action == "release":
            releases[decision.event_id] = decision
        elif decision.payload.alert_id.startswith(alert):
            standing.append(decision)
    alerts = sorted({d.payload.alert_id for d in standing})
    if not alerts:
        msg = (
            f"no decision names alert {alert!r}: check the id (`vigil tail alerts`), or its rule "
            "decides nothing (only alerts with a hold, block or step-up have something to release)"
        )
        raise ConfigError(msg)
    if len(alerts) > 1:
        msg = f"{alert!r} starts {len(alerts)} alert ids ({', '.join(alerts[:5])}): give more of it"
        raise ConfigError(msg)
    out = ReleasePlan(alerts[0])
    seen: set[str] = set()
    for decision in standing:
        if decision.event_id in seen:  # (the same decision sent again: a replay)
            continue
        seen.add(decision.event_id)
        earlier = releases.get(release_id(decision))
        p = decision.payload
        if earlier is not None:
            out.released.append((decision, earlier))
        elif p.expires_at is not None and p.expires_at <= now:
            out.expired.append(decision)
        else:
            out.releases.append(
                Decision(
                    event_id=release_id(decision),
                    source=SOURCE,
                    occurred_at=now,
                    entities=decision.entities,
                    payload=DecisionPayload(
                        action="release",
                        entity=p.entity,
                        rule_id=p.rule_id,
                        alert_id=p.alert_id,
                        reason=f"released by {by}: {reason}",
                        withdrawal_id=p.withdrawal_id,
                    ),
                )
            )
    return out
