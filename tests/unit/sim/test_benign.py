"""Benign life has rhythm and heavy tails: daily cycle, weekend dip, a few very active customers."""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from vigil.events.base import Event
from vigil.sim import SimConfig, Simulation


@pytest.fixture(scope="module")
def week() -> list[Event]:
    # 2026-11-02 is a Monday: five weekdays then a weekend.
    cfg = SimConfig(
        seed=4,
        customers=300,
        events=40_000,
        duration=timedelta(days=7),
        start=datetime(2026, 11, 2, tzinfo=UTC),
        attack_rate=0.0,
        lookalikes=False,
    )
    return list(Simulation(cfg).canonical())


def test_daily_cycle(week: list[Event]) -> None:
    by_hour = Counter(e.occurred_at.hour for e in week)
    assert max(by_hour.values()) > 2 * min(by_hour.values())


def test_weekend_dip(week: list[Event]) -> None:
    by_day = Counter(e.occurred_at.weekday() for e in week if e.source == "backend")
    weekday = sum(by_day[d] for d in range(5)) / 5
    weekend = (by_day[5] + by_day[6]) / 2
    assert weekend < 0.9 * weekday


def test_heavy_tailed_customers(week: list[Event]) -> None:
    per_customer = Counter(e.entities.customer for e in week if e.entities.customer)
    counts = sorted(per_customer.values(), reverse=True)
    top = counts[: max(1, len(counts) // 10)]
    assert sum(top) > 0.35 * sum(counts)


def test_native_stream_is_deterministic() -> None:
    def digest() -> str:
        sim = Simulation(SimConfig(seed=9, customers=50, events=3_000))
        h = hashlib.sha256()
        for topic, rec in sim.native():
            h.update(topic.encode() + rec.kind.encode() + rec.value + (rec.key or b""))
        return h.hexdigest()

    assert digest() == digest()
