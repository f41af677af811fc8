"""Rule settings that validated and changed nothing (or made a rule that never fires), a
deviation's history judged as the other kinds judge theirs, and numbers in alert text as the
events hold them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from tests.unit.detect.test_kinds import HEAD, run, validated

from vigil.detect.cases import run_case
from vigil.detect.engine import RuleSet, detect_events
from vigil.detect.intel import IntelIndex
from vigil.detect.kinds.base import Hit, decimal_text, ts
from vigil.detect.rules.validate import validate_paths
from vigil.testing import MemoryState


def errors_of(tmp_path: Path, rule: str) -> list[str]:
    (tmp_path / "r.yaml").write_text(HEAD + rule)
    return [str(e) for e in validate_paths([tmp_path]).errors]


def refused(tmp_path: Path, rule: str, at: str, says: str) -> None:
    """The rule is refused with one error, located where ``at`` begins in the file, saying
    ``says`` (a regular expression)."""
    errors = errors_of(tmp_path, rule)
    text = HEAD + rule
    before = text[: text.index(at)]
    line, column = before.count("\n") + 1, len(before) - before.rfind("\n")
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{tmp_path / 'r.yaml'}:{line}:{column}: error: rule 'rule-under-test'."), (
        errors
    )
    assert re.search(says, errors[0]), errors


# ------------------------------------------------------- settings that never fire or do nothing

EXPOSURE = """\
    type: exposure
    edges: {type: chain_transfer}
    categories: [sanctioned]
    hops: 1
    min_hops: 2
    check:
      - {type: deposit, field: payload.from_address, group_by: customer}
"""


def test_exposure_min_hops_past_hops_is_refused(tmp_path: Path) -> None:
    # Taint is followed no further than hops: nothing is ever 2..1 hops away, and the rule
    # validated and never fired.
    refused(tmp_path, EXPOSURE, "2\n    check", r"'\.min_hops \(2\) is more than hops \(1\)")
    assert errors_of(tmp_path, EXPOSURE.replace("hops: 1\n", "hops: 2\n")) == []


LINKED_SELF = """\
    type: linked
    links: {type: login, party: account, attributes: [device]}
    match: {type: trade}
    parties: [payload.maker_account, payload.maker_account]
    timespan: 1h
    condition: {gte: 2}
"""


def test_linked_parties_naming_one_field_twice_is_refused(tmp_path: Path) -> None:
    # Every match would pair a party with itself, which never counts.
    refused(
        tmp_path,
        LINKED_SELF,
        "[payload.maker_account, payload.maker_account]",
        r"names 'payload\.maker_account' twice",
    )


PROPAGATION = """\
    type: propagation
    mark: {type: crm_record_export, targets: payload.customer_ids, target_kind: device, for: 1d}
    trigger: {type: password_reset, group_by: customer}
"""


def test_propagation_target_kind_other_than_the_triggers_group_is_refused(tmp_path: Path) -> None:
    # Marks meet triggers under the triggers' group: the ids were taken as customers whatever
    # target_kind said, so a list of device ids marked the customers of those names.
    refused(
        tmp_path,
        PROPAGATION,
        "device, for",
        r"\.mark\.target_kind is 'device' but trigger\.group_by is 'customer'.*group the trigger by "
        r"device if the targets are device ids, or say target_kind: customer$",
    )
    assert errors_of(tmp_path, PROPAGATION.replace("target_kind: device", "target_kind: customer")) == []
    assert errors_of(tmp_path, PROPAGATION.replace(", target_kind: device", "")) == []


DEVIATION_SEEN_ALSO = """\
    type: deviation
    match: {type: withdrawal_request}
    group_by: customer
    measure: hour
    min_history: 0
    condition: {gte: 0}
    first_seen: payload.to_address
    seen_also:
      - {type: deposit, field: payload.from_address, group_by: wallet}
