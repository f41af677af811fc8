"""Input an attacker (or a broken source) controls must not stop detection, merge entities, or
speak in Vigil's voice: each of these once did one of those."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from vigil.detect.alerts import as_data
from vigil.detect.cases import run_case
from vigil.detect.engine import ALERTS_TOPIC, DetectOperator, RuleSet
from vigil.detect.fields import Condition
from vigil.detect.intel import IntelIndex
from vigil.detect.rules.models import Case, DecisionSpec, Expectation
from vigil.detect.rules.validate import load_rules
from vigil.errors import DecodeError
from vigil.events.base import Entities, Event
from vigil.events.codec import decode_event, encode
from vigil.events.types import (
    CrmRecordExport,
    CrmRecordExportPayload,
    FailedLogin,
    FailedLoginPayload,
    Login,
    LoginPayload,
    Trade,
    TradePayload,
)
from vigil.stream.app import Decoder
from vigil.testing import run_operators

ROOT = Path(__file__).resolve().parents[3]
RULES = load_rules([ROOT / "rules"])
T0 = datetime(2026, 5, 1, tzinfo=UTC)


def shipped(*ids: str) -> RuleSet:
    return RuleSet([r for r in RULES if r.id in ids], IntelIndex())


#: A sum of records an hour (insider-bulk-export before version 2): the shipped rules no longer
#: sum record counts, and these tests are about sums of huge counts.
RECORDS_PER_HOUR = """\
rules:
  - id: records-per-hour
    version: 1
    title: Employee exports many records within an hour
    type: threshold
    typology: insider_export
    severity: high
    score: 80
    explanation: >-
      Employee {entity} exported {value} customer records in {count} export(s) within {span}.
    match: {type: crm_record_export, where: {employee: {exists: true}}}
    group_by: employee
    timespan: 1h
    aggregate: sum
    field: payload.record_count
    condition: {gte: 400}
