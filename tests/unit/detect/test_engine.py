"""The detection operator: deterministic alerts, explanations as data, routing across partitions."""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import pytest
from tests.unit.detect.chain_events import transfer

from vigil.detect.alerts import alert_id, make_alert
from vigil.detect.engine import (
    ALERTS_TOPIC,
    ROUTED_TOPIC,
    DetectOperator,
    RouteOperator,
    RuleSet,
    _dispatch,
    _prefix_decides,
    detect_events,
)
from vigil.detect.intel import IntelIndex
from vigil.detect.kinds.base import MAX_EVIDENCE, Hit
from vigil.detect.rules.registry import KINDS
from vigil.detect.rules.validate import load_rules, validate_paths
from vigil.events.base import Entities, Event
from vigil.events.codec import encode
from vigil.events.types import (
    Alert,
    CrmRecordExport,
    CrmRecordExportPayload,
    Deposit,
    DepositPayload,
    EntityRef,
    FailedLogin,
    FailedLoginPayload,
    Geo,
    IntelIndicator,
    IntelIndicatorPayload,
    Login,
    LoginPayload,
    MfaChallenge,
    MfaChallengePayload,
    Trade,
    TradePayload,
    WithdrawalRequest,
    WithdrawalRequestPayload,
)
from vigil.sim import SimConfig, Simulation
from vigil.stream.base import Operator, Record, State, StoreSpec
from vigil.testing import MemoryState, partition_for, run_operators

ROOT = Path(__file__).resolve().parents[3]
RULES = load_rules([ROOT / "rules"])
T0 = datetime(2026, 5, 1, tzinfo=UTC)


def small_sim() -> list[Event]:
    sim = Simulation(SimConfig(seed=3, customers=300, events=15_000, attack_rate=2.0))
    return list(sim.canonical())


def alert_ids(alerts: Sequence[Alert]) -> list[str]:
    return sorted(a.event_id for a in alerts)


def test_alert_ids_are_deterministic_across_runs_and_restarts() -> None:
    events = small_sim()
    first = run_operators([DetectOperator(RuleSet(RULES))], events).emitted(ALERTS_TOPIC)
    second = run_operators([DetectOperator(RuleSet(RULES))], events).emitted(ALERTS_TOPIC)
    assert len(first) > 10
    assert alert_ids(first) == alert_ids(second)
    # A "restart" half way (state carried over, new operator objects) yields the same alerts.
    op = DetectOperator(RuleSet(RULES))
    half = len(events) // 2
    result = run_operators([op], events[:half])
    result = run_operators([DetectOperator(RuleSet(RULES))], events[half:], result=result)
    assert alert_ids(result.emitted(ALERTS_TOPIC)) == alert_ids(first)


def test_two_detections_with_the_same_first_evidence_have_their_own_ids() -> None:
    # Money-mule: three deposits, then two withdrawals to new addresses, each an alert and a
    # hold.  With ids from the first piece of evidence alone, both alerts and both holds had one
    # id each, and deduplication downstream dropped the second hold.
    who = Entities(customer="c1")
    deposits = [
        Deposit(
            event_id=f"d{i}",
            source="b",
            occurred_at=T0 + timedelta(minutes=10 * i),
            entities=who,
            payload=DepositPayload(
                deposit_id=f"d{i}", asset="USDT", amount=3000, amount_usd=3000, from_address=f"0x0{i}"
            ),
        )
        for i in range(3)
    ]
    withdrawals = [
        WithdrawalRequest(
            event_id=f"w{i}",
            source="b",
            occurred_at=T0 + timedelta(minutes=40 + i),
            entities=who,
            payload=WithdrawalRequestPayload(
                withdrawal_id=f"w{i}", asset="USDT", amount=7000, amount_usd=7000, to_address=f"0xf{i}"
            ),
        )
        for i in range(2)
    ]
    rules = [r for r in RULES if r.id == "rapid-in-out"]
    alerts, decisions = detect_events(RuleSet(rules, IntelIndex()), [*deposits, *withdrawals])
    assert [a.payload.evidence[-1].event_id for a in alerts] == ["w0", "w1"]
    assert len({a.event_id for a in alerts}) == 2
    assert sorted(d.payload.withdrawal_id or "" for d in decisions) == ["w0", "w1"]
    assert len({d.event_id for d in decisions}) == 2


def test_detections_differing_past_the_evidence_an_alert_keeps_have_their_own_ids() -> None:
    # An alert keeps the first pieces of evidence and the last; its id came from those alone, so
    # two detections on the same entity differing only in between shared one (and deduplication
    # dropped the second).
    rule = next(r for r in RULES if r.kind == "threshold")
    who = EntityRef(kind="customer", id="c1")
    common = [[f"e{i}", "login", 1000.0 + i, {}] for i in range(MAX_EVIDENCE)]
    last = ["e-last", "login", 2000.0, {}]
    one = make_alert(
        rule, Hit(entity=who, evidence=[*common, ["e-a", "login", 1500.0, {}], last]), latency_ms=None
    )
    two = make_alert(
        rule, Hit(entity=who, evidence=[*common, ["e-b", "login", 1500.0, {}], last]), latency_ms=None
    )
    assert one.payload.evidence == two.payload.evidence  # what each keeps is the same
    assert one.event_id != two.event_id
    # Evidence an alert keeps whole gives the id it always had (ids are stable across versions).
    few = common[:3]
    kept = make_alert(rule, Hit(entity=who, evidence=few), latency_ms=None)
    assert kept.event_id == alert_id(rule, who, [e[0] for e in few])


def failed_logins(ip: str, usernames: Sequence[str]) -> list[FailedLogin]:
    return [
        FailedLogin(
            event_id=f"f{i}",
            source="b",
            occurred_at=T0 + timedelta(seconds=i / 2),
            entities=Entities(ip=ip),
            payload=FailedLoginPayload(username=name),
        )
        for i, name in enumerate(usernames)
    ]


def test_long_attacker_strings_are_kept_in_state_cut_but_still_distinct() -> None:
    # 1,000 failed logins from one IP with one 2 KB user name: the window kept each name whole
    # (2.3 MB, past what a changelog record may hold: every checkpoint failed, the restarted
    # stage too).  Cut with a digest, the window stays small, and names that differ only past
    # the cut still count as distinct.
    stuffing = RuleSet([r for r in RULES if r.id == "credential-stuffing"], IntelIndex())
    padded = "admin" + "A" * 2000
    result = run_operators([DetectOperator(stuffing)], failed_logins("203.0.113.9", [padded] * 1000))
    assert result.emitted(ALERTS_TOPIC) == []
    sizes = [len(msgspec.msgpack.encode(v)) for st in result.states.values() for v in st.data.values()]
    assert 0 < max(sizes) < 600_000  # (2.3 MB before)
    distinct = [f"{padded}{i}" for i in range(10)]  # the same first 2 KB
    (alert,) = run_operators([DetectOperator(stuffing)], failed_logins("203.0.113.9", distinct)).emitted(
        ALERTS_TOPIC
    )
    assert alert.payload.entity.id == "203.0.113.9"