"""
SEQUENCE_SEEN_ALSO = """\
    type: sequence
    group_by: customer
    within: 1h
    steps:
      - type: login
        first_seen: device
        seen_also: [{type: payment, field: device, group_by: account}]
      - {type: withdrawal_request}
"""
LOOKALIKE_KNOWN = """\
    type: lookalike
    chars: 4
    known:
      - {type: withdrawal_sent, field: payload.to_address, group_by: customer}
    check:
      - {type: withdrawal_request, field: payload.to_address, group_by: customer}
"""


@pytest.mark.parametrize(
    ("rule", "at", "says"),
    [
        (
            DEVIATION_SEEN_ALSO,
            "group_by: wallet",
            r"'\.seen_also\[0\]\.group_by is ignored here \(its value joins the history of the group "
            r"the rule's own group_by gives the event\); leave it out$",
        ),
        (
            SEQUENCE_SEEN_ALSO,
            "group_by: account",
            r"'\.steps\[0\]\.seen_also\[0\]\.group_by is ignored here",
        ),
        (
            LOOKALIKE_KNOWN,
            "group_by: customer}\n    check",
            r"'\.known\[0\]\.group_by is ignored here \(a known address is known to every group\)",
        ),
    ],
)
def test_an_entrys_group_by_that_groups_nothing_is_warned_of(
    tmp_path: Path, rule: str, at: str, says: str
) -> None:
    # Accepted without a word and ignored: a seen_also deposit "grouped by wallet" still fed the
    # customer's history, a known address "grouped by customer" was known to every customer.  A
    # warning, not an error: earlier versions of rules/README.md listed it.
    (tmp_path / "r.yaml").write_text(HEAD + rule)
    checked = validate_paths([tmp_path])
    assert checked.errors == []
    assert len(checked.rules) == 1
    text = HEAD + rule
    before = text[: text.index(at)]
    line, column = before.count("\n") + 1, len(before) - before.rfind("\n")
    (warning,) = [str(i) for i in checked.issues if "group_by" in i.message]
    assert warning.startswith(f"{tmp_path / 'r.yaml'}:{line}:{column}: warning: rule 'rule-under-test'.")
    assert re.search(says, warning), warning


@pytest.mark.parametrize("condition", ["{lt: 1}", "{lte: 0}", "{eq: 0}"])
def test_a_distinct_count_that_never_holds_is_refused(tmp_path: Path, condition: str) -> None:
    # Asked at an event that has the field (one without it is not counted), a distinct count
    # is 1 at least.
    rule = (
        "    type: threshold\n    match: {type: failed_login}\n    group_by: ip\n    timespan: 10m\n"
        f"    aggregate: distinct\n    field: payload.username\n    condition: {condition}\n"
    )
    op, bound = condition.strip("{}").split(": ")
    says = (
        r"\.condition: a distinct count is a whole number of at least 1 when it is asked, "
        rf"so {op} {bound} never holds$"
    )
    refused(tmp_path, rule, condition, says)


# ------------------------------------------------------------------------ deviation histories

AMOUNT = """\
    type: deviation
    match: {type: withdrawal_request}
    group_by: customer
    measure: amount
    field: payload.amount_usd
    min_history: 3
    condition: {gte: 10}