"""


def as_built(events: list[Event]) -> Decoder:
    """A decoder that hands detection each event as it was built, past the contract's checks
    (the harness otherwise decodes inputs as the runtime's canonical decoder does, and that
    dead-letters counts past 64 bits before detection sees them)."""
    built = {encode(event): event for event in events}
    return lambda _topic, value, _key, _headers: built[value]


def records_per_hour(tmp_path: Path, *also: str) -> RuleSet:
    """That rule, with the shipped rules named in ``also``."""
    (tmp_path / "r.yaml").write_text(RECORDS_PER_HOUR)
    return RuleSet([*load_rules([tmp_path]), *(r for r in RULES if r.id in also)], IntelIndex())


def export(n: int, records: str, minutes: int) -> Event:
    # Built, not decoded: the contract refuses counts past 64 bits (see the test below), but
    # an application's own decoder need not, and detection must take them (see as_built).
    return CrmRecordExport(
        event_id=f"x{n}",
        source="hubspot",
        occurred_at=T0 + timedelta(minutes=minutes),
        entities=Entities(employee="e1"),
        payload=CrmRecordExportPayload(platform="hubspot", record_count=int(records), export_id=f"x{n}"),
    )


def test_the_contract_refuses_counts_past_64_bits_naming_the_field() -> None:
    raw = (
        f'{{"type":"crm_record_export","event_id":"x","source":"hubspot","occurred_at":"{T0.isoformat()}",'
        f'"payload":{{"platform":"hubspot","record_count":{2**70},"export_id":"x"}}}}'
    )
    with pytest.raises(DecodeError, match=r"payload\.record_count"):
        decode_event(raw.encode())


def test_integers_past_float_and_64_bits_neither_stop_detection_nor_its_checkpoints(tmp_path: Path) -> None:
    # float() of a 400-digit count raised OverflowError in every numeric condition, and a count
    # past 64 bits kept in a sum window failed every checkpoint (MessagePack): the stage
    # stopped, and again on the same record after each restart.
    huge, past_64_bits = "9" * 400, str(2**70)
    events = [export(1, huge, 0), export(2, past_64_bits, 1), export(3, "5", 2)]
    rules = records_per_hour(tmp_path, "insider-bulk-export", "vendor-token-export")
    # The canonical decoder stops both huge counts at the door, here as on Kafka.
    refused = run_operators([DetectOperator(rules)], events)
    assert [(dead.event.event_id, "payload.record_count" in why) for dead, why in refused.dead_letters] == [
        ("x1", True),
        ("x2", True),
    ]
    result = run_operators([DetectOperator(rules)], events, decode=as_built(events))
    for state in result.states.values():
        state.reload()  # encodes and decodes every value, as a checkpoint and a restore do
    alerts = result.emitted(ALERTS_TOPIC)
    assert sorted(a.payload.rule_id for a in alerts if a.payload.entity.id == "e1") == [
        "insider-bulk-export",
        "records-per-hour",
    ]
    assert "inf" in next(a for a in alerts if a.payload.rule_id == "records-per-hour").payload.explanation


def test_contains_on_text_with_a_number_is_false_not_an_exception() -> None:
    # (Validation refuses such a rule; this is the run-time guard for rules built in code.)
    check = Condition("payload.username", "contains", 1234).compile()
    event = FailedLogin(
        event_id="f", source="t", occurred_at=T0, payload=FailedLoginPayload(username="alice1234")
    )
    assert check(event) is False
    assert Condition("payload.username", "contains", "ice").compile()(event) is True


def test_attacker_text_cannot_close_its_quotes_in_an_explanation() -> None:
    evil = '1.2.3.4\\" (allow-listed scanner, no action needed) \\"'
    shown = as_data(evil)
    # Inside the outer quotes every quote is escaped by an odd run of backslashes.
    inner = shown[1:-1]
    i = inner.find('"')
    while i >= 0:
        run = len(inner[:i]) - len(inner[:i].rstrip("\\"))
        assert run % 2 == 1, shown
        i = inner.find('"', i + 1)
    assert as_data("a\\x0ab") != as_data("a\nb")  # a literal escape is not a newline
    assert as_data("line\u2028sep") == '"line\\u2028sep"'
    long = as_data("\\" * 1000)
    assert long.endswith('…"')
    assert len(long[1:-2]) % 2 == 0  # cut between escapes, never inside one


def failed(n: int, ip: str, user: str) -> FailedLogin:
    return FailedLogin(
        event_id=f"f{n}",
        source="t",
        occurred_at=T0 + timedelta(seconds=n),
        entities=Entities(ip=ip),
        payload=FailedLoginPayload(username=user),
    )


def test_ids_with_escapes_in_them_stay_distinct_entities() -> None:
    # "|" was escaped as "%7C" but "%" only beside a "|": "10.0.0.1|x" and a literal
    # "10.0.0.1%7Cx" were one group, and the second was reported as the first.
    events = [failed(i, "10.0.0.1|x", f"u{i}") for i in range(5)]
    events += [failed(10 + i, "10.0.0.1%7Cx", f"v{i}") for i in range(5)]
    alerts = run_operators([DetectOperator(shipped("credential-stuffing"))], events).emitted(ALERTS_TOPIC)
    assert alerts == []  # five users each: under the rule's ten
    events += [failed(20 + i, "10.0.0.1%7Cx", f"w{i}") for i in range(5)]
    alerts = run_operators([DetectOperator(shipped("credential-stuffing"))], events).emitted(ALERTS_TOPIC)
    assert [a.payload.entity.id for a in alerts] == ["10.0.0.1%7Cx"]


def wash_trade(i: int, at: datetime) -> Trade:
    """Trade ``i`` between accounts a1 (maker) and a2 (taker)."""
    return Trade(
        event_id=f"t{i}",
        source="t",
        occurred_at=at,
        entities=Entities(account="a2"),
        payload=TradePayload(
            trade_id=f"t{i}",
            symbol="S",
            price=1,
            quantity=1,
            taker_side="buy",
            maker_account="a1",
            taker_account="a2",
        ),
    )


def test_huge_device_strings_are_bounded_in_linked_state_and_alerts() -> None:
    # A device string is the client's to choose: 600 KB ones made a wash-trading alert over
    # the output limit (1 MB), which stopped the stage, again after every restart.
    big1, big2 = "A" * 600_000, "B" * 600_000
    events: list[Event] = [
        Login(
            event_id=f"l{i}",
            source="t",
            occurred_at=T0 + timedelta(seconds=i),
            entities=Entities(customer=f"c{acct}", account=acct, device=dev),
            payload=LoginPayload(),
        )
        for i, (acct, dev) in enumerate([("a1", big1), ("a1", big2), ("a2", big1), ("a2", big2)])
    ]
    events += [wash_trade(i, T0 + timedelta(minutes=1 + i)) for i in range(3)]
    result = run_operators([DetectOperator(shipped("wash-trading-linked"))], events, batch_size=1)
    alerts = result.emitted(ALERTS_TOPIC)
    assert [a.payload.entity.id for a in alerts] == ["a1"]  # still detected
    assert len(msgspec.json.encode(alerts[0])) < 10_000
    biggest = max(len(msgspec.msgpack.encode(v)) for s in result.states.values() for v in s.data.values())
    assert biggest < 10_000


def test_a_link_in_use_is_not_the_one_evicted() -> None:
    # A phone kept through a new IP at every login: the phone link, never moved up when seen
    # again, was evicted after sixteen links, and trades between the two accounts until the
    # next login were held and never counted.
    def login(n: int, account: str, ip: str, at: timedelta) -> Login:
        return Login(
            event_id=f"l-{account}-{n}",
            source="t",
            occurred_at=T0 + at,
            entities=Entities(customer=f"c-{account}", account=account, device="phone", ip=ip),
        )

    events: list[Event] = [login(0, "a2", "198.51.100.9", timedelta(0))]
    events += [login(m, "a1", f"203.0.113.{m}", timedelta(minutes=m)) for m in range(1, 21)]
    events += [wash_trade(i, T0 + timedelta(minutes=16, seconds=10 * (i + 1))) for i in range(3)]
    events.sort(key=lambda e: e.occurred_at)
    alerts = run_operators([DetectOperator(shipped("wash-trading-linked"))], events, batch_size=1).emitted(
        ALERTS_TOPIC
    )
    assert [(a.payload.entity.id, a.payload.related[0].id) for a in alerts] == [("a1", "a2")]


def test_case_expectations_are_matched_as_a_whole_not_first_come() -> None:
    # A general expectation listed first took the alert the specific one needed: the case
    # failed with the expectations in one order and passed in the other.
    events = [failed(i, "1.1.1.1", f"u{i}") for i in range(10)]
    events += [failed(100 + i, "2.2.2.2", f"v{i}") for i in range(10)]
    general, specific = Expectation("credential-stuffing"), Expectation("credential-stuffing", "ip:1.1.1.1")
    rules = [r for r in RULES if r.id == "credential-stuffing"]
    for expect in ((general, specific), (specific, general)):
        result = run_case(Case("order", tuple(events), expect, "f.yaml", 1), rules)
        assert sorted(a.payload.entity.id for a in result.alerts) == ["1.1.1.1", "2.2.2.2"]
        assert result.problems == []
    one_too_many = (specific, specific)
    result = run_case(Case("order", tuple(events), one_too_many, "f.yaml", 1), rules)
    assert result.problems[0].startswith("expected an alert credential-stuffing on ip:1.1.1.1")
    assert result.problems[1] == "unexpected alert credential-stuffing on ip:2.2.2.2"


def test_large_threshold_values_read_in_full(tmp_path: Path) -> None:
    events = [export(1, "1234567", 0)]
    alerts = run_operators([DetectOperator(records_per_hour(tmp_path))], events).emitted(ALERTS_TOPIC)
    assert "exported 1,234,567 customer records" in alerts[0].payload.explanation


def test_huge_integers_in_deviation_rules_do_not_stop_detection(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(
        """\
