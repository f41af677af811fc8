"""A sequence keeps, per step, a chain for each set of values later steps compare against.

With one chain a step (the latest begun), a second withdrawal address added after the real
one replaced it: the withdrawal to the first compared against the decoy, and the drain went
through without an alert or a hold.
"""

from __future__ import annotations

from pathlib import Path

from tests.unit.detect.test_arrival_order import ADDRESS_FIRST, _added, _alerted, _both, _out, _reset
from tests.unit.detect.test_kinds import added, out, run, validated

from vigil.detect.engine import RuleSet, detect_events
from vigil.detect.intel import IntelIndex
from vigil.detect.kinds import sequence
from vigil.detect.rules.validate import validate_paths
from vigil.testing import MemoryState

ROOT = Path(__file__).resolve().parents[3]
X, Y = "0x" + "a" * 40, "0x" + "b" * 40
RESET_ADD_WITHDRAW = """\
    type: sequence
    group_by: customer
    within: 2h
    steps:
      - {name: reset, type: password_reset}
      - {name: new_address, type: withdrawal_address_added}
      - name: withdrawal
        type: withdrawal_request
        same_as: {payload.to_address: new_address.payload.address}
"""


RESET = "      - {type: password_reset, at: 0, customer: c1}\n"


def test_a_decoy_address_added_after_the_real_one_does_not_hide_the_withdrawal(tmp_path: Path) -> None:
    events = RESET + added("5m", X) + added("10m", Y) + out("15m", X)
    assert run(tmp_path, RESET_ADD_WITHDRAW, events) == ["c1"]
    assert run(tmp_path, RESET_ADD_WITHDRAW, events, arrival=True) == ["c1"]
    # To the decoy too; to neither, nothing.
    assert run(
        tmp_path,
        RESET_ADD_WITHDRAW,
        RESET + added("5m", X) + added("10m", Y) + out("15m", Y),
    ) == ["c1"]
    other = "0x" + "c" * 40
    assert (
        run(
            tmp_path,
            RESET_ADD_WITHDRAW,
            RESET + added("5m", X) + added("10m", Y) + out("15m", other),
        )
        == []
    )


def test_one_attack_is_one_alert_and_repeat_holds_each_withdrawal_to_either_address(tmp_path: Path) -> None:
    events = RESET + added("5m", X) + added("10m", Y) + out("15m", X) + out("20m", Y)
    # Without repeat, the completion uses up the chains begun by then: one alert.
    assert run(tmp_path, RESET_ADD_WITHDRAW, events) == ["c1"]
    # With it, the second withdrawal (to the other address added) is held too.
    assert run(tmp_path, RESET_ADD_WITHDRAW + "    repeat: true\n", events) == ["c1", "c1"]


def test_a_step_without_links_takes_on_every_chain_before_it(tmp_path: Path) -> None:
    # Address, address, reset, withdrawal to the first: the reset is a step of both chains.
    rule = ADDRESS_FIRST
    rules = validated(tmp_path, rule, RESET).rules
    arrival = [_added(1, X), _added(2, Y), _reset(4), _out(40, X)]
    assert _both(rules, arrival) == ([["a1", "r4", "w40"]], [["a1", "r4", "w40"]])
    # Without a link, one chain a step as before: the latest begun.
    linkless = rule.replace("        same_as: {payload.to_address: new_address.payload.address}\n", "")
    rules = validated(tmp_path, linkless, RESET).rules
    assert _alerted(rules, arrival) == [["a2", "r4", "w40"]]


def test_shipped_rules_are_not_hidden_by_a_decoy() -> None:
    checked = validate_paths([ROOT / "rules"])
    assert not checked.errors
    wanted = {"security-change-new-address", "loyalty-from-new-device"}
    rules = [r for r in checked.rules if r.id in wanted]
    assert {r.id for r in rules} == wanted
    decoy = [_reset(0), _added(5, X), _added(10, Y), _out(15, X)]
    alerts, _ = detect_events(RuleSet(rules, IntelIndex()), decoy, batch_size=1)
    assert [a.payload.rule_id for a in alerts] == ["security-change-new-address"]


def test_a_late_withdrawal_does_not_report_a_chain_begun_by_the_same_event_twice(tmp_path: Path) -> None:
    rule = """\
    type: sequence
    group_by: customer
    within: 1h
    steps:
      - {name: a, type: password_reset}
      - {name: b, type: withdrawal_address_added}
      - {name: c, type: withdrawal_request}
"""
    rules = validated(tmp_path, rule, RESET).rules
    # In event time a1 -> b1 -> c1 is the chain; c2 (later) arrived before c1 and was reported
    # with a1 and b1: c1 arriving completes the same chain (same first event) again.
    arrival = [_reset(0), _added(1, X), _out(5, X), _out(3, X), _added(4, X), _reset(2)]
    assert _alerted(rules, arrival) == [["r0", "a1", "w5"]]


def test_chains_kept_in_state_before_they_were_kept_apart_still_complete(tmp_path: Path) -> None:
    # State written before held one chain (or None) a step, not a list of them.
    v = validated(tmp_path, RESET_ADD_WITHDRAW, RESET + added("5m", X) + out("15m", X))
    (det,) = RuleSet(v.rules, IntelIndex()).detectors
    state, hits = MemoryState(), []
    reset, address, withdrawal = v.cases[0].events
    det.process(reset, state, hits)
    det.process(address, state, hits)
    ((key, st),) = state.items()
    st["p"] = [chains[-1] if chains else None for chains in st["p"]]
    assert isinstance(st["p"][0][0], float)  # one chain a step, as kept then
    state.set(key, st)
    det.process(withdrawal, state, hits)
    assert [[e[0] for e in h.evidence] for h in hits] == [
        [reset.event_id, address.event_id, withdrawal.event_id]
    ]


def test_a_step_keeps_at_most_max_chains(tmp_path: Path) -> None:
    addresses = [f"0x{n:040x}" for n in range(sequence.MAX_CHAINS + 3)]
    events = RESET + "".join(added(f"{n + 1}s", a) for n, a in enumerate(addresses))
    v = validated(tmp_path, RESET_ADD_WITHDRAW, events)
    (det,) = RuleSet(v.rules, IntelIndex()).detectors
    state, hits = MemoryState(), []
    for event in v.cases[0].events:
        det.process(event, state, hits)
    ((_, st),) = state.items()
    kept = [c[2]["new_address"]["payload.address"] for c in st["p"][1]]
    assert len(kept) == sequence.MAX_CHAINS
    assert kept == addresses[3:]  # the least recently advanced went
