"""Rule models: what a validated rule file becomes.

Rules are frozen: loading builds them once, detectors read them.  Each rule has a stable
id and an integer version; ``key`` (``<id>.v<version>``) names its state store, so a new
version starts with empty state on purpose, and old alert ids stay distinct from new ones.
Kind-specific settings live in ``params`` (one frozen dataclass per kind, see
:mod:`vigil.detect.kinds`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from vigil.events.base import Event

Severity = Literal["low", "medium", "high", "critical"]
SEVERITIES: tuple[str, ...] = ("low", "medium", "high", "critical")
DecisionAction = Literal["hold_withdrawal", "require_step_up", "block"]
DECISION_ACTIONS: tuple[str, ...] = ("hold_withdrawal", "require_step_up", "block")


@dataclass(frozen=True)
class DecisionSpec:
    """What to ask the back end when the rule fires, and for how long the decision stands
    (``ttl`` None: until someone releases it, e.g. a sanctions hold, which compliance must
    review rather than let lapse)."""

    action: DecisionAction
    ttl: timedelta | None = timedelta(hours=24)


@dataclass(frozen=True)
class Rule:
    id: str
    version: int
    title: str
    kind: str
    typology: str
    severity: Severity
    score: float
    explanation: str
    params: Any
    attack: tuple[str, ...] = ()
    decision: DecisionSpec | None = None
    #: The entity kind the alert is about (defaults per kind, usually the first ``group_by``).
    entity: str | None = None
    file: str = "<memory>"
    line: int = 0

    @property
    def key(self) -> str:
        return f"{self.id}.v{self.version}"

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Expectation:
    rule: str
    entity: str | None = None
    decision: str | None = None


@dataclass(frozen=True)
class Case:
    """An example from a rule file: events in, the alerts expected out (an empty list: none)."""

    name: str
    events: tuple[Event, ...]
    expect: tuple[Expectation, ...]
    file: str
    line: int


@dataclass
class RuleFile:
    path: str
    rules: list[Rule] = field(default_factory=list)
    cases: list[Case] = field(default_factory=list)
    #: Every rule id the file declares, valid or not (so a broken rule is not also "unknown").
    declared: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Issue:
    """One problem found by validation, located in its file."""

    file: str
    line: int
    column: int
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.severity}: {self.message}"
