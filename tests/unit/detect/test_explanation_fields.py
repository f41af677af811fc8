"""An explanation quotes every field validation lets it name, not only those evidence kept.

Validation takes ``{name}`` for any field of the rule's event types (rules/README.md), but
evidence stored only each type's key fields and the paths the rule's conditions read: a
``{channel}`` in a withdrawal rule passed ``vigil rules validate`` and ``vigil rules test`` and
then read "(unknown)" in every alert an analyst opened (found in review).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import msgspec

from vigil.detect.alerts import explain
from vigil.detect.cases import run_cases
from vigil.detect.kinds.base import Hit
from vigil.detect.rules.validate import validate_paths
from vigil.events.types import Alert, EntityRef

RULES = """\
rules:
  - id: big-withdrawal
    version: 1
    title: Big withdrawal
    type: threshold
    typology: test
    severity: high
    score: 50
    explanation: "{entity} asked for {amount_usd} USD via {channel} on {chain} from device {device}."
    match: {type: withdrawal_request, where: {payload.amount_usd: {gt: 1000}}}
    group_by: customer
    timespan: 5m
    aggregate: count
    condition: {gte: 1}

  - id: login-then-withdrawal
    version: 1
    title: Login then withdrawal
    type: sequence
    typology: test
    severity: high
    score: 50
    explanation: "{entity} logged in from {city} with {user_agent}, then withdrew over {channel}."
    group_by: customer
    within: 1h
    steps:
      - {name: login, type: login}
      - {name: out, type: withdrawal_request}
cases:
  - name: a login, then a big withdrawal
    events:
      - {type: login, id: l1, at: "2026-11-01T00:00:00Z", customer: c1, device: d1,
         payload: {user_agent: "Firefox/140", geo: {country: FR, city: Lyon}}}
      - {type: withdrawal_request, id: w1, at: "2026-11-01T00:01:00Z", customer: c1, device: d1,
         payload: {withdrawal_id: wd1, asset: ETH, amount: 1, amount_usd: 5000, chain: ethereum,
                   channel: api, to_address: "0x00000000000000000000000000000000000000aa"}}
    expect:
      - {rule: big-withdrawal}
      - {rule: login-then-withdrawal}