def test_a_bar_in_an_entity_value_does_not_change_whom_an_alert_is_about() -> None:
    # Group keys join their parts with "|", and the alert's entity is the first part: a "|" in
    # the value cut it there (an IP taken from a header, "203.0.113.9|x", became 203.0.113.9).
    stuffing = RuleSet([r for r in RULES if r.id == "credential-stuffing"], IntelIndex())
    (alert,) = run_operators(
        [DetectOperator(stuffing)], failed_logins("203.0.113.9|x", [f"user{i}" for i in range(10)])
    ).emitted(ALERTS_TOPIC)
    assert alert.payload.entity.id == "203.0.113.9|x"


def test_evidence_is_in_event_time_order_with_first_and_last_times() -> None:
    alerts = run_operators([DetectOperator(RuleSet(RULES))], small_sim()).emitted(ALERTS_TOPIC)
    for alert in alerts:
        p = alert.payload
        times = [e.occurred_at for e in p.evidence]
        assert times == sorted(times)
        assert p.first_evidence_at == times[0]
        assert p.last_evidence_at == times[-1] == alert.occurred_at


class _Ctx:
    """A context for one partition of the routed stage (the harness routes by event key only)."""

    def __init__(
        self,
        partition: int,
        states: dict[tuple[str, int], MemoryState],
        out: list[Any],
        state_type: type[MemoryState] = MemoryState,
    ) -> None:
        self._partition, self._states, self._out = partition, states, out
        self._state_type = state_type

    @property
    def partition(self) -> int:
        return self._partition

    def state(self, store: StoreSpec) -> State:
        return self._states.setdefault((store.id, self._partition), self._state_type())

    def emit(self, topic: str, event: Event, key: str | None = None) -> None:
        self._out.append((topic, key, event))

    def forward(self, topic: str, record: Record[Any], key: str) -> None:
        self._out.append((topic, key, record.event))

    def dead_letter(
        self, record: Record[Any], reason: str, headers: list[tuple[str, bytes | None]] | None = None
    ) -> None:
        raise AssertionError(reason)

    def late(self, record: Record[Any]) -> None:
        raise AssertionError(f"detection marks nothing late; got {record}")


