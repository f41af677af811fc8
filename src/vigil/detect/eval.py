"""Detection quality against the simulator's ground truth.

Definitions (the numbers ``vigil eval`` prints):

- An alert *matches* an episode when an entity of the alert (its ``entity`` or one of its
  ``related``) is an entity of the episode (its label's ``entity`` or ``related``), its
  last evidence time lies inside the episode window ``[start, end]``, and some of its evidence
  is the episode's own events.  (Without the last, an alert on benign activity of an entity an
  episode names, such as the exchange's hot wallet or a CRM vendor, counted as detecting it.)
  Addresses compare case-insensitively whatever their kind (wallet, counterparty, address).
- An alert that would match an episode but that its last evidence comes after the end of
  *follows* it: an attack's own event with a later one of the same entity (the victim's next
  login after the attacker's).  It names the attack, so it is no false positive, but it comes
  after the attack: it earns no recall.
- **recall** of a scenario: the share of its episodes matched by at least one alert.
- **precision** of a scenario: of the alerts charged to it, the share that match one of its
  episodes.  An alert matching episodes is charged to their scenarios.  An alert matching none
  (a false positive) is charged to every scenario its rule answers for: the rule's
  ``typology`` when that is a scenario's name, the scenarios :data:`TYPOLOGY_SCENARIOS` maps
  it to (a takeover signal such as ``impossible_travel``), and every scenario the rule's
  alerts earned recall for in the run.  A rule that earns credit for a scenario pays for its
  false alarms there.  ``1.0`` when none are charged.  A false positive of a rule that answers
  for no scenario of the run is **unattributed**: counted in **precision** overall (alerts
  matching an episode over all alerts) and on its own.
- **per rule**: each rule's alerts, true positives (matching an episode), false positives and
  the scenarios its false positives are charged to.
- **ttd** (time to detect): from the episode start to the last evidence time of its first
  matching alert, in event time (seconds); p50 and p95 over detected episodes.
- **hold_before_funds_leave**: the share of episodes with a ``funds_leave_at`` that got a
  ``hold_withdrawal`` or ``block`` decision on a matching entity whose time (the alert's last
  evidence) is before it; for every scenario a rule that holds answers for (its typology's, and
  those its alerts matched), expected of account takeover and address poisoning
  (``HOLD_SCENARIOS``).  Not applicable (``None``) to a drainer approval: the tokens leave the
  victim's own wallet on chain, where no exchange hold reaches them (a hold on the exchange
  account only keeps further funds from following).
- **benign_events**: events that belong to no attack episode (look-alikes included);
  **false_positives_per_10k**: alerts matching no attack episode per 10,000 benign events.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vigil.detect.engine import ALERTS_TOPIC, DECISIONS_TOPIC, DetectOperator, RuleSet
from vigil.detect.intel import IntelIndex, indicators_from_files
from vigil.detect.rules.models import Rule
from vigil.events.base import Event
from vigil.events.records import EpisodeLabel
from vigil.events.types import Alert, Decision, EntityRef
from vigil.testing import run_operators

if TYPE_CHECKING:
    from vigil.sim import Simulation

#: Scenarios where a hold can stop the money: a drainer pulls the approved wallet's tokens on
#: chain, out of the exchange's reach, so its hold share is not applicable.
HOLD_SCENARIOS = ("account_takeover", "address_poisoning")
#: Scenarios whose money leaves out of any exchange hold's reach (see the module docstring).
NO_HOLD_SCENARIOS = ("drainer_approval",)
#: Rule typologies that are no scenario's name, and the scenarios whose signals they are: their
#: false positives are charged to these scenarios' precision.
TYPOLOGY_SCENARIOS: dict[str, tuple[str, ...]] = {
    "impossible_travel": ("account_takeover",),
    "mfa_fatigue": ("account_takeover",),
    "security_change_new_address": ("account_takeover",),
    "dormant_reactivation": ("account_takeover",),
}
HOLD_ACTIONS = ("hold_withdrawal", "block")
_ADDRESS_KINDS = frozenset({"wallet", "counterparty", "address", "from_address", "to_address"})


def entity_key(ref: EntityRef) -> str:
    if ref.kind in _ADDRESS_KINDS or ref.id.startswith("0x"):
        return f"address:{ref.id.lower()}"
    return f"{ref.kind}:{ref.id}"


def _alert_keys(alert: Alert) -> set[str]:
    p = alert.payload
    return {entity_key(p.entity), *(entity_key(r) for r in p.related)}


def _label_keys(label: EpisodeLabel) -> set[str]:
    return {entity_key(label.entity), *(entity_key(r) for r in label.related)}


class EpisodeIndex:
    def __init__(self, labels: Sequence[EpisodeLabel]) -> None:
        self.labels = list(labels)
        self._by_key: dict[str, list[int]] = {}
        self._events = [frozenset(label.event_ids) for label in self.labels]
        for i, label in enumerate(self.labels):
            for key in _label_keys(label):
                self._by_key.setdefault(key, []).append(i)

    def matches(
        self, keys: Iterable[str], at: datetime, evidence: Iterable[str], *, late: bool = False
    ) -> list[int]:
        """The episodes an alert with entity ``keys``, last evidence time ``at`` and evidence
        event ids ``evidence`` matches (see the module); with ``late``, those it would match
        but that its last evidence comes after the end of (it *follows* them)."""
        ids = frozenset(evidence)
        out: set[int] = set()
        for key in keys:
            for i in self._by_key.get(key, ()):
                label = self.labels[i]
                inside = label.start <= at <= label.end if not late else at > label.end
                if inside and not ids.isdisjoint(self._events[i]):
                    out.add(i)
        return sorted(out)


@dataclass
class ScenarioScore:
    episodes: int = 0
    alerts: int = 0
    recall: float = 0.0
    precision: float = 1.0
    ttd_p50_s: float | None = None
    ttd_p95_s: float | None = None
    hold_before_funds_leave: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "episodes": self.episodes,
            "alerts": self.alerts,
            "recall": round(self.recall, 4),
            "precision": round(self.precision, 4),
            "ttd_p50_s": None if self.ttd_p50_s is None else round(self.ttd_p50_s, 1),
            "ttd_p95_s": None if self.ttd_p95_s is None else round(self.ttd_p95_s, 1),
            "hold_before_funds_leave": None
            if self.hold_before_funds_leave is None
            else round(self.hold_before_funds_leave, 4),
        }


@dataclass
class RuleScore:
    """One rule's alerts in a run: how many matched an episode, and where its misses are charged."""

    alerts: int = 0
    true_positives: int = 0
    #: The scenarios the rule answers for (see the module): its false positives count in their
    #: precision.  Empty: its false positives are unattributed.
    scenarios: tuple[str, ...] = ()

    @property
    def false_positives(self) -> int:
        return self.alerts - self.true_positives

    def as_json(self) -> dict[str, Any]:
        return {
            "alerts": self.alerts,
            "true_positives": self.true_positives,
            "false_positives": self.false_positives,
            "scenarios": list(self.scenarios),
        }


