"""A linked rule counts a redelivered match once, as threshold and sequence rules do.

Under at-least-once delivery a source may send the same trade again (the same event id, so the
same time): counted each time, one trade delivered three times was a pair's three trades, and
``wash-trading-linked`` fired on it, whether the copies came after the login linking the
accounts (counted at once) or before it (held until the login)."""

from __future__ import annotations

from pathlib import Path

from tests.unit.detect.test_kinds import WASH, validated

from vigil.detect.engine import RuleSet, detect_events
from vigil.detect.intel import IntelIndex

LOGIN_A1 = "      - {type: login, at: 0, customer: c1, account: a1, device: dev-x}\n"
LOGIN_A2 = "      - {type: login, at: 10s, customer: c2, account: a2, device: dev-x}\n"


def _trade(event_id: str, at: str, maker: str = "a1", taker: str = "a2") -> str:
    return (
        f"      - {{type: trade, id: {event_id}, at: {at}, account: {taker}, payload: {{trade_id: {event_id},"
        f" symbol: SOL-USD, price: 150, quantity: 33, taker_side: buy, maker_account: {maker},"
        f" taker_account: {taker}}}}}\n"
    )


T1, T2, T3 = _trade("T1", "1m"), _trade("T2", "2m", "a2", "a1"), _trade("T3", "3m")


def _evidence(tmp_path: Path, events: str, *, arrival: bool) -> list[list[str]]:
    """Each alert's evidence (event ids); ``arrival``: one batch per event, in the order listed."""
    v = validated(tmp_path, WASH, events)
    alerts, _ = detect_events(
        RuleSet(v.rules, IntelIndex()), v.cases[0].events, batch_size=1 if arrival else 500
    )
    return [[e.event_id for e in a.payload.evidence] for a in alerts]


def test_one_trade_delivered_three_times_after_the_link_is_one_trade(tmp_path: Path) -> None:
    linked = LOGIN_A1 + LOGIN_A2
    for arrival in (False, True):
        assert _evidence(tmp_path, linked + T1 * 3, arrival=arrival) == []
        assert _evidence(tmp_path, linked + T1 + T2 + T1 + T2, arrival=arrival) == []
        # Two distinct trades and a copy of one: two, not three.
        assert _evidence(tmp_path, linked + T1 * 2 + T3, arrival=arrival) == []
        # Three distinct trades, some sent twice: one alert, each trade once in its evidence.
        assert _evidence(tmp_path, linked + T1 * 2 + T2 + T2 + T3 + T3, arrival=arrival) == [
            ["T1", "T2", "T3"]
        ]


def test_one_trade_delivered_three_times_before_the_link_is_one_trade(tmp_path: Path) -> None:
    # The copies arrive before a2's login (another topic): held, then counted once at the login.
    assert _evidence(tmp_path, LOGIN_A1 + T1 * 3 + LOGIN_A2, arrival=True) == []
    assert _evidence(tmp_path, T1 * 3 + LOGIN_A2 + LOGIN_A1, arrival=True) == []
    assert _evidence(tmp_path, LOGIN_A1 + T1 + T2 + T1 + T2 + LOGIN_A2, arrival=True) == []
    # Distinct trades held still alert, each once.
    assert _evidence(tmp_path, LOGIN_A1 + T1 + T1 + T2 + T3 + T3 + LOGIN_A2, arrival=True) == [
        ["T1", "T2", "T3"]
    ]
    assert _evidence(tmp_path, T1 + T2 + T3 + LOGIN_A2 + LOGIN_A1, arrival=True) == [["T1", "T2", "T3"]]


def test_a_copy_arriving_after_its_held_trade_was_counted_is_not_counted_again(tmp_path: Path) -> None:
    # T1 and T2 held, counted at the login; their copies then take the direct path.
    held_then_copies = LOGIN_A1 + T1 + T2 + LOGIN_A2 + T1 + T2
    assert _evidence(tmp_path, held_then_copies, arrival=True) == []
    assert _evidence(tmp_path, held_then_copies + T3, arrival=True) == [["T1", "T2", "T3"]]
    # Held copies of a trade the login then counts, and a later copy of it: still one trade.
    assert _evidence(tmp_path, LOGIN_A1 + T1 + T1 + LOGIN_A2 + T1 + T2, arrival=True) == []


def test_distinct_trades_at_the_same_time_each_count(tmp_path: Path) -> None:
    # A redelivery is the same id at the same time: three trades in one second are three.
    same_second = _trade("T1", "1m") + _trade("T2", "1m", "a2", "a1") + _trade("T3", "1m")
    for arrival in (False, True):
        found = _evidence(tmp_path, LOGIN_A1 + LOGIN_A2 + same_second, arrival=arrival)
        assert [sorted(e) for e in found] == [["T1", "T2", "T3"]]
    found = _evidence(tmp_path, LOGIN_A1 + same_second + LOGIN_A2, arrival=True)
    assert [sorted(e) for e in found] == [["T1", "T2", "T3"]]


def test_copies_of_a_held_trade_do_not_push_the_other_held_trades_out(tmp_path: Path) -> None:
    # A party holds its last 16 matches: sixteen copies of T3 held as sixteen matches left
    # only T3 to count when the login came.
    storm = LOGIN_A1 + T1 + T2 + T3 * 16 + LOGIN_A2
    assert _evidence(tmp_path, storm, arrival=True) == [["T1", "T2", "T3"]]
