"""Running a rule file's example cases: its events through its rules, alerts compared.

A case passes when the alerts its events produce are exactly the expected ones: each
expectation (rule, and when given entity ``kind:id`` and decision) is met by an alert, and
no alert of the file's rules is left unexpected.  Cases run in memory through the same
operator as production (:class:`~vigil.detect.engine.DetectOperator`); intel indicator
events in a case feed the index as they would from ``intel.indicators``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from vigil.detect.engine import ALERTS_TOPIC, DECISIONS_TOPIC, DetectOperator, RuleSet
from vigil.detect.intel import IntelIndex
from vigil.detect.rules.models import Case, Expectation, Rule
from vigil.events.types import Alert, Decision
from vigil.testing import run_operators


@dataclass
class CaseResult:
    case: Case
    alerts: list[Alert]
    decisions: list[Decision]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def where(self) -> str:
        return f"{self.case.file}:{self.case.line}"


def run_case(case: Case, rules: Sequence[Rule], intel: IntelIndex | None = None) -> CaseResult:
    op = DetectOperator(RuleSet(rules, intel if intel is not None else IntelIndex()))
    result = run_operators([op], case.events)
    alerts: list[Alert] = result.emitted(ALERTS_TOPIC)
    decisions: list[Decision] = result.emitted(DECISIONS_TOPIC)
    out = CaseResult(case, alerts, decisions)
    fits = [[i for i, alert in enumerate(alerts) if _fits(x, alert, decisions)] for x in case.expect]
    # Each expectation its own alert, as many as can be (a matching, not first come first
    # served: a general expectation listed first took the alert a specific one needed).
    owner: dict[int, int] = {}
    for n in range(len(case.expect)):
        _claim(n, fits, owner, set())
    matched = {x: a for a, x in owner.items()}
    for n, x in enumerate(case.expect):
        if n not in matched:
            got = ", ".join(_describe(a) for a in alerts) or "no alerts"
            want = (
                x.rule
                + (f" on {x.entity}" if x.entity else "")
                + (f" with {x.decision}" if x.decision else "")
            )
            out.problems.append(f"expected an alert {want}; got {got}")
    for i, alert in enumerate(alerts):
        if i not in owner:
            out.problems.append(f"unexpected alert {_describe(alert)}")
    return out


def _fits(x: Expectation, alert: Alert, decisions: Sequence[Decision]) -> bool:
    p = alert.payload
    if p.rule_id != x.rule:
        return False
    if x.entity is not None and f"{p.entity.kind}:{p.entity.id}" != x.entity:
        return False
    return x.decision is None or any(
        d.payload.alert_id == alert.event_id and d.payload.action == x.decision for d in decisions
    )


def _claim(n: int, fits: list[list[int]], owner: dict[int, int], tried: set[int]) -> bool:
    """Find expectation ``n`` an alert, moving others to alerts they also fit if need be (an
    augmenting path; cases hold a handful of alerts)."""
    for alert in fits[n]:
        if alert in tried:
            continue
        tried.add(alert)
        if alert not in owner or _claim(owner[alert], fits, owner, tried):
            owner[alert] = n
            return True
    return False


def _describe(alert: Alert) -> str:
    p = alert.payload
    return f"{p.rule_id} on {p.entity.kind}:{p.entity.id}"


def run_cases(
    cases: Sequence[Case], rules: Sequence[Rule], intel: IntelIndex | None = None
) -> list[CaseResult]:
    """Run each case against the rules of its own file (a case documents its file's rules)."""
    by_file: dict[str, list[Rule]] = {}
    for rule in rules:
        by_file.setdefault(rule.file, []).append(rule)
    return [run_case(c, by_file.get(c.file, []), intel) for c in cases]