@dataclass
class EvalResult:
    scenarios: dict[str, ScenarioScore]
    benign_events: int
    false_positives: int
    events: int
    alerts: int
    decisions: int
    seconds: float
    per_rule: dict[str, tuple[int, int]] = field(default_factory=dict)  # rule -> (alerts, false positives)
    missed: dict[str, list[str]] = field(default_factory=dict)  # scenario -> missed episode ids
    #: Where detection ran: "memory" (the operator in process) or "kafka" (both applications).
    mode: str = "memory"
    #: Benign look-alike scenario -> (episodes, episodes that drew an alert): what fooled the rules.
    lookalikes: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: False positives charged to no scenario (their rule answers for none in the run): in no
    #: scenario's precision, so shown on their own.
    unattributed: int = 0
    #: Per rule: alerts, true positives and the scenarios its false positives are charged to.
    rules: dict[str, RuleScore] = field(default_factory=dict)
    #: Alerts that follow an episode (see the module): not false positives, no recall.
    late: int = 0

    @property
    def precision(self) -> float:
        """Alerts matching some attack episode, over all alerts (1.0 with none)."""
        return (self.alerts - self.false_positives) / self.alerts if self.alerts else 1.0

    @property
    def false_positives_per_10k(self) -> float:
        return 10_000 * self.false_positives / self.benign_events if self.benign_events else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "scenarios": {name: s.as_json() for name, s in sorted(self.scenarios.items())},
            "benign_events": self.benign_events,
            "false_positives_per_10k": round(self.false_positives_per_10k, 4),
            "alerts": self.alerts,
            "false_positives": self.false_positives,
            "unattributed": self.unattributed,
            "late": self.late,
            "rules": {rule: r.as_json() for rule, r in sorted(self.rules.items())},
        }


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def score(
    labels: Sequence[EpisodeLabel],
    alerts: Sequence[Alert],
    decisions: Sequence[Decision],
    *,
    rules: Sequence[Rule],
    events: int,
    benign_events: int,
    seconds: float = 0.0,
    lookalikes: Sequence[EpisodeLabel] = (),
) -> EvalResult:
    index = EpisodeIndex(labels)
    fooled = EpisodeIndex(lookalikes)
    fooled_by: set[int] = set()
    typology = {r.id: r.typology for r in rules}
    names = sorted({label.scenario for label in labels})
    scores = {name: ScenarioScore() for name in names}
    first_alert_at: dict[int, datetime] = {}
    attributed: dict[str, list[bool]] = {name: [] for name in names}
    false_positives = 0
    unattributed = 0
    late = 0
    tallies: dict[str, list[int]] = {}  # rule -> [alerts, true positives]
    #: The scenarios each rule answers for: its typology's, and those its alerts matched.
    answers: dict[str, set[str]] = {}
    alert_matches: dict[str, list[int]] = {}
    misses: list[str] = []  # the rule of each false positive
    for alert in alerts:
        p = alert.payload
        evidence = [e.event_id for e in p.evidence]
        hit = index.matches(_alert_keys(alert), p.last_evidence_at, evidence)
        alert_matches[alert.event_id] = hit
        tally = tallies.setdefault(p.rule_id, [0, 0])
        tally[0] += 1
        own = answers.get(p.rule_id)
        if own is None:
            kind = typology.get(p.rule_id) or p.typology
            own = answers[p.rule_id] = {kind, *TYPOLOGY_SCENARIOS.get(kind, ())} & set(names)
        if not hit:
            follows = index.matches(_alert_keys(alert), p.last_evidence_at, evidence, late=True)
            if follows:
                # Late, but about an attack: true for the scenarios it follows, no recall.
                tally[1] += 1
                late += 1
                for name in {labels[i].scenario for i in follows}:
                    attributed[name].append(True)
                continue
            false_positives += 1
            misses.append(p.rule_id)
            fooled_by.update(fooled.matches(_alert_keys(alert), p.last_evidence_at, evidence))
            continue
        tally[1] += 1
        for i in hit:
            at = first_alert_at.get(i)
            if at is None or p.last_evidence_at < at:
                first_alert_at[i] = p.last_evidence_at
        matched = {labels[i].scenario for i in hit}
        own.update(matched)
        for name in matched:
            attributed[name].append(True)
    # A false positive is charged to every scenario its rule answers for (known only once every
    # alert has been matched: a rule's credit may come after its false alarm).
    for rule_id in misses:
        charged = answers[rule_id]
        if not charged:
            unattributed += 1
        for name in charged:
            attributed[name].append(False)
    holds: dict[int, datetime] = {}
    for d in decisions:
        if d.payload.action not in HOLD_ACTIONS:
            continue
        for i in alert_matches.get(d.payload.alert_id, ()):
            if i not in holds or d.occurred_at < holds[i]:
                holds[i] = d.occurred_at
    # Where a hold can be judged: every scenario a rule that holds answers for (shown for
    # sanctioned exposure, an API key's abuse, a mule, not only for the two it is expected of).
    holdable = set(HOLD_SCENARIOS)
    for rule in rules:
        if rule.decision is not None and rule.decision.action in HOLD_ACTIONS:
            kind = rule.typology
            holdable |= {kind, *TYPOLOGY_SCENARIOS.get(kind, ()), *answers.get(rule.id, ())}
    holdable -= set(NO_HOLD_SCENARIOS)
    missed: dict[str, list[str]] = {}
    for name in names:
        idx = [i for i, label in enumerate(labels) if label.scenario == name]
        s = scores[name]
        s.episodes = len(idx)
        detected = [i for i in idx if i in first_alert_at]
        missed[name] = [labels[i].episode_id for i in idx if i not in first_alert_at]
        s.recall = len(detected) / len(idx) if idx else 0.0
        ttd = [(first_alert_at[i] - labels[i].start).total_seconds() for i in detected]
        s.ttd_p50_s = statistics.median(ttd) if ttd else None
        s.ttd_p95_s = _quantile(ttd, 0.95)
        s.alerts = len(attributed[name])
        s.precision = sum(attributed[name]) / len(attributed[name]) if attributed[name] else 1.0
        if name in holdable:
            leaving = [i for i in idx if labels[i].funds_leave_at is not None]
            held = [i for i in leaving if i in holds and holds[i] < labels[i].funds_leave_at]  # type: ignore[operator]
            s.hold_before_funds_leave = len(held) / len(leaving) if leaving else None
    look: dict[str, list[int]] = {}
    for i, label in enumerate(fooled.labels):
        tally = look.setdefault(label.scenario, [0, 0])
        tally[0] += 1
        tally[1] += i in fooled_by
    return EvalResult(
        lookalikes={k: (v[0], v[1]) for k, v in sorted(look.items())},
        scenarios=scores,
        benign_events=benign_events,
        false_positives=false_positives,
        events=events,
        alerts=len(alerts),
        decisions=len(decisions),
        seconds=seconds,
        per_rule={k: (v[0], v[0] - v[1]) for k, v in sorted(tallies.items())},
        missed=missed,
        unattributed=unattributed,
        late=late,
        rules={
            k: RuleScore(alerts=v[0], true_positives=v[1], scenarios=tuple(sorted(answers[k])))
            for k, v in sorted(tallies.items())
        },
    )