rules:
  - id: export-spike
    version: 1
    type: deviation
    typology: insider_export
    severity: low
    score: 10
    explanation: "{entity}"
    match: {type: crm_record_export}
    group_by: employee
    measure: amount
    field: payload.record_count
    min_history: 2
    condition: {gte: 10}
"""
    )
    rules = load_rules([tmp_path])
    events = [export(1, "5", 0), export(2, "6", 1), export(3, "9" * 400, 2)]
    operator = DetectOperator(RuleSet(rules, IntelIndex()))
    alerts = run_operators([operator], events, decode=as_built(events)).emitted(ALERTS_TOPIC)
    assert [a.payload.entity.id for a in alerts] == ["e1"]


def test_a_hold_on_an_event_dated_at_the_end_of_time_lapses_there_instead_of_stopping_detection() -> None:
    # Event time + the decision's 24 h overflowed: the operator raised, and the stage stopped.
    intel = IntelIndex()
    intel.add(["0x8589427373d6d84e98730d7795d8f6f8731fda16"], indicator_type="eth_address",
              category="sanctioned", feed="ofac", list_version="v1")  # fmt: skip
    events = [
        decode_event(
            msgspec.json.encode(
                {
                    "type": "deposit",
                    "event_id": f"d{i}",
                    "source": "t",
                    "occurred_at": at,
                    "entities": {"customer": f"c{i}"},
                    "payload": {
                        "deposit_id": f"d{i}",
                        "asset": "ETH",
                        "amount": 1.0,
                        "from_address": "0x8589427373d6d84e98730d7795d8f6f8731fda16",
                    },
                }
            )
        )
        for i, at in enumerate(["2026-01-01T00:00:00Z", "9999-12-31T12:00:00Z"])
    ]
    (rule,) = (r for r in load_rules([ROOT / "rules"]) if r.id == "sanctioned-counterparty")
    ttl = timedelta(days=7)  # (the shipped rule holds until released; see test_validate)
    rules = RuleSet([dataclasses.replace(rule, decision=DecisionSpec("hold_withdrawal", ttl))], intel)
    result = run_operators([DetectOperator(rules)], events)
    lapses = sorted(d.payload.expires_at for d in result.emitted("decisions"))  # type: ignore[attr-defined]
    end = datetime.max.replace(tzinfo=UTC)
    assert lapses == [datetime(2026, 1, 1, tzinfo=UTC) + ttl, end]


def test_an_event_in_the_last_microseconds_of_time_is_evidence_not_a_stopped_stage() -> None:
    # Its timestamp rounds up into the year 10000: turned back into a datetime for the alert's
    # evidence it raised, and the route stage stopped on it at every start (found in review).
    intel = IntelIndex()
    intel.add(["0x8589427373d6d84e98730d7795d8f6f8731fda16"], indicator_type="eth_address",
              category="sanctioned", feed="ofac", list_version="v1")  # fmt: skip
    last = "9999-12-31T23:59:59.999999Z"
    event = decode_event(
        msgspec.json.encode(
            {
                "type": "deposit",
                "event_id": "d-last",
                "source": "bank",
                "occurred_at": last,
                "entities": {"customer": "c-last"},
                "payload": {
                    "deposit_id": "d-last",
                    "asset": "ETH",
                    "amount": 1.0,
                    "from_address": "0x8589427373d6d84e98730d7795d8f6f8731fda16",
                },
            }
        )
    )
    (rule,) = (r for r in load_rules([ROOT / "rules"]) if r.id == "sanctioned-counterparty")
    (alert,) = run_operators([DetectOperator(RuleSet([rule], intel))], [event]).emitted(ALERTS_TOPIC)
    (evidence,) = alert.payload.evidence  # type: ignore[attr-defined]
    assert evidence.occurred_at == datetime.max.replace(tzinfo=UTC)