class _StoredState(MemoryState):
    """State as a durable store serves it once its cache is gone (RocksState after a restart or
    past its cache limit): each get decodes what the last set wrote, so a change a rule made in
    place and did not write is lost."""

    def set(self, key: str, value: Any) -> None:
        self.data[key] = msgspec.msgpack.encode(value)

    def get(self, key: str, default: Any = None) -> Any:
        raw = self.data.get(key)
        return default if raw is None else msgspec.msgpack.decode(raw)

    def items(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        for key, raw in super().items(prefix):
            yield key, msgspec.msgpack.decode(raw)


def test_rules_keep_nothing_they_do_not_write() -> None:
    # Rules skip writes that change nothing (a login from a known device): what they skip must
    # be exactly what a store that only keeps writes would lose without consequence.
    events = small_sim()
    expected = run_operators([DetectOperator(RuleSet(RULES))], events).emitted(ALERTS_TOPIC)
    op = DetectOperator(RuleSet(RULES))
    states: dict[tuple[str, int], MemoryState] = {}
    out: list[Any] = []
    for i in range(0, len(events), 500):
        batch = [Record(e, "in", 0, i + n, None, 0) for n, e in enumerate(events[i : i + 500])]
        op.process(batch, _Ctx(0, states, out, _StoredState))
    assert len(expected) > 10
    assert alert_ids([e for t, _, e in out if t == ALERTS_TOPIC]) == alert_ids(expected)


class RoutedRun(NamedTuple):
    alerts: list[Alert]
    #: (key, event) of every routed record, in the order routed.
    routed: list[tuple[str, Event]]
    #: Stage 2's state: (store id, partition) -> its store.
    states: dict[tuple[str, int], MemoryState]
    ruleset: RuleSet


def routed_run(events: list[Event], partitions: int, *, local_stage: bool, dedup: bool = True) -> RoutedRun:
    """As on Kafka: stage 1 reads the input partitioned by each event's own key, runs the local
    rules and re-keys the rest; stage 2 runs those per partition of the routed topic, each
    partition delivered in event-time order (what the engine assumes; see its docstring)."""
    ruleset = RuleSet(RULES)
    assert ruleset.local
    assert ruleset.remote
    local: Operator[Event] = DetectOperator(ruleset, detectors="local", op_id="local", dedup=dedup)
    router: Operator[Event] = RouteOperator(ruleset, remote_only=local_stage)
    remote: Operator[Event] = DetectOperator(
        ruleset, routed=True, detectors="remote" if local_stage else "all"
    )
    states_1: dict[tuple[str, int], MemoryState] = {}
    states_2: dict[tuple[str, int], MemoryState] = {}
    out: list[Any] = []
    routed: list[Any] = []
    for i in range(0, len(events), 1000):
        by_input: dict[int, list[Event]] = defaultdict(list)
        for e in events[i : i + 1000]:
            by_input[partition_for(e.key(), partitions)].append(e)
        for part, part_events in sorted(by_input.items()):
            batch = [Record(e, "in", part, n, None, 0) for n, e in enumerate(part_events)]
            if local_stage:
                local.process(batch, _Ctx(part, states_1, out))
            router.process(batch, _Ctx(part, states_1, routed))
    assert {t for t, _, _ in routed} == {ROUTED_TOPIC}
    by_part: dict[int, list[Record[Event]]] = defaultdict(list)
    for n, (_, key, event) in enumerate(routed):
        part = partition_for(key, partitions)
        by_part[part].append(Record(event, ROUTED_TOPIC, part, n, key.encode(), 0))
    for part, records in sorted(by_part.items()):
        records.sort(key=lambda r: r.event.occurred_at)
        for i in range(0, len(records), 500):
            remote.process(records[i : i + 500], _Ctx(part, states_2, out))
    return RoutedRun(
        [e for t, _, e in out if t == ALERTS_TOPIC],
        [(key, event) for _, key, event in routed],
        states_2,
        ruleset,
    )


@pytest.mark.parametrize("local_stage", [False, True])
def test_routed_detection_on_many_partitions_equals_single_partition_detection(local_stage: bool) -> None:
    events = small_sim()
    single = run_operators([DetectOperator(RuleSet(RULES))], events).emitted(ALERTS_TOPIC)
    # Rules with state across entities (graphs, the look-alike index) are part of what is compared.
    assert {"poisoning-withdrawal", "wash-trading-linked"} <= {a.payload.rule_id for a in single}
    many = routed_run(events, partitions=4, local_stage=local_stage).alerts
    assert alert_ids(many) == alert_ids(single)


def test_stage_one_leaves_out_link_events_that_change_no_links() -> None:
    """Wash trading keeps every account's devices and IPs under one key, and most logins repeat
    them.  Stage 1 keeps what it routed and leaves out link events whose links it routed
    recently: the rule ends with the same links and alerts from far fewer records."""
    events = small_sim()
    key = "linked:wash-trading-linked"
    full = routed_run(events, partitions=4, local_stage=True, dedup=False)
    deduped = routed_run(events, partitions=4, local_stage=True, dedup=True)

    def to_rule(run: RoutedRun, kind: str) -> int:
        return sum(1 for k, e in run.routed if k == key and e.type == kind)

    assert to_rule(deduped, "login") < to_rule(full, "login") / 2
    assert to_rule(deduped, "trade") == to_rule(full, "trade") > 0
    assert alert_ids(deduped.alerts) == alert_ids(full.alerts)
    assert "wash-trading-linked" in {a.payload.rule_id for a in deduped.alerts}

    def links(run: RoutedRun) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for (store, _), state in run.states.items():
            if store == "detect.wash-trading-linked.v1":
                out.update({k: v for k, v in state.items("p:")})
        return out

    assert links(full)
    assert links(deduped) == links(full)
    # Stage 1 did mark events, and the marks were for one batch: the router cleared them.
    assert deduped.ruleset.dedup
    assert not any(d.redundant for d in deduped.ruleset.dedup)


@pytest.mark.parametrize("seed", range(4))
def test_stage_one_keeps_the_links_in_the_rules_own_order(seed: int) -> None:
    """More devices and IPs than an account's links hold, reused at random: the rule moves a
    reused old link to the newest end, and evicts the oldest.  Stage 1 must keep its list in
    the same order, or a login it leaves out is one whose link the rule would have moved, and
    the rule then evicts another link than it would on every record."""
    rng = random.Random(seed)
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    events: list[Event] = [
        Login(
            event_id=f"l{seed}-{n}",
            source="t",
            occurred_at=t0 + timedelta(minutes=n),
            entities=Entities(
                customer="c1", account="a1", device=f"d{rng.randrange(12)}", ip=f"10.0.0.{rng.randrange(24)}"
            ),
            payload=LoginPayload(),
        )
        for n in range(400)
    ]
    full = routed_run(events, partitions=2, local_stage=True, dedup=False)
    deduped = routed_run(events, partitions=2, local_stage=True, dedup=True)

    def links(run: RoutedRun) -> Any:
        return [
            s.get("p:a1") for (store, _), s in run.states.items() if store == "detect.wash-trading-linked.v1"
        ]

    assert any(links(full))
    assert links(deduped) == links(full)
    # Left out: logins whose links the rule had at the newest end.
    assert len(deduped.routed) < len(full.routed)


LINKED = "linked:wash-trading-linked"


def _login(n: int, device: str, at: timedelta, event_id: str | None = None, account: str = "a1") -> Login:
    return Login(
        event_id=event_id or f"login-{n}",
        source="test",
        occurred_at=T0 + at,
        entities=Entities(customer=f"c{account[1:]}", account=account, device=device),
    )


def _routed_to_linked(
    ruleset: RuleSet, batch: list[Event], states: dict[tuple[str, int], MemoryState]
) -> list[str]:
    """Stage 1 over one batch (local rules with the dedup, then the router): the event ids
    routed to the wash-trading rule."""
    local = DetectOperator(ruleset, detectors="local", op_id="local", dedup=True)
    router = RouteOperator(ruleset, remote_only=True)
    records = [Record(e, "in", 0, n, None, 0) for n, e in enumerate(batch)]
    out: list[Any] = []
    local.process(records, _Ctx(0, states, out))
    router.process(records, _Ctx(0, states, out))
    return [e.event_id for _, key, e in out if key == LINKED]


def test_a_duplicate_of_a_new_link_does_not_hide_it() -> None:
    # The same event twice in one batch (an at-least-once source): the first adds the link, the
    # second repeats it.  The first must still reach the rule.
    ruleset = RuleSet(RULES)
    first = _login(1, "dev-new", timedelta(0))
    again = msgspec.structs.replace(first)
    assert again is not first
    assert again.event_id == first.event_id
    assert _routed_to_linked(ruleset, [first, again], {}) == [first.event_id]


def test_stage_one_routes_a_link_again_when_old_or_a_day_on() -> None:
    ruleset = RuleSet(RULES)
    states: dict[tuple[str, int], MemoryState] = {}
    # Twelve devices: the first four are the older half of the sixteen links a party keeps.
    devices = [f"dev-{i}" for i in range(12)]
    batch: list[Event] = [_login(i, d, timedelta(minutes=i)) for i, d in enumerate(devices)]
    assert len(_routed_to_linked(ruleset, batch, states)) == 12  # each one new
    recent = _login(20, "dev-11", timedelta(minutes=20))
    old = _login(21, "dev-0", timedelta(minutes=21))
    # A repeat of a recent link is left out; one of the older half goes again (the routed stage,
    # applying events in another order, may have dropped it to make room).
    assert _routed_to_linked(ruleset, [recent, old], states) == [old.event_id]
    # A day on, a recent link goes again too: whatever the routed stage lost comes back.
    later = _login(22, "dev-11", timedelta(days=1, minutes=21))
    assert _routed_to_linked(ruleset, [later], states) == [later.event_id]


def test_stage_one_routes_a_link_event_older_than_those_it_routed() -> None:
    ruleset = RuleSet(RULES)
    states: dict[tuple[str, int], MemoryState] = {}
    first = _login(1, "dev-x", timedelta(minutes=30))
    assert _routed_to_linked(ruleset, [first], states) == [first.event_id]
    # A login from before it, arriving late: the rule moves the link's first-seen time back.
    late = _login(2, "dev-x", timedelta(minutes=1))
    assert _routed_to_linked(ruleset, [late], states) == [late.event_id]
    # One between the two changes nothing: left out.
    between = _login(3, "dev-x", timedelta(minutes=10))
    assert _routed_to_linked(ruleset, [between], states) == []


@pytest.mark.parametrize("dedup", [False, True])
def test_a_late_link_event_counts_the_trades_held_since_it(dedup: bool) -> None:
    """Both accounts use one device; a1's first login to arrive is from after the trades, and
    its login from before them arrives last (its topic's fetch came back late).  In event-time
    order the trades are between linked accounts: the rule counts them once that login
    arrives, and stage 1 must not leave it out as a link it has already routed."""

    def trade(n: int, minutes: int) -> Trade:
        return Trade(
            event_id=f"trade-{n}",
            source="test",
            occurred_at=T0 + timedelta(minutes=minutes),
            entities=Entities(account="a1"),
            payload=TradePayload(
                trade_id=f"t{n}",
                symbol="SOL-USD",
                price=150,
                quantity=33,
                taker_side="buy",
                maker_account="a2",
                taker_account="a1",
            ),
        )

    arrivals: list[Event] = [
        _login(1, "dev-x", timedelta(0), account="a2"),
        _login(2, "dev-x", timedelta(minutes=30)),
        *(trade(n, 5 * n) for n in (1, 2, 3)),
        _login(3, "dev-x", timedelta(minutes=1)),
    ]
    ruleset = RuleSet(RULES)
    local = DetectOperator(ruleset, detectors="local", op_id="local", dedup=dedup)
    router = RouteOperator(ruleset, remote_only=True)
    remote = DetectOperator(ruleset, routed=True, detectors="remote")
    states_1: dict[tuple[str, int], MemoryState] = {}
    states_2: dict[tuple[str, int], MemoryState] = {}
    out: list[Any] = []
    for n, event in enumerate(arrivals):  # one batch each, in arrival order, through both stages
        routed: list[Any] = []
        batch = [Record(event, "in", 0, n, None, 0)]
        local.process(batch, _Ctx(0, states_1, out))
        router.process(batch, _Ctx(0, states_1, routed))
        records = [Record(e, ROUTED_TOPIC, 0, n, key.encode(), 0) for _, key, e in routed if key == LINKED]
        remote.process(records, _Ctx(0, states_2, out))
    alerts = [e for t, _, e in out if t == ALERTS_TOPIC and e.payload.rule_id == "wash-trading-linked"]
    assert len(alerts) == 1
    assert {ev.event_id for ev in alerts[0].payload.evidence} >= {"trade-1", "trade-2", "trade-3"}


def test_explanation_treats_attacker_strings_as_data() -> None:
    evil = 'x"}\n<script>alert(1)</script>{entity.__class__}'
    events: list[Event] = [
        FailedLogin(
            event_id=f"f{i}",
            source="t",
            occurred_at=T0 + timedelta(seconds=i),
            entities=Entities(ip="203.0.113.1"),
            payload=FailedLoginPayload(username=f"{evil}{i}"),
        )
        for i in range(10)
    ]
    alerts = run_operators([DetectOperator(RuleSet(RULES))], events).emitted(ALERTS_TOPIC)
    assert [a.payload.rule_id for a in alerts] == ["credential-stuffing"]
    text = alerts[0].payload.explanation
    assert "\n" not in text
    assert '"203.0.113.1"' in text
    fields = alerts[0].payload.evidence[-1].fields
    assert fields["username"] == f"{evil}9"  # evidence keeps the value verbatim, as data


def indicator(value: str, version: str, revoked: bool = False) -> IntelIndicator:
    return IntelIndicator(
        event_id=f"i-{version}",
        source="ofac",
        occurred_at=T0,
        payload=IntelIndicatorPayload(
            indicator_type="eth_address",
            value=value,
            category="sanctioned",
            feed="ofac",
            list_version=version,
            revoked=revoked,
        ),
    )


def withdrawal(n: int, dest: str) -> WithdrawalRequest:
    return WithdrawalRequest(
        event_id=f"w{n}",
        source="t",
        occurred_at=T0 + timedelta(hours=n),
        entities=Entities(customer="c1"),
        payload=WithdrawalRequestPayload(withdrawal_id=f"w{n}", asset="ETH", amount=1, to_address=dest),
    )


def stream(items: Sequence[Event]) -> Iterator[Event]:
    yield from items


def test_intel_hot_reload_records_the_list_version_matched() -> None:
    addr = "0x" + "ab" * 20
    rules = [r for r in RULES if r.id == "sanctioned-counterparty"]
    index = IntelIndex()
    events: list[Event] = [
        withdrawal(1, addr),  # not listed yet
        indicator(addr, "2026-05-01"),
        withdrawal(2, addr),
        indicator(addr, "2026-05-02"),
        withdrawal(3, addr),
        indicator(addr, "2026-05-03", revoked=True),
        withdrawal(4, addr),
    ]
    alerts = run_operators([DetectOperator(RuleSet(rules, index))], stream(events), batch_size=1).emitted(
        ALERTS_TOPIC
    )
    assert [(a.payload.evidence[0].event_id, a.payload.intel_version) for a in alerts] == [
        ("w2", "ofac@2026-05-01"),
        ("w3", "ofac@2026-05-02"),
    ]
    assert index.version == "ofac@2026-05-03"


def test_composite_groups_route_under_their_first_part_once_for_all_rules() -> None:
    # rapid-in-out groups by (customer, asset), ato-sequence by customer: one record serves both.
    ruleset = RuleSet(RULES)
    event = withdrawal(1, "0x" + "cd" * 20)
    composite = [d for d in ruleset.by_type["withdrawal_request"] if len(d.group_paths) > 1]
    assert composite, "the shipped rules group some withdrawal rule by (customer, asset)"
    assert all(d.routes(event) == ["customer:c1"] for d in composite)
    keys = ruleset.routes_for(event, remote_only=False)
    assert "customer:c1" in keys
    assert not [k for k in keys if "|" in k]
    assert len(keys) == len(set(keys))


def test_events_no_rule_wants_are_not_routed() -> None:
    # The wash-trading rule keeps one graph under one key: only trades between linked accounts
    # (and logins naming an account) reach it, not every trade.
    ruleset = RuleSet(RULES)
    events = small_sim()
    trades = [e for e in events if e.type == "trade"]
    linked = [e for e in trades if "linked:wash-trading-linked" in ruleset.routes_for(e, remote_only=False)]
    assert trades
    assert len(linked) < len(trades)
    total = sum(len(ruleset.routes_for(e, remote_only=False)) for e in events)
    unfiltered = sum(len({k for d in ruleset.by_type.get(e.type, ()) for k in d.routes(e)}) for e in events)
    assert total < unfiltered


def test_wants_is_false_only_when_process_would_do_nothing() -> None:
    """``Detector.wants`` lets the route stage drop events; it must never drop one that matters:
    replay a simulated stream and check that, whenever a detector does not want an event,
    processing it changes no state and fires nothing."""
    import msgspec

    encode = msgspec.msgpack.Encoder().encode
    ruleset = RuleSet(RULES)
    states = {d.store_id: MemoryState() for d in ruleset.detectors}
    skipped = 0
    for event in small_sim():
        for det in ruleset.by_type.get(event.type, ()):
            state = states[det.store_id]
            hits: list[Any] = []
            if det.wants(event):
                det.process(event, state, hits)
                continue
            before = encode(state.data)
            det.process(event, state, hits)
            assert not hits, (det.rule.id, event)
            assert encode(state.data) == before, (det.rule.id, event)
            skipped += 1
    assert skipped > 1000  # the property was exercised


def test_a_key_prefix_decides_only_when_no_other_router_could_share_it() -> None:
    assert _prefix_decides(0, ["customer:", "ip:"])
    assert not _prefix_decides(0, ["customer:", "customer:"])  # two ways of routing by customer
    assert not _prefix_decides(0, ["customer:", ""])  # "": any key at all
    assert not _prefix_decides(1, ["customer:", ""])
    assert not _prefix_decides(0, ["lookalike:a", "lookalike:ab"])  # one prefix of the other


def test_the_routed_stage_tells_a_records_routers_by_prefix_as_by_their_keys() -> None:
    # For every record the route stage writes, the cheap test (prefix, when it decides) picks
    # exactly the routers that computing every router's keys picks.
    ruleset = RuleSet(RULES)
    dispatch = _dispatch(ruleset.detectors)
    checked = decided = 0
    for event in small_sim():
        entry = dispatch.get(type(event))
        if entry is None:
            continue
        for key in ruleset.routes_for(event, remote_only=False):
            full = [key.startswith(prefix) and key in router(event) for router, prefix, _ in entry[1]]
            fast = [
                key.startswith(prefix) and (decides or key in router(event))
                for router, prefix, decides in entry[1]
            ]
            assert fast == full, (event.type, key)
            checked += 1
            decided += sum(decides and hit for (_, _, decides), hit in zip(entry[1], fast, strict=True))
    assert checked > 1000
    assert decided > checked // 2  # the shortcut is taken for most records


def test_look_alike_rules_route_by_each_addresss_head_and_tail() -> None:
    # The look-alike index is global, but what it keeps about an address is keyed by the
    # address's head and tail: its events spread over partitions instead of sharing one.
    ruleset = RuleSet(RULES)
    lookalike = [d for d in ruleset.detectors if d.kind == "lookalike"]
    assert len(lookalike) >= 2
    real, other = "0x" + "1234" + "ab" * 16 + "5678", "0x" + "9999" + "cd" * 16 + "0000"
    fake = "0x" + "1234" + "ef" * 16 + "5678"
    first = transfer(1, real, other, T0, 500.0)
    keys = ruleset.routes_for(first, remote_only=True)
    looks = [k for k in keys if k.startswith("lookalike:")]
    # Both addresses become known, each under its own (head, tail); one record serves every rule.
    assert sorted(looks) == ["lookalike:4:1234-5678", "lookalike:4:9999-0000"]
    # Processing a record touches only the addresses of its key: the dust from the imitation,
    # delivered under its key, finds the reference learnt under the same key.
    det = next(d for d in lookalike if d.rule.id == "poisoning-dust")
    state = MemoryState()
    for key in looks:
        det.process(first, state, [], key)
    since = T0.timestamp()  # references remember since when they are known
    assert state.get("k:1234|5678") == [[real, since, since]]  # known since, last seen
    assert state.get("k:9999|0000") == [[other, since, since]]
    only_real = MemoryState()
    det.process(first, only_real, [], "lookalike:4:1234-5678")
    assert only_real.get("k:1234|5678") == [[real, since, since]]
    assert only_real.get("k:9999|0000") is None
    hits: list[Any] = []
    dust = transfer(2, fake, other, T0 + timedelta(minutes=2), 0.0)
    (dust_key,) = [k for k in ruleset.routes_for(dust, remote_only=True) if k.startswith("lookalike:")]
    assert dust_key == "lookalike:4:1234-5678"
    det.process(dust, state, hits, dust_key)
    assert [h.context["imitates"] for h in hits] == [real]
    # An address with no head and tail to imitate (too short) is routed nowhere for these rules.
    assert not [
        k
        for k in ruleset.routes_for(transfer(3, "0x12", "0x34", T0, 500.0), remote_only=True)
        if k.startswith("lookalike:")
    ]


def test_look_alike_state_spreads_over_partitions() -> None:
    ruleset = RuleSet(RULES)
    keys = {
        k for e in small_sim() for k in ruleset.routes_for(e, remote_only=True) if k.startswith("lookalike:")
    }
    assert len(keys) > 100
    assert len({partition_for(k, 8) for k in keys}) == 8


def test_a_rule_kind_written_in_plain_python_runs_beside_the_shipped_ones() -> None:
    # The kinds' base class may be compiled; a kind of one's own still subclasses it.
    from vigil.detect.kinds.base import Detector, Env, Hit, entity_ref

    class EveryWithdrawal(Detector):
        kind = "every-withdrawal"

        @property
        def types(self) -> frozenset[str]:
            return frozenset({"withdrawal_request"})

        def routes(self, event: Event) -> list[str]:
            return [f"customer:{event.entities.customer}"]

        def process(self, event: Event, state: State, hits: list[Hit], route: str | None = None) -> None:
            hits.append(Hit(entity=entity_ref(f"customer:{event.entities.customer}"), evidence=[]))

    rule = next(r for r in RULES if r.id == "sanctioned-counterparty")
    det = EveryWithdrawal(rule, Env(IntelIndex()))
    hits: list[Hit] = []
    det.process(withdrawal(1, "0x" + "ab" * 20), MemoryState(), hits)
    assert [h.entity.id for h in hits] == ["c1"]
    assert det.routes(withdrawal(2, "0x" + "ab" * 20)) == ["customer:c1"]


def test_a_sweep_walks_one_slice_of_one_store_per_batch_and_reaches_every_store_that_expires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # All at once, a sweep held a batch back for tens of milliseconds (every store), then up to
    # 33 ms (the largest store): now a batch carries one slice of one store's walk at most, and
    # the sweep still reaches every store that expires anything.
    monkeypatch.setattr("vigil.detect.engine.SWEEP_EVERY", 100)
    monkeypatch.setattr("vigil.detect.engine.SWEEP_SLICE", 20)
    walked: list[tuple[int, str, int]] = []  # (batch, store, keys the step returned)
    batch_no = [0]  # the batch being processed

    class Recording(MemoryState):
        store = ""

        def items(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
            raise AssertionError(f"store {self.store}: listed whole (a sweep walks it a slice at a time)")

        def walk(self, prefix: str, after: str | None, limit: int) -> list[tuple[str, Any]]:
            got = super().walk(prefix, after, limit)
            walked.append((batch_no[0], self.store, len(got)))
            return got

    class RecordingCtx(_Ctx):
        def state(self, store: StoreSpec) -> State:
            found = self._states.get((store.id, 0))
            if found is None:
                found = self._states[(store.id, 0)] = Recording()
                found.store = store.id  # type: ignore[attr-defined]
            return found

    states: dict[tuple[str, int], MemoryState] = {}
    op = DetectOperator(RuleSet(RULES))
    events = small_sim()
    for number, start in enumerate(range(0, len(events), 100)):
        batch_no[0] = number
        batch = [Record(e, "in", 0, n, None, 0) for n, e in enumerate(events[start : start + 100], start)]
        op.process(batch, RecordingCtx(0, states, []))
    steps_by_batch: dict[int, int] = defaultdict(int)
    for number, _, _ in walked:
        steps_by_batch[number] += 1
    assert walked
    assert set(steps_by_batch.values()) == {1}
    assert max(n for _, _, n in walked) == 20  # a store larger than a slice, walked in several
    assert {store for _, store, _ in walked} == {
        det.store_id for det in op.ruleset.detectors if det.expiries()
    }
    assert op.swept > 0


def test_a_store_is_swept_a_slice_per_batch_to_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    # 23 expired windows and 7 live ones, 4 keys a slice: the walk takes 8 batches; the expired
    # go, the live stay, and before the last slice some expired are still there.
    monkeypatch.setattr("vigil.detect.engine.SWEEP_EVERY", 1)
    monkeypatch.setattr("vigil.detect.engine.SWEEP_SLICE", 4)
    rule = next(r for r in RULES if r.kind == "threshold")
    op = DetectOperator(RuleSet([rule]))
    det = op.ruleset.detectors[0]
    event = small_sim()[0]
    now = event.occurred_at.timestamp()
    states: dict[tuple[str, int], MemoryState] = {}
    state = _Ctx(0, states, []).state(det.store)
    for i in range(30):
        live = i % 4 == 1 and i < 28
        when = now if live else now - 400 * 86_400.0
        state.set(f"w:{i:02d}", {"quiet": when, "items": [[when, 1, None, []]]})
    expired = {f"w:{i:02d}" for i in range(30) if not (i % 4 == 1 and i < 28)}
    assert len(expired) == 23
    sizes: list[int] = []

    def swept_once() -> None:
        before = set(state.data)  # type: ignore[attr-defined]
        op._maybe_sweep([Record(event, "in", 0, 0, None, 0)], _Ctx(0, states, []), {})
        sizes.append(len(before - set(state.data)))  # type: ignore[attr-defined]

    for _ in range(7):
        swept_once()
    assert expired & set(state.data)  # type: ignore[attr-defined]
    swept_once()
    assert set(state.data) == {f"w:{i:02d}" for i in range(30)} - expired  # type: ignore[attr-defined]
    assert max(sizes) <= 4
    assert op.swept == 23


def test_an_event_dated_a_year_ahead_does_not_make_live_state_look_expired(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Live traffic: windows written just now, then a batch holding one event whose clock (or
    # forged time) is a year ahead.  The sweep judges at most SWEEP_AHEAD_S past the wall clock:
    # the live windows stay, those stale by that measure go.
    monkeypatch.setattr("vigil.detect.engine.SWEEP_EVERY", 1)
    rule = next(r for r in RULES if r.kind == "threshold" and r.params.timespan >= timedelta(hours=1))
    op = DetectOperator(RuleSet([rule]))
    det = op.ruleset.detectors[0]
    wall = datetime.now(UTC)
    ahead = msgspec.structs.replace(small_sim()[0], occurred_at=wall + timedelta(days=365))
    states: dict[tuple[str, int], MemoryState] = {}
    state = _Ctx(0, states, []).state(det.store)
    for i, age in enumerate((0.0, 60.0, 400 * 86_400.0)):
        when = wall.timestamp() - age
        state.set(f"w:{i}", {"quiet": when, "items": [[when, 1, None, []]]})
    op._maybe_sweep([Record(ahead, "in", 0, 0, None, 0)], _Ctx(0, states, []), {})
    assert set(state.data) == {"w:0", "w:1"}  # type: ignore[attr-defined]
    assert op.swept == 1


def test_a_sweep_leaves_a_window_still_filling_when_another_keys_event_is_newer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Four denied MFA prompts, then a batch holding another customer's event five minutes newer
    # (swept at that time, the window looked expired and went), then the fifth denial: it alerts.
    monkeypatch.setattr("vigil.detect.engine.SWEEP_EVERY", 1)
    fatigue = RuleSet([r for r in RULES if r.id == "mfa-fatigue"], IntelIndex())
    wall = datetime.now(UTC).replace(microsecond=0)

    def denied(i: int, at: datetime) -> MfaChallenge:
        return MfaChallenge(
            event_id=f"m{i}",
            source="b",
            occurred_at=at,
            entities=Entities(customer="c1"),
            payload=MfaChallengePayload(result="denied", method="push"),
        )

    other = Login(
        event_id="x", source="b", occurred_at=wall + timedelta(minutes=5), entities=Entities(customer="c2")
    )
    events = [*(denied(i, wall - timedelta(minutes=9 - i)) for i in range(4)), other, denied(9, wall)]
    op = DetectOperator(fatigue)
    result = run_operators([op], events, batch_size=1)
    assert [a.payload.evidence[-1].event_id for a in result.emitted(ALERTS_TOPIC)] == ["m9"]
    assert op.swept == 0


EXPIRING_KINDS = {"deviation", "exposure", "linked", "lookalike", "propagation", "sequence", "threshold"}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_kinds_that_keep_state_for_a_limited_time_declare_what_expires(kind: str) -> None:
    detectors = [d for d in RuleSet(RULES).detectors if d.kind == kind]
    if not detectors:
        pytest.skip(f"no shipped rule of kind {kind}")
    assert any(d.expiries() for d in detectors) == (kind in EXPIRING_KINDS)


def test_deviation_lets_inflows_go_once_outside_its_window_and_keeps_its_profile() -> None:
    # The money-mule rule keeps each group's recent deposits (i:) for its 3-hour window; they
    # were pruned only when the group had a new one, so a group never seen again kept them.
    ruleset = RuleSet(RULES)
    mule = next(d for d in ruleset.detectors if d.kind == "deviation" and d.rule.id == "rapid-in-out")
    (expiry,) = mule.expiries()
    assert expiry.prefix == "i:"
    now = 1_000_000.0
    window = 3 * 3600.0

    def flows(*ages: float) -> list[list[object]]:
        return [[now - age, 1000.0, "0xsource", None] for age in ages]

    assert expiry.stale(flows(window + 3601, window + 7200), now)
    assert not expiry.stale(flows(window + 3601, 60), now)  # one still inside
    assert not expiry.stale(flows(window + 3599), now)  # an event an hour late still counts it
    # A deviation rule without inflows has nothing that expires: its state is the profile.
    plain = next(d for d in ruleset.detectors if d.kind == "deviation" and not d.expiries())
    assert plain.rule.id != mule.rule.id


class _Sweeper:
    """A detector's store in memory, and the sweeps of its expired state."""

    def __init__(self, op: DetectOperator, store: StoreSpec) -> None:
        self.op = op
        self.states: dict[tuple[str, int], MemoryState] = {}
        self.state = _Ctx(0, self.states, []).state(store)

    def __call__(self, newest: Event, rounds: int = 20) -> None:
        """Sweep as batches whose newest event is ``newest`` would, ``rounds`` times (a sweep
        walks a slice of one prefix per batch)."""
        for _ in range(rounds):
            self.op._maybe_sweep([Record(newest, "in", 0, 0, None, 0)], _Ctx(0, self.states, []), {})


def _swept(monkeypatch: pytest.MonkeyPatch, rule: Any) -> tuple[Any, _Sweeper]:
    """The rule's detector, and its store swept at every batch."""
    monkeypatch.setattr("vigil.detect.engine.SWEEP_EVERY", 1)
    op = DetectOperator(RuleSet([rule]))
    det = op.ruleset.detectors[0]
    return det, _Sweeper(op, det.store)


def test_the_exposure_graph_lets_go_of_addresses_gone_quiet_and_keeps_hubs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every sender's count and every receiver's senders were kept forever: with the whole chain
    # flowing in, a store of every address ever seen.  Now they go 180 days after an address's
    # last transfer, but for a hub's count (or its next 100 transfers would pass taint on again)
    # and what earlier versions kept without a time (until a transfer renews it).
    det, sweep = _swept(monkeypatch, next(r for r in RULES if r.kind == "exposure"))
    state = sweep.state
    hub, quiet, busy = "0x" + "1" * 40, "0x" + "2" * 40, "0x" + "3" * 40
    for n in range(100):
        det.process(transfer(n, hub, f"0x{n:040x}", T0), state, [])
    det.process(transfer(100, quiet, busy, T0), state, [])
    later = T0 + timedelta(days=181)
    det.process(transfer(101, busy, quiet, later), state, [])
    # As kept before: bare counts and bare sender addresses, with no time.
    state.set("o:0xold", 5)
    state.set("o:0xoldhub", 150)
    state.set("e:0xold", ["0xold-sender"])
    # Swept an hour behind the newest event, 181 days after the first transfers.
    now = transfer(102, busy, hub, later + timedelta(hours=2))
    sweep(now)
    kept = {k for k in state.data if k[:2] in ("o:", "e:")}  # type: ignore[attr-defined]
    assert kept == {f"o:{hub}", f"o:{busy}", f"e:{quiet}", "o:0xoldhub", "o:0xold", "e:0xold"}
    assert state.get(f"o:{hub}")[0] == 100
    assert state.get(f"e:{quiet}") == [[busy, later.timestamp()]]


def test_look_alike_references_and_flags_go_once_unused_for_half_a_year(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every address sending a transfer became a reference and every dust sender was flagged,
    # for ever: with the whole chain flowing in, a store of every address seen.  Now what goes
    # unused for 180 days goes; a sighting renews it; entries of earlier versions (no time) stay.
    det, sweep = _swept(monkeypatch, next(r for r in RULES if r.id == "poisoning-dust"))
    state = sweep.state
    used, unused = "0x1234" + "a" * 32 + "5678", "0x4321" + "a" * 32 + "8765"
    imitation, lone = "0x1234" + "b" * 32 + "5678", "0x9999" + "c" * 32 + "0000"
    victim = "0x" + "e" * 40
    hits: list[Any] = []
    det.process(transfer(1, used, unused, T0), state, hits)  # both become references
    det.process(transfer(2, imitation, victim, T0 + timedelta(minutes=5), usd=0.01), state, hits)
    det.process(transfer(3, lone, victim, T0 + timedelta(minutes=6), usd=0.01), state, hits)
    assert [h.context["imitates"] for h in hits] == [used]
    assert {f"f:{imitation}", f"f:{lone}", "r:9999|0000"} <= set(state.data)  # type: ignore[attr-defined]
    state.set("f:0xold", used)  # kept by an earlier version: no time
    state.set("k:old0|0old", [["0xold", 0.0]])
    state.set("r:old0|0old", ["0xold"])
    bare = "0xabcd" + "f" * 32 + "ef01"
    state.set("k:abcd|ef01", [bare])  # kept by a still earlier one: a bare address
    day100 = T0 + timedelta(days=100)
    det.process(transfer(4, used, victim, day100), state, [])  # seen again
    det.process(transfer(6, lone, victim, day100, usd=0.01), state, [])  # dusting again
    det.process(transfer(7, bare, victim, day100), state, [])  # renewed, with a time now
    now = transfer(5, victim, used, T0 + timedelta(days=181, hours=2))
    sweep(now)
    assert {k for k in state.data if k[:2] in ("k:", "f:", "r:")} == {  # type: ignore[attr-defined]
        "k:1234|5678",  # renewed at day 100 (the imitation's flag was not)
        "k:eeee|eeee",  # the victim: known from the transfers at day 100
        f"f:{lone}",  # still dusting at day 100: its flag and its wait for an original renewed
        "r:9999|0000",
        "k:abcd|ef01",
        "f:0xold",
        "k:old0|0old",
        "r:old0|0old",
    }
    assert state.get("k:abcd|ef01") == [[bare, 0.0, day100.timestamp()]]


def test_a_vendor_export_reaches_each_customer_it_names_in_a_record_of_its_own_size() -> None:
    # Each customer's copy of an export named every customer: N copies of N ids (an export of
    # 16,000 customers routed 3.8 GB, and stage 2 built all N keys for each copy).
    at = datetime(2026, 3, 1, tzinfo=UTC)
    ids = [f"c{n}" for n in range(2000)]
    export = CrmRecordExport(
        event_id="x1",
        source="hubspot",
        occurred_at=at,
        entities=Entities(vendor="hubspot", ip="45.77.1.2", api_key="tok"),
        payload=CrmRecordExportPayload(
            platform="hubspot", record_count=len(ids), export_id="x1", customer_ids=ids
        ),
    )
    logins = [
        Login(
            event_id=f"l{n}-{c}",
            source="backend",
            occurred_at=at + timedelta(hours=n) + (timedelta(days=1) if n == 3 else timedelta()),
            entities=Entities(customer=c),
            payload=LoginPayload(mfa_used=False, geo=Geo(country="RU" if n == 3 else "PT")),
        )
        for c in ("c7", "c1999")
        for n in range(4)
    ]
    run = routed_run([export, *logins], partitions=4, local_stage=True)
    copies = [e for k, e in run.routed if isinstance(e, CrmRecordExport) and k.startswith("customer:")]
    assert sorted(e.payload.customer_ids[0] for e in copies) == sorted(ids)
    assert {len(e.payload.customer_ids) for e in copies} == {1}
    assert sum(len(msgspec.json.encode(e)) for e in copies) < 2000 * 1000
    # What the rule makes of them is what it makes of the whole export.
    single = run_operators([DetectOperator(RuleSet(RULES))], [export, *logins]).emitted(ALERTS_TOPIC)
    assert {a.payload.entity.id for a in single if a.payload.rule_id == "vendor-export-propagation"} == {
        "c7",
        "c1999",
    }
    assert alert_ids(run.alerts) == alert_ids(single)


def test_a_min_seen_given_to_a_rule_counts_the_values_its_state_saw_before() -> None:
    # ato-sequence gained min_seen: 1 over state kept without sighting times: every existing
    # customer looked new until a login after the change, and the first could be the attacker's.
    checked = validate_paths([ROOT / "rules" / "identity.yaml"])
    case = next(c for c in checked.cases if c.name.startswith("full takeover chain"))
    (now,) = [r for r in checked.rules if r.id == "ato-sequence"]
    first = dataclasses.replace(now.params.steps[0], min_seen=0)
    before = dataclasses.replace(
        now, params=dataclasses.replace(now.params, steps=(first, *now.params.steps[1:]))
    )
    states: dict[tuple[str, int], MemoryState] = {}
    out: list[Any] = []
    home, *attack = case.events
    DetectOperator(RuleSet([before])).process([Record(home, "in", 0, 0, None, 0)], _Ctx(0, states, out))
    records = [Record(e, "in", 0, n, None, 0) for n, e in enumerate(attack, 1)]
    DetectOperator(RuleSet([now])).process(records, _Ctx(0, states, out))
    assert [e.payload.rule_id for t, _, e in out if t == ALERTS_TOPIC] == ["ato-sequence"]


def test_a_mark_judged_on_its_targets_is_routed_whole(tmp_path: Path) -> None:
    # A mark rule on the list it marks ("an export that includes the honeytoken customer") was
    # judged again by the routed stage on a copy naming one customer: only that one was marked.
    (tmp_path / "r.yaml").write_text(
        """\
rules:
  - id: honeytoken-export
    version: 1
    type: propagation
    typology: supply_chain_compromise
    severity: high
    score: 80
    explanation: "{entity} after an export through {marked_by}"
    mark:
      type: crm_record_export
      where: {payload.customer_ids: {contains: c-honey}}
      targets: payload.customer_ids
      for: 1d
    trigger: {type: login, group_by: customer}
"""
    )
    rules = load_rules([tmp_path])
    at = datetime(2026, 3, 1, tzinfo=UTC)
    export = CrmRecordExport(
        event_id="x1",
        source="hubspot",
        occurred_at=at,
        entities=Entities(vendor="hubspot"),
        payload=CrmRecordExportPayload(
            platform="hubspot", record_count=3, export_id="x1", customer_ids=["c1", "c2", "c-honey"]
        ),
    )
    logins = [
        Login(
            event_id=f"l-{c}",
            source="backend",
            occurred_at=at + timedelta(hours=1),
            entities=Entities(customer=c),
        )
        for c in ("c1", "c2", "c-honey")
    ]
    single = run_operators([DetectOperator(RuleSet(rules))], [export, *logins]).emitted(ALERTS_TOPIC)
    assert sorted(a.payload.entity.id for a in single) == ["c-honey", "c1", "c2"]
    through = {a.payload.explanation.split(" after ")[1] for a in single}
    assert through == {'an export through "vendor hubspot"'}
    # An export naming none of the mark's sources: unknown, not a vendor called "unknown".
    unnamed = msgspec.structs.replace(export, entities=Entities())
    alerts = run_operators([DetectOperator(RuleSet(rules))], [unnamed, *logins]).emitted(ALERTS_TOPIC)
    assert {a.payload.explanation.split(" after ")[1] for a in alerts} == {"an export through (unknown)"}
    ruleset = RuleSet(rules)
    routed: list[Any] = []
    RouteOperator(ruleset).process(
        [Record(e, "in", 0, n, None, 0) for n, e in enumerate([export, *logins])], _Ctx(0, {}, routed)
    )
    out: list[Any] = []
    records = [Record(e, ROUTED_TOPIC, 0, n, k.encode(), 0) for n, (_, k, e) in enumerate(routed)]
    DetectOperator(ruleset, routed=True).process(records, _Ctx(0, {}, out))
    assert alert_ids([e for t, _, e in out if t == ALERTS_TOPIC]) == alert_ids(single)


def test_an_event_too_large_to_route_is_dead_lettered_and_the_stage_goes_on() -> None:
    # A valid event near the record limit fits its input topic, keyed by its customer, but not
    # the routed topic under a longer key ("customer:" before the id): refused, it stopped the
    # route stage at that event, and at every restart.
    ruleset = RuleSet(RULES)
    small = _login(1, "d1", timedelta(0))
    keys = list(ruleset.routes_for(small, remote_only=False))
    assert keys
    padding = 999_995 - len(encode(small)) - len(small.key())
    big = msgspec.structs.replace(small, event_id="E" * padding + "-big")
    assert len(encode(big)) + len(big.key()) <= 1_000_000 < len(encode(big)) + max(map(len, keys))
    after = _login(3, "d1", timedelta(seconds=2), event_id="login-3")
    router = RouteOperator(ruleset)
    result = run_operators([router], [small, big, after])
    # Under every key it fits, and dead-lettered once, naming the others.
    fits = [k for k in keys if len(encode(big)) + len(k) <= 1_000_000]
    routed = [(e.event.event_id, e.key) for e in result.emits if e.topic == ROUTED_TOPIC]
    expected = [(small.event_id, k) for k in keys] + [(big.event_id, k) for k in fits]
    assert routed == expected + [(after.event_id, k) for k in keys]
    ((record, reason),) = result.dead_letters
    assert record.event.event_id == big.event_id
    too_long = ", ".join(repr(k) for k in keys if k not in fits)
    assert reason.startswith(f"detect.route.v1: cannot route the event under {too_long}: a record of ")
    assert router.refused == 1