def intel_for(intel_dir: Path, before: datetime) -> list[Event]:
    """The shared OFAC and ScamSniffer lists as indicator records, just before the stream starts."""
    return list(indicators_from_files(intel_dir, before - timedelta(seconds=1)))


@dataclass
class _Run:
    """A simulated stream with its ground truth, as both evaluations score it."""

    sim: Simulation
    intel_dir: Path
    start: datetime
    stream: list[Event]
    benign: int

    @classmethod
    def simulate(
        cls, *, seed: int, events: int, customers: int, data_dir: Path | None, attack_rate: float
    ) -> _Run:
        from vigil.sim import SimConfig, Simulation

        config = SimConfig(
            seed=seed,
            customers=customers,
            events=events,
            lookalikes=True,
            data_dir=data_dir,
            attack_rate=attack_rate,
        )
        sim = Simulation(config)
        stream = list(sim.canonical())
        attack_ids = {eid for label in sim.labels for eid in label.event_ids}
        benign = sum(1 for e in stream if e.event_id not in attack_ids)
        return cls(sim, config.intel_dir, config.start, stream, benign)

    def intel(self) -> list[Event]:
        return intel_for(self.intel_dir, self.start)

    def score(
        self, alerts: Sequence[Alert], decisions: Sequence[Decision], *, rules: Sequence[Rule], seconds: float
    ) -> EvalResult:
        return score(
            self.sim.labels,
            alerts,
            decisions,
            rules=rules,
            events=len(self.stream),
            benign_events=self.benign,
            seconds=seconds,
            lookalikes=self.sim.lookalikes,
        )