"""


def _withdrawal(at: str, usd: float | None = None) -> str:
    amount = "" if usd is None else f", amount_usd: {usd}"
    return (
        f"      - {{type: withdrawal_request, at: {at}, customer: c1,"
        f" payload: {{withdrawal_id: w{at}, asset: ETH, amount: 1{amount}}}}}\n"
    )


def test_deviation_amount_history_counts_only_events_with_an_amount(tmp_path: Path) -> None:
    # Three withdrawals without a USD amount and one of $100 are a history of one amount, too
    # little (min_history 3) to call $5,000 ten times the customer's usual.
    unpriced = _withdrawal("0") + _withdrawal("1h") + _withdrawal("2h")
    assert run(tmp_path, AMOUNT, unpriced + _withdrawal("3h", 100) + _withdrawal("4h", 5000)) == []
    priced = _withdrawal("30m", 90) + _withdrawal("90m", 80) + _withdrawal("150m", 100)
    assert run(tmp_path, AMOUNT, unpriced + priced + _withdrawal("4h", 5000)) == ["c1"]


def _detector(tmp_path: Path, rule: str, events: str) -> tuple[Any, list[Any]]:
    v = validated(tmp_path, rule, events)
    (detector,) = RuleSet(v.rules, IntelIndex()).detectors
    return detector, v.cases[0].events


def test_deviation_amount_history_kept_before_amounts_were_counted_still_loads(tmp_path: Path) -> None:
    # A history written before amounts were counted apart has only its count of events.
    detector, events = _detector(tmp_path, AMOUNT, _withdrawal("3h", 1500) + _withdrawal("4h", 20000))
    state = MemoryState()
    state.set("h:customer:c1", {"n": 3, "max": 120.0, "last": 7200.0})
    hits: list[Hit] = []
    detector.process(events[0], state, hits)
    assert [h.context["baseline"] for h in hits] == ["120.00"]
    assert state.get("h:customer:c1")["a"] == 4
    state.set("h:customer:c1", {"n": 2, "max": 120.0, "last": 7200.0})
    hits.clear()
    detector.process(events[1], state, hits)
    assert hits == []  # two events before: too little history, as it was


NEW_IP = """\
    type: deviation
    match: {type: login}
    group_by: customer
    measure: new_value
    field: ip
    min_history: 1
    condition: {gte: 1}
"""


def _login(at: str, ip: str, event_id: str) -> str:
    return f"      - {{type: login, id: {event_id}, at: {at}, customer: c1, ip: {ip}}}\n"


def _alerted(tmp_path: Path, rule: str, events: str, *, arrival: bool = False) -> list[str]:
    """The ids of the events the rule alerted on (its last evidence)."""
    v = validated(tmp_path, rule, events)
    if arrival:
        alerts, _ = detect_events(RuleSet(v.rules, IntelIndex()), v.cases[0].events, batch_size=1)
    else:
        alerts = run_case(v.cases[0], v.rules).alerts
    return [a.payload.evidence[-1].event_id for a in alerts]


def test_deviation_new_value_is_judged_in_event_time(tmp_path: Path) -> None:
    # The first login from .9 is the one at 1h, whichever arrives first.  (Judged in arrival
    # order, the one at 1h arriving after the one at 2h was "not new".  The one at 2h, judged
    # when nothing earlier had arrived, alerts then, as first_seen's do.)
    logins = (
        _login("0", "192.0.2.1", "l0") + _login("2h", "192.0.2.9", "l2") + _login("1h", "192.0.2.9", "l1")
    )
    assert _alerted(tmp_path, NEW_IP, logins) == ["l1"]
    assert _alerted(tmp_path, NEW_IP, logins, arrival=True) == ["l2", "l1"]


def test_deviation_new_value_keeps_a_value_in_regular_use(tmp_path: Path) -> None:
    # The home IP every tenth day among 260 passing carrier IPs (more than a history keeps):
    # kept in arrival order, the home IP was pushed out and its next login was "new".
    lines = [_login("0", "192.0.2.1", "h0")]
    for day in range(1, 290):
        ip = "192.0.2.1" if day % 10 == 0 else f"10.{day // 250}.{day % 250}.1"
        lines.append(_login(f"{day}d", ip, f"x{day}"))
    assert "home" not in _alerted(tmp_path, NEW_IP, "".join(lines) + _login("300d", "192.0.2.1", "home"))
    assert "stale" in _alerted(tmp_path, NEW_IP, "".join(lines) + _login("300d", "10.0.1.1", "stale"))


def test_deviation_new_value_history_kept_as_a_list_still_loads(tmp_path: Path) -> None:
    # Written before values had times (a list, in arrival order, not case-folded): each counts
    # as seen long ago.
    rule = NEW_IP.replace("field: ip", "field: device")
    login = "      - {{type: login, at: 1h, customer: c1, device: {}}}\n"
    detector, events = _detector(tmp_path, rule, login.format("Pixel-7") + login.format("iPhone-15"))
    state = MemoryState()
    state.set("h:customer:c1", {"n": 2, "seen": ["Pixel-7", "Galaxy"], "last": 0.0})
    hits: list[Hit] = []
    detector.process(events[0], state, hits)
    assert hits == []
    detector.process(events[1], state, hits)
    assert [h.context["history_count"] for h in hits] == ["3"]
    assert state.get("h:customer:c1")["seen"] == {"pixel-7": 0.0, "galaxy": 0.0, "iphone-15": ts(events[1])}


# ------------------------------------------------------------------------- numbers in alerts


def test_small_amounts_read_to_their_significant_digits(tmp_path: Path) -> None:
    # To the cent, three deposits of 0.00012345 BTC read "totalling 0.00 BTC".
    rule = """\
    type: threshold
    match: {type: deposit, where: {payload.asset: BTC}}
    group_by: customer
    timespan: 1h
    aggregate: sum
    field: payload.amount
    condition: {gte: 0.0003}
