"""Detection is judged in event time, not arrival order.

On Kafka a customer's logins, payments and withdrawals and the chain's transfers come from
different topics and partitions, and any of them can lag: live, one fetch comes back before
another.  The shipped rules over simulated traffic must raise the same alerts (rule and
entity) when each source's events of a stretch of event time arrive together, the sources in
a random order, as when everything arrives in event-time order.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.unit.detect.test_kinds import HEAD, PROPAGATION

from vigil.detect.engine import RuleSet, detect_events
from vigil.detect.eval import intel_for
from vigil.detect.intel import IntelIndex
from vigil.detect.rules.models import Rule
from vigil.detect.rules.validate import load_rules, validate_paths
from vigil.events.base import Entities, Event
from vigil.events.types import (
    Alert,
    CrmRecordExport,
    CrmRecordExportPayload,
    Deposit,
    DepositPayload,
    FailedLogin,
    FailedLoginPayload,
    Login,
    MfaChange,
    MfaChangePayload,
    PasswordReset,
    WithdrawalAddressAdded,
    WithdrawalAddressAddedPayload,
    WithdrawalRequest,
    WithdrawalRequestPayload,
)
from vigil.sim import SimConfig, Simulation

ROOT = Path(__file__).resolve().parents[3]
#: How far one source may lag another here (event-time minutes): within the hour the rules
#: allow for lateness.
LAG_MINUTES = 55


def _found(alerts: list[Alert]) -> set[tuple[str, str]]:
    return {(a.payload.rule_id, f"{a.payload.entity.kind}:{a.payload.entity.id}") for a in alerts}


def _by_source_in_stretches(events: list[Event], minutes: float, rng: random.Random) -> list[Event]:
    """``events`` cut into stretches of event time; within each, one source's events after
    another's, the sources in a random order."""
    start = events[0].occurred_at.timestamp()
    stretches: dict[int, dict[str, list[Event]]] = defaultdict(lambda: defaultdict(list))
    for event in events:
        stretch = int((event.occurred_at.timestamp() - start) // (minutes * 60))
        stretches[stretch][type(event).domain].append(event)
    out: list[Event] = []
    for stretch in sorted(stretches):
        sources = list(stretches[stretch])
        rng.shuffle(sources)
        for source in sources:
            out.extend(stretches[stretch][source])
    return out


# Each of these simulated days (and orders) made some rule kind miss an alert when it judged
# by arrival: exposure (2), linked accounts (3, 4), a sequence's min_seen (4), look-alikes (8).
@pytest.mark.parametrize(("seed", "shuffle"), [(2, 23), (3, 33), (4, 41), (8, 81)])
def test_shipped_rules_raise_the_same_alerts_whatever_source_arrives_first(seed: int, shuffle: int) -> None:
    rules = load_rules([ROOT / "rules"])
    config = SimConfig(seed=seed, customers=300, events=12_000, attack_rate=2.0)
    events = list(Simulation(config).canonical())
    intel = IntelIndex.from_events(intel_for(config.intel_dir, config.start))
    in_order, _ = detect_events(RuleSet(rules, intel), events)
    expected = _found(in_order)
    assert len(expected) >= 50
    arrival = _by_source_in_stretches(events, LAG_MINUTES, random.Random(shuffle))
    assert arrival != events  # the order really differs
    # One event per batch: the operator sorts a batch by event time, so this is arrival order.
    got, _ = detect_events(RuleSet(rules, intel), arrival, batch_size=1)
    assert _found(got) == expected


def _rules(tmp_path: Path, rule: str) -> list[Rule]:
    """The rule under test (its kind's YAML after test_kinds' header), validated."""
    (tmp_path / "r.yaml").write_text(HEAD + rule)
    checked = validate_paths([tmp_path])
    assert not checked.errors
    return checked.rules


def _failed_logins(minutes: list[int]) -> list[Event]:
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    return [
        FailedLogin(
            event_id=f"f{m}",
            source="b",
            occurred_at=t0 + timedelta(minutes=m),
            entities=Entities(ip="198.51.100.7"),
            payload=FailedLoginPayload(username=f"u{m}"),
        )
        for m in minutes
    ]


THRESHOLD_RULE = """\
    type: threshold
    match: {type: failed_login}
    group_by: ip
    timespan: 10m
    aggregate: count
    condition: {gte: 5}
"""


@pytest.mark.parametrize(
    ("minutes", "evidence"),
    [
        ([0, 1, 2, 3, 4], ["f0", "f1", "f2", "f3", "f4"]),
        # The fifth arrives after a newer one: its window (0-4) holds five.
        ([0, 1, 2, 3, 30, 4], ["f0", "f1", "f2", "f3", "f4"]),
        # Late ones 25 minutes before the first three: no ten minutes holds five (they counted as
        # one window of 27 minutes).
        ([30, 31, 32, 5, 6], None),
        # A late one completes the window ending at the newest.
        ([20, 22, 24, 26, 21], ["f20", "f21", "f22", "f24", "f26"]),
        # ... or one ending at an event between it and the newest (the window ending at the
        # newest, 15-25, misses 0-9, and the one ending at the late event holds four).
        ([0, 2, 6, 8, 25, 4], ["f0", "f2", "f4", "f6", "f8"]),
        # Of several it completes, the earliest fires, as it would have in event-time order.
        ([0, 2, 6, 8, 11, 14, 30, 5], ["f0", "f2", "f5", "f6", "f8"]),
    ],
)
def test_a_threshold_window_is_a_span_of_event_time_not_of_arrivals(
    tmp_path: Path, minutes: list[int], evidence: list[str] | None
) -> None:
    alerts, _ = detect_events(
        RuleSet(_rules(tmp_path, THRESHOLD_RULE), IntelIndex()), _failed_logins(minutes), batch_size=1
    )
    got = [[e.event_id for e in a.payload.evidence] for a in alerts]
    assert got == ([] if evidence is None else [evidence])


@pytest.mark.parametrize(
    ("cooldown", "minutes", "last_evidence"),
    [
        # A late one arriving in the group's quiet time still completes the newest window.
        ("5m", [0, 1, 2, 8, 9, 6], ["f2", "f9"]),
        # A firing on the newest window quiets the group from there, not from the late event.
        ("10m", [5, 9, 1, 12, 13, 14], ["f9"]),
    ],
)
def test_a_late_threshold_event_is_judged_as_in_order_with_a_cooldown(
    tmp_path: Path, cooldown: str, minutes: list[int], last_evidence: list[str]
) -> None:
    rule = THRESHOLD_RULE.replace("{gte: 5}", f"{{gte: 3}}\n    cooldown: {cooldown}")
    rules = _rules(tmp_path, rule)
    late, _ = detect_events(RuleSet(rules, IntelIndex()), _failed_logins(minutes), batch_size=1)
    in_order, _ = detect_events(RuleSet(rules, IntelIndex()), _failed_logins(sorted(minutes)), batch_size=1)
    assert [a.payload.evidence[-1].event_id for a in late] == last_evidence
    assert [a.payload.evidence[-1].event_id for a in in_order] == last_evidence


#: test_kinds' propagation rule without its first_seen condition: every login of a marked
#: customer is a trigger.
PROPAGATION_RULE = PROPAGATION.replace("      first_seen: payload.geo.country\n      min_seen: 2\n", "")
assert PROPAGATION_RULE != PROPAGATION


@pytest.mark.parametrize("customer", ["c1", "c|1", "c" * 130])
def test_a_propagation_mark_meets_its_trigger_whatever_the_id(tmp_path: Path, customer: str) -> None:
    # Marks are stored under the target's key as group keys build it (cut, "|" escaped): built
    # from the raw id, a long one or one with a "|" never met its trigger.
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    events: list[Event] = [
        CrmRecordExport(
            event_id="x1",
            source="t",
            occurred_at=t0,
            entities=Entities(vendor="v1"),
            payload=CrmRecordExportPayload(
                platform="hubspot", record_count=50, export_id="e1", customer_ids=[customer]
            ),
        ),
        Login(
            event_id="l1",
            source="t",
            occurred_at=t0 + timedelta(minutes=5),
            entities=Entities(customer=customer),
        ),
    ]
    alerts, _ = detect_events(RuleSet(_rules(tmp_path, PROPAGATION_RULE), IntelIndex()), events)
    assert len(alerts) == 1


SEQUENCE_RULE = """\
    type: sequence
    group_by: customer
    within: 2h
    steps:
      - {name: reset, type: password_reset}
      - {name: added, type: withdrawal_address_added}
      - {name: out, type: withdrawal_request}
"""


T0 = datetime(2026, 5, 1, tzinfo=UTC)
WHO = Entities(customer="c1")


def _at(event_id: str, minutes: float) -> dict[str, Any]:
    """The fields every customer event of these tests shares: its id, c1, minutes after T0."""
    return {
        "event_id": event_id,
        "source": "b",
        "occurred_at": T0 + timedelta(minutes=minutes),
        "entities": WHO,
    }


def _reset(m: float) -> Event:
    return PasswordReset(**_at(f"r{m}", m))


def _added(m: float, address: str) -> Event:
    payload = WithdrawalAddressAddedPayload(address=address, asset="ETH", chain="ethereum")
    return WithdrawalAddressAdded(**_at(f"a{m}", m), payload=payload)


def _out(m: float, address: str) -> Event:
    payload = WithdrawalRequestPayload(withdrawal_id=f"w{m}", asset="ETH", amount=1.0, to_address=address)
    return WithdrawalRequest(**_at(f"w{m}", m), payload=payload)


def _mfa(m: float) -> Event:
    return MfaChange(**_at(f"m{m}", m), payload=MfaChangePayload(action="disabled"))


def _alerted(rules: list[Rule], events: list[Event]) -> list[list[str]]:
    """The evidence of each alert, events delivered one batch each in the order given."""
    got, _ = detect_events(RuleSet(rules), events, batch_size=1)
    return [[e.event_id for e in a.payload.evidence] for a in got]


def _both(rules: list[Rule], arrival: list[Event]) -> tuple[list[list[str]], list[list[str]]]:
    """Alerts in event-time order and in the arrival order given."""
    return _alerted(rules, sorted(arrival, key=lambda e: e.occurred_at)), _alerted(rules, arrival)


def test_a_late_step_event_after_a_burst_keeps_the_chain_begun_before_it(tmp_path: Path) -> None:
    # A late event is put in its place and the recent steps replayed; the replay knew only the
    # last 32 step events, so 40 password resets after the chain's second step (an attacker's,
    # or a forgetful customer's) and one late event lost the chain: the withdrawal passed.
    rules = _rules(tmp_path, SEQUENCE_RULE)
    x = "0x" + "9" * 40
    burst = [_reset(0), _added(1, x), *(_reset(2 + i) for i in range(40))]
    chain = [["r0", "a1", "w60"]]
    assert _both(rules, [*burst, _reset(40.5), _out(60, x)]) == (chain, chain)  # after minute 41
    # A step from within the burst arriving late (36 minutes): the chain still completes.
    assert _both(rules, [*burst, _reset(5.5), _out(60, x)]) == (chain, chain)
    # A withdrawal made before the address was added, arriving after the burst: no alert, in
    # either order (the chains folded in are later than it: it does not extend them).
    assert _both(rules, [*burst, _out(0.5, x)]) == ([], [])
    # An address added before the burst's resets, arriving after 33 of them (folded into the
    # replay base at once), then a withdrawal: reset -> added -> out is not in event order.
    assert _both(rules, [*(_reset(20 + i) for i in range(33)), _added(15, x), _out(16, x)]) == ([], [])


#: An address added, a password reset, a withdrawal to that address.
ADDRESS_FIRST = """\
    type: sequence
    group_by: customer
    within: 2h
    steps:
      - {name: new_address, type: withdrawal_address_added}
      - {name: reset, type: password_reset}
      - name: withdrawal
        type: withdrawal_request
        same_as: {payload.to_address: new_address.payload.address}
"""


def test_a_late_step_acts_as_at_its_own_time_on_the_chains_it_meets(tmp_path: Path) -> None:
    # Folded into the replay base after later steps, a late event used to extend, replace or
    # clear chains as if it were the newest: a chain it could not have begun or taken on in
    # event time, and a lost one (a late completion clearing a chain begun after it).  A second
    # address added late is a chain of its own: the reset takes on both, and the withdrawal to
    # the first completes its chain in either order (one chain a step, the second address hid
    # the first: a decoy let a drain through).
    x, y, z = "0x" + "1" * 40, "0x" + "2" * 40, "0x" + "3" * 40
    address_first = ADDRESS_FIRST
    arrival = [_added(1, x), _reset(4), *(_out(5 + i, z) for i in range(33)), _added(2, y), _out(40, x)]
    first = [["a1", "r4", "w40"]]
    assert _both(_rules(tmp_path, address_first), arrival) == (first, first)
    four_steps = """\
    type: sequence
    group_by: customer
    within: 2h
    steps:
      - {name: a, type: password_reset}
      - {name: b, type: withdrawal_address_added}
      - {name: c, type: mfa_change}
      - {name: d, type: withdrawal_request}
"""
    arrival = [_reset(1), _added(2, x), _mfa(3), _reset(4), _added(5, x), *(_reset(6 + i) for i in range(33))]
    arrival += [_out(3.5, x), _mfa(40), _out(41, x)]
    both = [["r1", "a2", "m3", "w3.5"], ["r4", "a5", "m40", "w41"]]
    assert _both(_rules(tmp_path, four_steps), arrival) == (both, both)


def _export(event_id: str, at: datetime, customer_ids: list[str]) -> Event:
    """A vendor's CRM export naming ``customer_ids`` (a propagation mark)."""
    return CrmRecordExport(
        event_id=event_id,
        source="t",
        occurred_at=at,
        entities=Entities(vendor="v1"),
        payload=CrmRecordExportPayload(
            platform="hubspot", record_count=50, export_id=f"e-{event_id}", customer_ids=customer_ids
        ),
    )


def test_a_propagation_mark_arriving_after_its_trigger_still_alerts_and_only_from_its_time(
    tmp_path: Path,
) -> None:
    # The vendor's export comes through the SaaS topic, often behind the exchange's own: a login
    # after the export that arrived before it found no mark and was forgotten (no alert), and a
    # login before the export that arrived after it alerted (in event time it was unmarked).
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    export = _export("x1", t0, ["c1"])

    def login(minutes: int) -> Event:
        return Login(
            event_id=f"l{minutes}",
            source="t",
            occurred_at=t0 + timedelta(minutes=minutes),
            entities=Entities(customer="c1"),
        )

    rules = _rules(tmp_path, PROPAGATION_RULE)

    def alerts(events: list[Event]) -> list[list[str]]:
        got, _ = detect_events(RuleSet(rules, IntelIndex()), events, batch_size=1)
        return [[e.event_id for e in a.payload.evidence] for a in got]

    assert alerts([export, login(5)]) == [["x1", "l5"]]
    assert alerts([login(5), export]) == [["x1", "l5"]]  # the export 5 minutes late
    assert alerts([export, login(-5)]) == []  # a login before the export
    assert alerts([login(-5), export, login(30)]) == [["x1", "l30"]]
    # A second export 5 minutes late: the first one's alert does not stop it from alerting for
    # the login it covers (the login was held), nor does it replace the first one.
    second = _export("x2", t0 + timedelta(minutes=100), ["c1"])
    assert alerts([export, login(1), login(101), second]) == [["x1", "l1"], ["x2", "l101"]]
    assert alerts([export, second, login(50)]) == [["x1", "l50"]]
    # Held triggers: the earliest the mark covers, whatever arrived first.
    assert alerts([login(20), login(10), export]) == [["x1", "l10"]]
    # A customer named twice in one export: one mark, one alert.
    twice = _export("x3", t0, ["c1", "c1"])
    assert alerts([login(10), login(20), twice]) == [["x3", "l10"]]
    # The same export read twice, after its mark has gone: the login it left held has gone too.
    later = _export("x4", t0 + timedelta(days=3), ["c1"])
    again = [export, login(60), login(120), later, login(3 * 24 * 60 + 120), export]
    assert alerts(again) == [["x1", "l60"], ["x4", "l4440"]]
    # Held until an hour of event time has passed it (by later triggers, or sweeps): the export
    # arriving 90 minutes late still finds it.
    assert alerts([login(90), export]) == [["x1", "l90"]]
    assert alerts([login(90), login(200), export]) == [["x1", "l200"]]


def _deposit(m: float, usd: float, source: str) -> Event:
    payload = DepositPayload(
        deposit_id=f"d{m}", asset="ETH", amount=usd / 3000, amount_usd=usd, from_address=source
    )
    return Deposit(**_at(f"d{m}", m), payload=payload)


def _out_usd(m: float, usd: float, address: str) -> Event:
    payload = WithdrawalRequestPayload(
        withdrawal_id=f"w{m}", asset="ETH", amount=usd / 3000, amount_usd=usd, to_address=address
    )
    return WithdrawalRequest(**_at(f"w{m}", m), payload=payload)


@pytest.mark.parametrize(
    ("added_at", "alerts"),
    [
        # The address was added after the withdrawal to it: new when the withdrawal was asked.
        (50, [["d0", "d10", "d20", "w40"]]),
        # Added before (the identity topic may be read after the payments topic): not new.
        (30, None),
    ],
)
def test_whether_a_withdrawal_goes_to_a_new_address_is_judged_in_event_time(
    added_at: int, alerts: list[list[str]] | None
) -> None:
    # rapid-in-out holds money from several sources passed straight on to an address the
    # customer never used; "never used" was judged by which topic happened to be read first.
    rules = [r for r in load_rules([ROOT / "rules"]) if r.id == "rapid-in-out"]
    deposits = [_deposit(0, 1000, "0x01"), _deposit(10, 2000, "0x02"), _deposit(20, 1500, "0x03")]
    added = _added(added_at, "0x04")
    out = _out_usd(40, 4300, "0x04")
    in_order, late_added = _both(rules, [*deposits, out, added])
    _, added_first = _both(rules, [*deposits, added, out])
    expected = alerts or []
    if added_at < 40:
        # Read after the withdrawal was scored, a sighting cannot take its alert back: only
        # the orders that put it first are judged as in event time.
        assert (in_order, added_first) == (expected, expected)
    else:
        assert (in_order, late_added, added_first) == (expected, expected, expected)


@pytest.mark.parametrize("aggregate", ["distinct", "sum"])
def test_a_late_event_completes_a_window_between_it_and_the_newest_whatever_the_aggregate(
    tmp_path: Path, aggregate: str
) -> None:
    # Deposits at 0, 2, 6 and 25 minutes, then a late one at 4: the window ending at 6 holds
    # four deposits of 1,000 USD from four addresses; the ones ending at 4 and at 25 do not.
    rule = f"""\
    type: threshold
    match: {{type: deposit}}
    group_by: customer
    timespan: 10m
    aggregate: {aggregate}
    field: {"payload.from_address" if aggregate == "distinct" else "payload.amount_usd"}
    condition: {{gte: {4 if aggregate == "distinct" else 4000}}}
"""
    events = [_deposit(m, 1000, f"0x{m:02}") for m in (0, 2, 6, 25, 4)]
    in_order, late = _both(_rules(tmp_path, rule), events)
    assert in_order == late == [["d0", "d2", "d4", "d6"]]


@pytest.mark.parametrize("same_second_first", ["address", "withdrawal"])
def test_steps_at_the_same_time_make_one_chain_whichever_arrives_first(same_second_first: str) -> None:
    # A script adds an address and withdraws to it in the same second; the identity and payments
    # topics can be read in either order.  Read withdrawal first, the chain never completed.
    rules = [r for r in load_rules([ROOT / "rules"]) if r.id == "security-change-new-address"]
    added, out = _added(10, "0x04"), _out(10, "0x04")
    arrival = [_mfa(0), added, out] if same_second_first == "address" else [_mfa(0), out, added]
    assert _alerted(rules, arrival) == [["m0", "a10", "w10"]]


def test_a_return_after_idle_is_judged_against_what_came_before_it_in_event_time() -> None:
    # dormant-reactivation: a login after 90 days' silence, then a large withdrawal.  A small
    # withdrawal 20 minutes before the login means the account was not dormant, even when it is
    # read after the login (the payments topic behind identity).
    rules = [r for r in load_rules([ROOT / "rules"]) if r.id == "dormant-reactivation"]
    day = 1440
    old = Login(**_at("l0", 0))
    small, login, large = (
        _out_usd(120 * day - 20, 50, "0x01"),
        Login(**_at("l1", 120 * day)),
        _out_usd(120 * day + 10, 20_000, "0x01"),
    )
    assert _both(rules, [old, small, login, large]) == ([], [])
    assert _alerted(rules, [old, login, small, large]) == []
    # Without the small one it is a return after idle, whichever order.
    alert = [["l1", f"w{120 * day + 10}"]]
    assert _both(rules, [old, large, login]) == (alert, alert)


def test_an_exposure_alert_has_one_id_whichever_topic_came_first() -> None:
    # chain.yaml's case of a deposit two hops downstream of a sanctioned address: with the chain
    # topic behind, the second transfer joined the evidence, and with it the alert's id, so a
    # replay in another order gave the same detection a second alert and a second hold.
    checked = validate_paths([ROOT / "rules" / "chain.yaml"])
    case = next(c for c in checked.cases if c.name.startswith("deposit two hops"))
    indicator, first, second, deposit = case.events
    rules = [r for r in checked.rules if r.id == "sanctioned-exposure"]
    runs = []
    for arrival in ([first, second, deposit], [first, deposit, second]):
        alerts, decisions = detect_events(
            RuleSet(rules, IntelIndex.from_events([indicator])), arrival, batch_size=1
        )
        runs.append(([a.event_id for a in alerts], [d.event_id for d in decisions]))
    (alerts, decisions), late = runs
    assert len(alerts) == len(decisions) == 1
    assert late == (alerts, decisions)


def test_a_return_after_idle_still_alerts_with_events_after_the_return(tmp_path: Path) -> None:
    # The recheck at completion lost the time before the idle once later events pushed it out of
    # the recent times kept: a second login two hours after the return hid the dormant return.
    rules = [r for r in load_rules([ROOT / "rules"]) if r.id == "dormant-reactivation"]
    day = 1440
    old, login = Login(**_at("l0", 0)), Login(**_at("l1", 120 * day))
    again, large = Login(**_at("l2", 120 * day + 120)), _out_usd(120 * day + 180, 20_000, "0x01")
    alert = [["l1", f"w{120 * day + 180}"]]
    assert _both(rules, [old, login, again, large]) == (alert, alert)


def test_an_event_taking_a_chains_first_and_last_step_is_not_put_before_the_step_between(
    tmp_path: Path,
) -> None:
    rule = """\
    type: sequence
    group_by: customer
    within: 1h
    steps:
      - {name: first, type: withdrawal_request}
      - {name: add, type: withdrawal_address_added}
      - {name: then, type: withdrawal_request}
"""
    rules = _rules(tmp_path, rule)
    assert _alerted(rules, [_out(0, "0x1"), _added(10, "0x2"), _out(10, "0x2")]) == [["w0", "a10", "w10"]]


def test_a_huge_sum_in_and_out_of_the_running_total_does_not_hide_a_late_window(tmp_path: Path) -> None:
    # 1e20 added to the running sum and taken away again left 0 where 50 + 60 was: the late
    # deposit's window, over the bound, was taken for under it.
    rule = """\
    type: threshold
    match: {type: deposit}
    group_by: customer
    timespan: 60m
    aggregate: sum
    field: payload.amount_usd
    condition: {gt: 100}
"""
    events = [
        _deposit(0, 200, "0x01"),
        _deposit(10, 1e20, "0x01"),
        _deposit(75, 50, "0x01"),
        _deposit(50, 60, "0x01"),
    ]
    in_order, late = _both(_rules(tmp_path, rule), events)
    assert late == in_order == [["d0"], ["d50", "d75"]]


def test_each_withdrawal_to_the_new_address_is_held_whatever_arrives_first() -> None:
    # Once the chain completed it was used up: the attacker's second withdrawal to the same
    # address passed with no alert and no hold.  With ``repeat`` each one completes the chain,
    # in any arrival order, each alert once.
    rules = [r for r in load_rules([ROOT / "rules"]) if r.id == "security-change-new-address"]
    events = [_mfa(0), _added(5, "0x06"), _out(10, "0x06"), _out(20, "0x06"), _out(30, "0x07")]
    expected = [["m0", "a5", "w10"], ["m0", "a5", "w20"]]
    assert _both(rules, events) == (expected, expected)
    for seed in range(5):
        arrival = random.Random(seed).sample(events, len(events))
        assert sorted(_alerted(rules, arrival)) == expected
    # Past the chain's span, a withdrawal to the address is no longer part of it.
    assert _alerted(rules, [_mfa(0), _added(5, "0x06"), _out(10, "0x06"), _out(200, "0x06")]) == [expected[0]]


def test_a_sequence_alert_shows_the_fields_its_steps_were_compared_by() -> None:
    # api-key-new-ip: the key withdraws from an IP other than the one it was made from (compared
    # by ``differs``).  The evidence kept neither step's IP, so the explanation named the key's
    # creation IP as the one it was used from.
    checked = validate_paths([ROOT / "rules" / "identity.yaml"])
    case = next(c for c in checked.cases if c.name.startswith("a withdraw-capable key withdrawing"))
    created, added, used = case.events
    rules = [r for r in checked.rules if r.id == "api-key-new-ip"]
    (alert,) = detect_events(RuleSet(rules), [created, added, used])[0]
    assert [e.fields.get("ip") for e in alert.payload.evidence] == [
        "198.51.100.5",
        "198.51.100.5",
        "203.0.113.78",
    ]
    assert 'the key withdrew to it from IP "203.0.113.78"' in alert.payload.explanation