def evaluate(
    rules: Sequence[Rule],
    *,
    seed: int = 7,
    events: int = 200_000,
    customers: int = 2000,
    data_dir: Path | None = None,
    attack_rate: float = 1.0,
) -> EvalResult:
    """Simulate, detect in memory (the production operator, one partition) and score."""
    run = _Run.simulate(
        seed=seed, events=events, customers=customers, data_dir=data_dir, attack_rate=attack_rate
    )
    started = time.perf_counter()
    ruleset = RuleSet(rules, IntelIndex())
    op = DetectOperator(ruleset)
    result = run_operators([op], [*run.intel(), *run.stream], batch_size=2000, checkpoints=False)
    seconds = time.perf_counter() - started
    alerts: list[Alert] = result.emitted(ALERTS_TOPIC)
    decisions: list[Decision] = result.emitted(DECISIONS_TOPIC)
    return run.score(alerts, decisions, rules=rules, seconds=seconds)


def evaluate_kafka(
    settings: Any,
    rules: Sequence[Rule],
    *,
    seed: int = 7,
    events: int = 200_000,
    customers: int = 2000,
    data_dir: Path | None = None,
    attack_rate: float = 1.0,
    chunk: int = 2000,
    partitions: int = 3,
    backlog: bool = False,
) -> EvalResult:
    """The same evaluation through the real broker: both detection applications, own topics.

    Topics and consumer groups carry a unique prefix, so a shared cluster is not disturbed.
    Events are produced as a live exchange would (in event-time order, a chunk at a time,
    each chunk through both stages before the next) or, with ``backlog``, all of them before
    detection starts (a Kappa replay: the runtime's event-time alignment must restore the
    order across topics); then alerts and decisions are read back from Kafka and scored
    like the in-memory run.
    """
    import uuid

    from vigil.detect.app import DetectionService, DetectTopology, create_topics, delete_scoped_topics
    from vigil.events.codec import EventCodec
    from vigil.hub.client import EventProducer, read_committed

    run = _Run.simulate(
        seed=seed, events=events, customers=customers, data_dir=data_dir, attack_rate=attack_rate
    )
    stream = run.stream
    prefix = f"eval-{uuid.uuid4().hex[:8]}."
    topo = DetectTopology.scoped(prefix, partitions)
    create_topics(settings, topo, partitions, run.intel())
    producer = EventProducer(settings)
    # A replay has every record in Kafka already: a partition that delivers nothing for a while
    # is slow (a loaded machine), not idle, and must go on holding the others back.
    service = DetectionService(
        settings,
        rules,
        topology=topo,
        checkpoint_interval_s=0.3,
        alignment_idle_s=30.0 if backlog else DetectionService.alignment_idle_s,
    )
    if backlog:
        for event in stream:
            producer.produce(event, topic=f"{prefix}events.{type(event).domain}")
        producer.flush()
    started = time.perf_counter()
    service.start()
    try:
        if backlog:
            service.wait_caught_up(len(stream), timeout_s=600)
        sent = 0
        for begin in range(0, 0 if backlog else len(stream), chunk):
            part = stream[begin : begin + chunk]
            for event in part:
                producer.produce(event, topic=f"{prefix}events.{type(event).domain}")
            producer.flush()
            sent += len(part)
            service.wait_caught_up(sent, timeout_s=120)
    finally:
        service.stop()
    seconds = time.perf_counter() - started
    codec = EventCodec()
    # (Reading back is not part of the timed run.)  The service has stopped: read to the end.
    read: dict[str, list[Any]] = {
        topic: [codec.decode(m.value()) for m in read_committed(settings, topic) if m.value() is not None]
        for topic in (topo.alerts, topo.decisions)
    }
    delete_scoped_topics(settings, prefix)
    alerts = list({a.event_id: a for a in read[topo.alerts]}.values())
    decisions = list({d.event_id: d for d in read[topo.decisions]}.values())
    result = run.score(alerts, decisions, rules=rules, seconds=seconds)
    result.mode = "kafka-backlog" if backlog else "kafka"
    return result