"""
    deposits = "".join(
        f"      - {{type: deposit, at: {i}m, customer: c1, payload: {{deposit_id: d{i}, asset: BTC,"
        f" amount: 0.00012345}}}}\n"
        for i in range(3)
    )
    validated(tmp_path, rule, deposits)
    (tmp_path / "r.yaml").write_text(
        (tmp_path / "r.yaml").read_text().replace('"{entity}"', '"{count} deposits totalling {value} BTC"')
    )
    v = validate_paths([tmp_path])
    (alert,) = run_case(v.cases[0], v.rules).alerts
    assert alert.payload.explanation == "3 deposits totalling 0.00037035 BTC"
    assert [e.fields["amount"] for e in alert.payload.evidence] == ["0.00012345"] * 3


def test_decimal_text_keeps_cents_from_one_up_and_significant_digits_below() -> None:
    assert [decimal_text(v) for v in (3000.5, 1234567.891, 0.5, 0.30000000000000004, 1e-18)] == [
        "3000.50",
        "1234567.89",
        "0.50",
        "0.30",
        "0.000000000000000001",
    ]
    assert decimal_text(3000.5, grouped=True) == "3,000.50"


@pytest.mark.parametrize(("timespan", "reads"), [("30s", "30s"), ("90s", "90s"), ("2h", "2h")])
def test_linked_span_reads_as_the_rule_wrote_it(tmp_path: Path, timespan: str, reads: str) -> None:
    # In whole minutes, a 30s span read "within 0m".
    rule = f"""\
    type: linked
    links: {{type: login, party: account, attributes: [device]}}
    match: {{type: trade}}
    parties: [payload.maker_account, payload.taker_account]
    timespan: {timespan}
    condition: {{gte: 2}}
"""
    events = (
        "      - {type: login, at: 0, account: a1, device: dx}\n"
        "      - {type: login, at: 0, account: a2, device: dx}\n"
        + "".join(
            f"      - {{type: trade, at: {s}s, payload: {{trade_id: t{s}, symbol: S, price: 1, quantity: 1,"
            f" taker_side: buy, maker_account: a1, taker_account: a2}}}}\n"
            for s in (1, 2)
        )
    )
    validated(tmp_path, rule, events)
    (tmp_path / "r.yaml").write_text(
        (tmp_path / "r.yaml").read_text().replace('"{entity}"', '"{count} trades within {span}"')
    )
    v = validate_paths([tmp_path])
    (alert,) = run_case(v.cases[0], v.rules).alerts
    assert alert.payload.explanation == f"2 trades within {reads}"
