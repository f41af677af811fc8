"""Turning a rule's hit into an alert, and an alert into a decision.

Alert id
    ``stable_id(rule id, rule version, entity kind, entity id, evidence event ids)``, the
    evidence in (event time, event id) order: the same detection replayed (a retry, a restart
    from an earlier offset, the same events through the Kafka app or in memory) gets the same
    id, so downstream deduplicates exactly, and two detections on different evidence get two;
    a new rule version yields new ids.  A decision's id adds its action and the withdrawal it
    holds.

Evidence
    the events that made the rule fire, in event-time order, each with its id, type, time
    and the key fields that matched.  ``first_evidence_at`` / ``last_evidence_at`` are
    their event times; the alert's ``occurred_at`` is the last (when it became knowable).

Detection latency
    ``detection_latency_ms`` is wall-clock time from when Vigil received the last evidence
    event (its ``ingested_at``, else the broker's append timestamp) to when the alert was
    built: the pipeline's own delay, measured per alert.  How long after an attack began it
    was caught (event time) is the evaluation's time-to-detect, not this.

Explanation
    a one-paragraph plain-text template from the rule (``{name}`` placeholders only, checked
    at load).  Values taken from events are attacker-controlled: they are inserted as data,
    quoted, with control characters escaped and length bounded, never interpreted; readers
    must still escape the text for their medium (HTML, Rich markup).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from vigil.detect.kinds.base import Hit, at_epoch, to_evidence
from vigil.detect.rules.models import Rule
from vigil.events.base import Entities
from vigil.events.ids import stable_id
from vigil.events.types import Alert, AlertPayload, Decision, DecisionPayload, EntityRef

_MAX_VALUE = 120
#: A count, span or score as the kinds write it ("12", "3.5 km", "2h"): shown bare.  One space,
#: not \s, before a unit: \s took a line break, U+2028 or U+0085 into the prose unquoted.
_PLAIN = re.compile(r"[0-9][0-9.,]*[ ]?[a-z]{0,3}")
_NUMERIC_CONTEXT = frozenset(
    {
        "count",
        "value",
        "span",
        "evidence_count",
        "hops",
        "score",
        "speed_kmh",
        "ratio",
        "history_count",
        "chars",
        "baseline",
    }
)
#: Context the rule or the intel list supplies (not the event): bare when it is a plain word.
_SYSTEM_CONTEXT = frozenset(
    {"field", "category", "feed", "list_version", "direction", "measure", "mark_type", "other_at"}
)
_WORD = re.compile(r"[\w.@:+ -]{1,60}")
#: Event fields that are quantities: shown as numbers (grouped, unquoted) when their value is
#: plainly one.  Quoted like text, "15643.58" USD next to a context's 100,000 USD read as two
#: kinds of thing (found in review).  Ids that are digits (a withdrawal's) stay quoted.
_QUANTITIES = frozenset({"amount", "amount_usd", "points", "record_count", "quantity", "price"})
_NUMBER = re.compile(r"(-?)([0-9]{1,30})(\.[0-9]{1,30})?")


def alert_id(rule: Rule, entity: EntityRef, evidence_ids: Sequence[str]) -> str:
    """Stable across replays (the same evidence gives the same id, so downstream deduplicates a
    re-emitted alert) and distinct for distinct detections: every piece of evidence counts, not
    only the first (two withdrawals after the same deposits were one alert id, and their holds
    one decision id, so deduplication dropped the second hold)."""
    return stable_id(rule.id, rule.version, entity.kind, entity.id, *evidence_ids, prefix="alert-")


def as_data(value: str) -> str:
    """An attacker-controlled value made safe to place in prose: quoted, escaped, bounded."""
    # Backslashes are escaped too: with only quotes escaped, ``\\"`` got out of its quotes (an
    # escaped backslash, then a real closing quote), and a literal ``\\x0a`` read as a newline.
    pieces = list(map(_inert_char, value))
    cleaned = "".join(pieces)
    if len(cleaned) > _MAX_VALUE:
        # Cut between escapes, never inside one (a dangling backslash would escape the "…").
        kept, used = [], 0
        for piece in pieces:
            used += len(piece)
            if used > _MAX_VALUE - 1:
                break
            kept.append(piece)
        cleaned = "".join(kept) + "…"
    return f'"{cleaned}"'


def _inert_char(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    if ch == '"':
        return '\\"'
    if ch.isprintable():
        return ch
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class _Context(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "(unknown)"


def explain(rule: Rule, hit: Hit) -> str:
    ctx = _Context()
    for item in hit.evidence:
        for name, value in item[3].items():
            number = _NUMBER.fullmatch(value) if name in _QUANTITIES else None
            ctx[name] = as_data(value) if number is None else _grouped(number)
    for name, value in hit.context.items():
        # Counts, spans and scores read better bare; anything that is not plainly one is quoted.
        plain = (name in _NUMERIC_CONTEXT and _PLAIN.fullmatch(value) is not None) or (
            name in _SYSTEM_CONTEXT and _WORD.fullmatch(value) is not None
        )
        ctx[name] = value if plain else as_data(value)
    ctx["entity"] = as_data(hit.entity.id)
    ctx["entity_kind"] = hit.entity.kind
    ctx["rule"] = rule.id
    ctx["title"] = rule.title
    ctx["severity"] = rule.severity
    ctx["evidence_count"] = str(len(hit.evidence))
    if hit.evidence:
        ctx["first_at"] = _iso(hit.evidence[0][2])
        ctx["last_at"] = _iso(hit.evidence[-1][2])
    # format_map over a plain-name template (validated at load) cannot reach attributes.
    text = (hit.template or rule.explanation).strip().format_map(ctx)
    if hit.note is not None:
        template, value = hit.note
        text += " " + template.format(as_data(value))
    return text


def _grouped(number: re.Match[str]) -> str:
    """A plain number with its thousands grouped: ``15643.58`` -> ``15,643.58``."""
    sign, whole, fraction = number.groups()
    return f"{sign}{int(whole):,}{fraction or ''}"


def _iso(epoch: float) -> str:
    return at_epoch(epoch).isoformat().replace("+00:00", "Z")


def _entities(ref: EntityRef) -> Entities:
    if ref.kind in Entities.KINDS:
        return Entities(**{ref.kind: ref.id})
    return Entities()


def make_alert(rule: Rule, hit: Hit, *, latency_ms: float | None) -> Alert:
    if rule.entity and hit.entity.kind != rule.entity:
        # The rule names what the alert is about (a maker_account is an account).
        hit.entity = EntityRef(kind=rule.entity, id=hit.entity.id)
    ordered = sorted(hit.evidence, key=lambda e: (e[2], e[0]))
    evidence = to_evidence(ordered)  # (bounded: the first ones and the last)
    first, last = evidence[0], evidence[-1]
    return Alert(
        # From all of it, not the evidence kept: two detections differing only past what is kept
        # had one id, and deduplication dropped the second.
        event_id=alert_id(rule, hit.entity, hit.identity or [e[0] for e in ordered]),
        source="vigil.detect",
        occurred_at=last.occurred_at,
        entities=_entities(hit.entity),
        payload=AlertPayload(
            rule_id=rule.id,
            rule_version=rule.version,
            severity=rule.severity,
            score=hit.score if hit.score is not None else rule.score,
            entity=hit.entity,
            related=hit.related,
            explanation=explain(rule, hit),
            evidence=evidence,
            typology=rule.typology,
            attack=list(rule.attack),
            first_evidence_at=first.occurred_at,
            last_evidence_at=last.occurred_at,
            detection_latency_ms=latency_ms,
            intel_version=hit.intel_version,
        ),
    )


def make_decision(rule: Rule, alert: Alert, hit: Hit) -> Decision | None:
    if rule.decision is None:
        return None
    withdrawal = hit.withdrawal_id or _last_field(hit, "withdrawal_id")
    p = alert.payload
    return Decision(
        event_id=stable_id(alert.event_id, rule.decision.action, withdrawal or "", prefix="decision-"),
        source="vigil.detect",
        occurred_at=alert.occurred_at,
        entities=alert.entities,
        payload=DecisionPayload(
            action=rule.decision.action,
            entity=p.entity,
            rule_id=rule.id,
            alert_id=alert.event_id,
            reason=f"{rule.title} ({rule.id} v{rule.version}, severity {rule.severity})",
            withdrawal_id=withdrawal,
            expires_at=_expiry(alert.occurred_at, rule.decision.ttl),
        ),
    )


def _expiry(at: datetime, ttl: timedelta | None) -> datetime | None:
    """When a decision made at ``at`` lapses (None: never, until released).  An event dated
    within ``ttl`` of the year 9999 (anything writing events.* directly, past the normaliser's
    clock check) lapses at the last moment a datetime holds: the addition overflowed and stopped
    the stage."""
    if ttl is None or ttl <= timedelta(0):
        return None
    return at + ttl if datetime.max.replace(tzinfo=UTC) - at > ttl else datetime.max.replace(tzinfo=UTC)


def _last_field(hit: Hit, name: str) -> str | None:
    for item in reversed(hit.evidence):
        value: Any = item[3].get(name)
        if value:
            return str(value)
    return None
