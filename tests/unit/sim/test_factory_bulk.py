"""The batched constructors build exactly what the one-at-a-time ones would."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import msgspec

from vigil.events.base import Entities
from vigil.sim.factory import Make, Trades, cents, stamps


def _awkward_times() -> list[float]:
    """Random times over a year, and fractions that sit on or next to a microsecond's half."""
    rng = random.Random(5)
    times = [1.7e9 + rng.random() * 400 * 86400 for _ in range(20_000)]
    for second in range(1_761_955_200, 1_761_955_200 + 3 * 86400, 977):
        for frac in (0.0, 0.5e-6, 1.5e-6, 2.5e-6, 0.4999995, 0.9999995, 0.99999949, 0.9999996):
            t = second + frac
            times += [math.nextafter(t, 0), t, math.nextafter(t, math.inf)]
    return times


def test_stamps_equal_fromtimestamp_to_the_microsecond() -> None:
    times = _awkward_times()
    got = stamps(times)
    want = [datetime.fromtimestamp(t, UTC) for t in times]
    assert got == want
    assert all(g.tzinfo is UTC for g in got)
    assert stamps([]) == []


def test_cents_equal_python_rounding() -> None:
    rng = random.Random(9)
    prices = [round(rng.uniform(0.001, 100_000), rng.choice((2, 6))) for _ in range(5_000)] + [0.125, 2.5]
    qtys = [rng.uniform(0, 5) for _ in range(5_000)] + [1.0, 1.0]
    assert cents(prices, qtys) == [round(p * q * 100) / 100 for p, q in zip(prices, qtys, strict=True)]


def test_batched_and_single_constructors_agree() -> None:
    ents = Entities(customer="c-1", account="a-1")
    ts = [1.762e9 + 0.1234567 * k for k in range(4)]
    one, many = Make(7, "bulk", 1.76e9), Make(7, "bulk", 1.76e9)
    for t in ts:
        one.order(t, ents, None, "ETH-BTC" if t == ts[1] else "BTC-USD", "buy", 95_000.5, 0.0123)
        one.trade(t, ents, "BTC-USD", 95_000.5, 0.0123, "sell", "a-2", "a-1")
        one.login(t, ents, None, "ua", mfa=False)
        one.logout(t, ents, "timeout")
    when = stamps(ts)
    for k, stamp in enumerate(when):
        many.orders([stamp], [ents], ["ETH-BTC" if k == 1 else "BTC-USD"], ["buy"], [95_000.5], [0.0123])
        many.trades(Trades([stamp], [ents], ["BTC-USD"], [95_000.5], [0.0123], ["sell"], ["a-2"], ["a-1"]))
        many.logins([stamp], [ents], [None], ["ua"], [False])
        many.logouts([stamp], [ents], ["timeout"])
    encode = msgspec.json.encode
    assert [encode(e) for e in many.out] == [encode(e) for e in one.out]
