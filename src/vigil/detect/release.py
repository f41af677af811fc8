"""Releasing a decision: an analyst's word that what detection held may go.

Detection's holds, blocks and step-ups stand until they expire, and the sanctions rules' holds
(``ttl: until_released``) until someone releases them.  A :class:`~vigil.events.types.Release`
names the decision it lets go (its id and action), who released it and why, with the decision's
entity (its key), alert, rule and withdrawal.  Releases go to a topic of their own, ``releases``,
which only the release principal writes: the analysts' credential cannot write holds or blocks
(``decisions`` is detection's alone), and the back end knows a release by where it read it.

A release lets one decision go: a withdrawal another alert holds too stays held by that one
(:attr:`ReleasePlan.still_held` says so).  Its id follows from the released decision's, so a
second release of it (two analysts at once, a command run again) has the same id: downstream
keeps the first, and so does :class:`Finder`.

``vigil release`` checks the request (:func:`checked`), reads both topics into a
:class:`Finder` record by record, and sends what :func:`plan` makes of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

from vigil.errors import ConfigError
from vigil.events.types import (
    Decision,
    DecisionPayload,
    EntityRef,
    ReleasableAction,
    Release,
    ReleasePayload,
)

#: The shortest start of an alert id taken for the whole: what an alert's or a decision's line
#: shows (``vigil demo``, ``vigil tail``), so that an analyst can paste it.
MIN_ID_PREFIX = 18
#: The ``source`` of a release.
SOURCE = "vigil.release"
MAX_BY = 100
MAX_REASON = 1000
_RELEASABLE: dict[str, ReleasableAction] = {
    "hold_withdrawal": "hold_withdrawal",
    "require_step_up": "require_step_up",
    "block": "block",
}


@dataclass(frozen=True)
class Request:
    """What an analyst asked: the alert (its id or a start of it), who, why."""

    alert: str
    by: str
    reason: str


def checked(alert: str, by: str, reason: str) -> Request:
    """The request, its text stripped; a :class:`ConfigError` naming what is wrong (before anything
    is read): an alert id too short to name one alert, no ``by`` or ``reason``, either too long or
    holding control characters (they go to the back end's logs and audit exports as typed)."""
    alert, by, reason = alert.strip(), by.strip(), reason.strip()
    if len(alert) < MIN_ID_PREFIX:
        msg = (
            f"alert id {alert!r} is too short: give the whole id, or at least its first "
            f"{MIN_ID_PREFIX} characters (as alert and decision lines show it)"
        )
        raise ConfigError(msg)
    for name, value, most, what in (
        ("--by", by, MAX_BY, "who releases it: the back end and an audit read it"),
        ("--reason", reason, MAX_REASON, "why what detection held may go"),
    ):
        if not value:
            msg = f"a release needs {name}: {what}"
            raise ConfigError(msg)
        if len(value) > most:
            msg = f"{name} is {len(value):,} characters long; at most {most:,}"
            raise ConfigError(msg)
        bad = next((i for i, ch in enumerate(value) if not ch.isprintable()), None)
        if bad is not None:
            msg = f"{name} holds a control character ({value[bad]!r} at {bad}): give plain text on one line"
            raise ConfigError(msg)
    return Request(alert, by, reason)


class Finder:
    """What a release needs from the topics, taken a record at a time (not the topics whole):
    the decisions of the alert asked for (:meth:`decision`); in a second reading of the
    decisions, the other alerts' decisions that stop what those stop (:meth:`other`), to say
    which stand; and the releases of any of them (:meth:`release`).

    What stops a withdrawal: a ``hold_withdrawal`` of it, a ``hold_withdrawal`` naming no
    withdrawal (every withdrawal of its entity: a sanctions hold on a deposit), a ``block`` of its
    entity.  A ``require_step_up`` stops nothing."""

    def __init__(self, alert: str) -> None:
        self.alert = alert
        self.standing: list[Decision] = []
        self._seen: set[str] = set()
        #: Other alerts' decisions stopping what :attr:`standing` stops.
        self.others: list[Decision] = []
        #: The first release of each of those decisions read (later ones, the same id, repeats).
        self.released: dict[str, Release] = {}

    def decision(self, decision: Decision) -> None:
        p = decision.payload
        if p.action not in _RELEASABLE or decision.event_id in self._seen:
            return  # (a release decision of earlier versions; a repeat, a replay's)
        if p.alert_id.startswith(self.alert):
            self._seen.add(decision.event_id)
            self.standing.append(decision)

    def alert_id(self) -> str:
        """The one alert the decisions read name; a :class:`ConfigError` naming an alert no
        decision names, or a start naming several (asked before a second reading)."""
        alerts = sorted({d.payload.alert_id for d in self.standing})
        if not alerts:
            msg = (
                f"no decision names alert {self.alert!r}: check the id against the alert's line, or "
                "its rule decides nothing (only alerts with a hold, block or step-up have one)"
            )
            raise ConfigError(msg)
        if len(alerts) > 1:
            msg = f"{self.alert!r} starts {len(alerts)} alert ids ({', '.join(alerts[:5])}): give more of it"
            raise ConfigError(msg)
        return alerts[0]

    @property
    def stops(self) -> bool:
        """Whether the alert's decisions stop a withdrawal (else a second reading finds nothing)."""
        return bool(self._stopping)

    @property
    def _stopping(self) -> list[DecisionPayload]:
        return [d.payload for d in self.standing if d.payload.action != "require_step_up"]

    @cached_property
    def _stopped(self) -> tuple[frozenset[str], frozenset[EntityRef], frozenset[EntityRef]]:
        """What the alert's decisions stop (asked once the first reading is done): the
        withdrawals they hold, the entities whose withdrawals they stop, and of those the
        entities they hold or block whole."""
        stopping = self._stopping
        return (
            frozenset(s.withdrawal_id for s in stopping if s.withdrawal_id is not None),
            frozenset(s.entity for s in stopping),
            frozenset(s.entity for s in stopping if s.action == "block" or s.withdrawal_id is None),
        )

    def other(self, decision: Decision) -> None:
        p = decision.payload
        if decision.event_id in self._seen or p.alert_id.startswith(self.alert):
            return
        withdrawals, entities, whole = self._stopped
        if p.action == "hold_withdrawal" and p.withdrawal_id is not None:
            # A hold of one withdrawal: of one released, or of an entity released whole.
            stops = p.withdrawal_id in withdrawals or p.entity in whole
        elif p.action in ("hold_withdrawal", "block"):
            # A hold of every withdrawal of its entity, or a block of it: any of the entity's.
            stops = p.entity in entities
        else:
            stops = False
        if stops:
            self._seen.add(decision.event_id)
            self.others.append(decision)

    def release(self, release: Release) -> None:
        if release.payload.decision_id in self._seen:
            self.released.setdefault(release.payload.decision_id, release)


@dataclass
class ReleasePlan:
    """What releasing an alert's decisions comes to, decision by decision."""

    alert_id: str
    #: Releases to send, one per standing decision.
    releases: list[Release] = field(default_factory=list)
    #: Decisions released before (each with the first release of it).
    released: list[tuple[Decision, Release]] = field(default_factory=list)
    #: Decisions lapsed by now (their ``expires_at`` past): nothing to release.
    expired: list[Decision] = field(default_factory=list)
    #: Other alerts' decisions, standing, that stop what is released too (see :class:`Finder`):
    #: that stays stopped.
    still_held: list[Decision] = field(default_factory=list)


def release_id(decision: Decision) -> str:
    """The id of the release of ``decision`` (the same for every release of it)."""
    return Release.id_for(decision.event_id)


def plan(found: Finder, request: Request, now: datetime) -> ReleasePlan:
    """The releases of the decisions ``found`` for ``request``, made at ``now``.  A
    :class:`ConfigError` names an alert no decision names, or a start naming several."""
    if now.tzinfo is None:
        msg = f"a release's time must be UTC-aware; got {now.isoformat()}"
        raise ValueError(msg)
    out = ReleasePlan(found.alert_id())
    for decision in found.standing:
        p = decision.payload
        action = _RELEASABLE[p.action]  # (Finder takes no other)
        earlier = found.released.get(decision.event_id)
        if earlier is not None:
            out.released.append((decision, earlier))
        elif p.expires_at is not None and p.expires_at <= now:
            out.expired.append(decision)
        else:
            out.releases.append(
                Release(
                    event_id=release_id(decision),
                    source=SOURCE,
                    occurred_at=now,
                    entities=decision.entities,
                    payload=ReleasePayload(
                        decision_id=decision.event_id,
                        action=action,
                        entity=p.entity,
                        rule_id=p.rule_id,
                        alert_id=p.alert_id,
                        withdrawal_id=p.withdrawal_id,
                        released_by=request.by,
                        reason=request.reason,
                    ),
                )
            )
    if any(r.payload.action != "require_step_up" for r in out.releases):
        out.still_held = [
            other
            for other in found.others
            if other.event_id not in found.released
            and (other.payload.expires_at is None or other.payload.expires_at > now)
        ]
    return out