"""


def alerts(tmp_path: Path) -> dict[str, Alert]:
    (tmp_path / "r.yaml").write_text(RULES)
    v = validate_paths([tmp_path])
    assert not v.errors, v.errors
    (result,) = run_cases(v.cases, v.rules)
    assert result.ok, result.problems
    return {a.payload.rule_id: a for a in result.alerts}


def test_fields_only_the_explanation_names_are_quoted(tmp_path: Path) -> None:
    got = alerts(tmp_path)
    threshold = got["big-withdrawal"].payload.explanation
    # channel and chain are payload fields no condition reads; device an entity no key field is.
    assert threshold == '"c1" asked for 5,000.00 USD via "api" on "ethereum" from device "d1".'
    sequence = got["login-then-withdrawal"].payload.explanation
    # city is read under the location (payload.geo.city), user_agent from the login step.
    assert sequence == '"c1" logged in from "Lyon" with "Firefox/140", then withdrew over "api".'
    assert "(unknown)" not in threshold + sequence


def test_the_evidence_keeps_what_the_explanation_quotes(tmp_path: Path) -> None:
    (withdrawal,) = alerts(tmp_path)["big-withdrawal"].payload.evidence
    assert withdrawal.fields["channel"] == "api"
    assert withdrawal.fields["chain"] == "ethereum"
    assert withdrawal.fields["device"] == "d1"


def test_a_numeric_context_value_with_a_line_break_is_quoted(tmp_path: Path) -> None:
    # A value under a numeric context name (the intel kind's matched {value}) went in bare when
    # it looked like a number with a unit: its \\s let a line break (or U+2028) into the prose.
    (tmp_path / "r.yaml").write_text(RULES)
    rule = dataclasses.replace(validate_paths([tmp_path]).rules[0], explanation="{value}")
    entity = EntityRef(kind="customer", id="c1")
    for value, bare in (("12 ms", True), ("1\nabc", False), ("9\u2028rm", False), ("9\x85rm", False)):
        text = explain(rule, Hit(entity=entity, evidence=[], context={"value": value}))
        assert (text == value) is bare, (value, text)
        assert "\n" not in text
        assert "\u2028" not in text
        assert "\x85" not in text


def test_a_quantity_that_is_plainly_a_number_reads_as_one(tmp_path: Path) -> None:
    # Quoted like text ("15643.58" USD), amounts read as another kind of thing than a context's
    # 100,000 USD (found in review); anything else in those fields stays quoted, and so do ids.
    (tmp_path / "r.yaml").write_text(RULES)
    rule = dataclasses.replace(
        validate_paths([tmp_path]).rules[0], explanation="{amount_usd} USD, {points} points, {withdrawal_id}"
    )
    entity = EntityRef(kind="customer", id="c1")
    for fields, said in (
        (
            {"amount_usd": "15643.58", "points": "3349", "withdrawal_id": "12345"},
            '15,643.58 USD, 3,349 points, "12345"',
        ),
        ({"amount_usd": "-0.5", "points": "1e9", "withdrawal_id": "w"}, '-0.5 USD, "1e9" points, "w"'),
        (
            {"amount_usd": "12 345", "points": "7\n8", "withdrawal_id": "w"},
            '"12 345" USD, "7\\x0a8" points, "w"',
        ),
    ):
        text = explain(rule, Hit(entity=entity, evidence=[["e1", "withdrawal_request", 1.0, fields]]))
        assert text == said, fields


def test_a_location_part_is_refused_in_a_rule_whose_events_have_no_location(tmp_path: Path) -> None:
    # {country} validated for every type, and read "(unknown)" in every withdrawal rule's alert.
    (tmp_path / "r.yaml").write_text(RULES.replace("from device {device}.", "from {country}."))
    errors = [str(i) for i in validate_paths([tmp_path]).errors]
    assert any(
        "{country} is a field of none of the rule's event types (withdrawal_request)" in e for e in errors
    )
    # A login rule quotes it (payload.geo.country), as the sequence above does {city}.
    assert not [e for e in errors if "{city}" in e]


def test_chain_evidence_names_the_transaction_and_the_token() -> None:
    # Two approvals a minute apart, of USDT and of USDC, read the same: the evidence left out the
    # token and the transaction an investigator looks up (found in review).
    rules_dir = Path(__file__).resolve().parents[3] / "rules"
    v = validate_paths([rules_dir / "chain.yaml"])
    assert not v.errors, v.errors
    cases = [c for c in v.cases if c.name == "an unlimited approval to a listed drainer"]
    (result,) = run_cases(cases, v.rules)
    assert result.ok, result.problems
    (alert,) = [a for a in result.alerts if a.payload.rule_id == "drainer-approval"]
    (approval,) = [e for e in alert.payload.evidence if e.type == "token_approval"]
    assert approval.fields["asset"] == "USDT"
    usdt = "0xdac17f958d2ee523a2206206994597c13d831ec7"
    assert approval.fields["token_contract"] == usdt
    assert approval.fields["tx_hash"] == "ta"


def _shipped_alerts(rule_id: str) -> list[Alert]:
    """The alerts the shipped rule ``rule_id`` raises on its own example cases."""
    result = validate_paths([Path(__file__).resolve().parents[3] / "rules"])
    cases = [c for c in result.cases if any(x.rule == rule_id for x in c.expect)]
    return [a for res in run_cases(cases, result.rules) for a in res.alerts if a.payload.rule_id == rule_id]


def test_impossible_travel_names_both_logins_and_groups_its_numbers() -> None:
    # "from SG; reaching it from the previous login needed 11879 km/h" left the analyst to find
    # where the account had been, and when (found in review).
    alert = _shipped_alerts("impossible-travel")[0]
    assert '"SG", 11,879 km from its login from "PT" at 2026-' in alert.payload.explanation
    assert alert.payload.explanation.endswith(": 11,879 km/h.")


def test_an_amount_the_rule_measured_reads_as_a_number() -> None:
    (alert, *_) = _shipped_alerts("rapid-in-out")
    assert "received 4,500.00 USD from 3 deposits" in alert.payload.explanation  # (was "4500.00", quoted)


def test_related_entities_go_by_kinds_not_field_names() -> None:
    # A pump's takers were "taker_account" and a mixer's senders "from_address".
    for rule_id, kind in [("pump-and-dump", "account"), ("mixer-denominations", "address")]:
        alert = _shipped_alerts(rule_id)[0]
        assert {r.kind for r in alert.payload.related} == {kind}, rule_id


def test_impossible_travel_from_a_login_located_without_a_country_names_no_other(tmp_path: Path) -> None:
    # From the evidence, {country} fell back to the other login's: "from "PT", 11,879 km from
    # its login from "PT"" (found in review).
    shipped = (Path(__file__).resolve().parents[3] / "rules" / "identity.yaml").read_text()
    start = shipped.index("  - id: impossible-travel")
    rule = shipped[start : shipped.index("\n  - id: ", start + 10)]
    case = """
cases:
  - name: the second login located by coordinates alone
    events:
      - {type: login, at: 0, customer: c1, ip: 198.51.100.50,
         payload: {geo: {country: PT, lat: 38.72, lon: -9.14}}}
      - {type: login, at: 1h, customer: c1, ip: 203.0.113.50, payload: {geo: {lat: 1.35, lon: 103.82}}}
    expect:
      - {rule: impossible-travel}
"""
    (tmp_path / "r.yaml").write_text("rules:\n" + rule + "\n" + case)
    v = validate_paths([tmp_path])
    assert not v.errors, v.errors
    (result,) = run_cases(v.cases, v.rules)
    assert result.ok, result.problems
    (alert,) = result.alerts
    assert 'from "(unknown)", 11,879 km from its login from "PT"' in alert.payload.explanation


def test_a_pumps_organiser_buying_his_own_listing_is_not_among_its_related_entities() -> None:
    # Named account:org beside the alert's own entity (maker_account:org, an account): in review.
    result = validate_paths([Path(__file__).resolve().parents[3] / "rules"])
    (rule,) = [r for r in result.rules if r.id == "pump-and-dump"]
    case = next(c for c in result.cases if any(x.rule == "pump-and-dump" for x in c.expect))
    buys = [e for e in case.events if getattr(e.payload, "taker_account", None)]
    own = msgspec.structs.replace(
        buys[0],
        event_id="own-buy",
        payload=msgspec.structs.replace(buys[0].payload, taker_account="org", trade_id="own"),
    )
    (res,) = run_cases([dataclasses.replace(case, events=(*case.events, own))], [rule])
    (alert,) = res.alerts
    assert alert.payload.entity == EntityRef(kind="account", id="org")
    assert ("account", "org") not in {(r.kind, r.id) for r in alert.payload.related}
