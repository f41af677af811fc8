"""An alert and a decision as an analyst reads them on the command line (``vigil demo``'s live
lines, ``vigil tail alerts`` and ``vigil tail decisions``): Rich markup, every string that came
from outside (entity ids, explanations: attacker-controlled) made inert with ``shown``."""

from __future__ import annotations

from vigil.cli._common import shown
from vigil.events.types import Alert, Decision, Release

#: An alert's id as a line shows it: "alert-" and 12 hex digits, enough to find it in its topic.
ID_SHOWN = 18

_COLOURS = {"critical": "bold red", "high": "red", "medium": "yellow"}


def alert_line(alert: Alert) -> str:
    """Severity, when, the rule, the entity, the alert's id and detection latency; then the whole
    explanation on a line of its own (cut at 200 characters, it lost the amount and the action
    taken, found in review), wrapped by the terminal.  The time is the last evidence's, in UTC
    with its year ("11-01 05:27" said neither)."""
    p = alert.payload
    colour = _COLOURS.get(p.severity, "cyan")
    latency = f"{p.detection_latency_ms:.0f} ms" if p.detection_latency_ms is not None else "n/a"
    return (
        f"[{colour}]{p.severity:>8}[/] {alert.occurred_at:%Y-%m-%d %H:%M:%SZ} "
        f"[bold]{shown(p.rule_id)}[/] {shown(p.entity.kind)}:{shown(p.entity.id)} "
        f"[dim]{shown(alert.event_id[:ID_SHOWN])}, latency {latency}[/]\n"
        f"         {shown(p.explanation)}"
    )


def decision_line(decision: Decision) -> str:
    """What is done (held: the withdrawal, when the decision names one), until when, the alert
    it comes from and why (a bare "hold_withdrawal customer:..." said neither, found in review;
    the rule's id alone left the analyst to look up what it detects)."""
    p = decision.payload
    held = f" withdrawal {shown(p.withdrawal_id)}" if p.withdrawal_id is not None else ""
    until = (
        f"expires {p.expires_at:%Y-%m-%d %H:%MZ}"
        if p.expires_at is not None
        else ("until released" if p.action == "hold_withdrawal" else "")
    )
    return (
        f"[bold magenta]{p.action}[/] {shown(p.entity.kind)}:{shown(p.entity.id)}{held} "
        f"[dim]{until}{'; ' if until else ''}{shown(p.alert_id[:ID_SHOWN])}: {shown(p.reason)}[/]"
    )


def release_line(release: Release) -> str:
    """What was let go (the decision's action, entity and withdrawal), the alert, who and why."""
    p = release.payload
    held = f" withdrawal {shown(p.withdrawal_id)}" if p.withdrawal_id is not None else ""
    return (
        f"[bold green]release[/] {shown(p.action)} {shown(p.entity.kind)}:{shown(p.entity.id)}{held} "
        f"[dim]{shown(p.alert_id[:ID_SHOWN])}: released by {shown(p.released_by)}: {shown(p.reason)}[/]"
    )
