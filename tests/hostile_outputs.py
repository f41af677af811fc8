"""An alert and its hold decision on an entity, and with an explanation, an attacker chose: what
the command line's analyst lines (`vigil demo`, `vigil tail`) must print inert."""

from __future__ import annotations

from datetime import datetime

from vigil.events.types import Alert, AlertPayload, Decision, DecisionPayload, EntityRef

#: Clears the screen, opens a hyperlink to evil.example (OSC 8), and hides what follows.
SEQUENCES = "\x1b[2J\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\\x1b[8m"


def drainer_alert_and_hold(
    at: datetime,
    *,
    entity_id: str,
    alert_id: str,
    decision_id: str,
    latency_ms: float | None = None,
    expires_at: datetime | None = None,
) -> tuple[Alert, Decision]:
    """A drainer-approval alert at ``at`` on wallet ``entity_id``, its explanation holding
    terminal sequences and Rich markup, and the hold of withdrawal ``wd-1`` it decided, its
    reason holding terminal sequences too."""
    entity = EntityRef(kind="wallet", id=entity_id)
    alert = Alert(
        event_id=alert_id,
        source="test",
        occurred_at=at,
        payload=AlertPayload(
            rule_id="drainer-approval",
            rule_version=1,
            severity="high",
            score=90,
            entity=entity,
            explanation=f"approved a drainer named {SEQUENCES} [link=https://evil.example/]x[/link]",
            typology="drainer",
            first_evidence_at=at,
            last_evidence_at=at,
            detection_latency_ms=latency_ms,
        ),
    )
    decision = Decision(
        event_id=decision_id,
        source="test",
        occurred_at=at,
        payload=DecisionPayload(
            action="hold_withdrawal",
            entity=entity,
            rule_id="drainer-approval",
            alert_id=alert.event_id,
            # (Detection writes the rule's title here; another producer of decisions, anything.)
            reason=f"Token approval to a known drainer {SEQUENCES} (drainer-approval v1, severity high)",
            withdrawal_id="wd-1",
            expires_at=expires_at,
        ),
    )
    return alert, decision
