"""Benign life has rhythm and heavy tails: daily cycle, weekend dip, a few very active customers."""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

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


# ---------------------------------------------------------------------- base rates
# Benign traffic shows what the rules look for in attacks, at the rates a real exchange sees
# them (sim/benign.py's base rates): otherwise a false-positive rate measured on it means
# little.  Ranges, not counts: the draws may change, the rates should not.


@pytest.fixture(scope="module")
def day() -> Simulation:
    cfg = SimConfig(seed=5, customers=1000, events=120_000, attack_rate=0.0, lookalikes=False)
    return Simulation(cfg)


@pytest.fixture(scope="module")
def day_events(day: Simulation) -> list[Any]:
    # Events of every kind: each test reads the payload fields of the kinds it picks.
    return list(day.canonical())


def _share(part: int, whole: int) -> float:
    assert whole > 0
    return part / whole


def test_logins_from_new_devices_other_ips_and_countries(day: Simulation, day_events: list[Any]) -> None:
    pop = day.population
    logins = [e for e in day_events if e.type == "login"]
    own = [(e, pop.by_id[e.entities.customer]) for e in logins if e.entities.customer]
    new_device = [(e, c) for e, c in own if e.entities.device not in c.devices]
    other_ip = [e for e, c in own if e.entities.ip not in c.ips]
    abroad = [e for e, c in own if e.payload.geo is not None and e.payload.geo.country != c.country]
    assert 0.005 < _share(len(new_device), len(own)) < 0.08
    assert 0.05 < _share(len(other_ip), len(own)) < 0.4
    assert 0.003 < _share(len(abroad), len(own)) < 0.06
    # A device's first login mostly passes a second factor; a few (no 2FA enrolled) do not.
    first: dict[str, Any] = {}
    for e, _ in new_device:
        first.setdefault(e.entities.device or "", e)
    with_mfa = sum(1 for e in first.values() if e.payload.mfa_used)
    assert 0.7 < _share(with_mfa, len(first)) < 1.0


def test_ips_and_devices_shared_between_customers(day: Simulation, day_events: list[Any]) -> None:
    owners: dict[str, set[str]] = {}
    for e in day_events:
        if e.type == "login" and e.entities.customer:
            owners.setdefault(e.entities.ip or "", set()).add(e.entities.customer)
    shared = [ip for ip, who in owners.items() if len(who) > 1]
    # Households behind one router, and mobile carriers' CGNAT (many customers per IP).
    assert len(shared) > 20
    assert max(len(owners[ip]) for ip in shared) > 5
    # A few household members share a device too (whether a day's logins show it is chance).
    holders: dict[str, set[str]] = {}
    for c in day.population.customers:
        for device in c.devices:
            holders.setdefault(device, set()).add(c.id)
    assert any(len(who) > 1 for who in holders.values())


def test_account_changes_and_mfa_denials(day_events: list[Any]) -> None:
    kinds = Counter(e.type for e in day_events)
    assert 1 <= kinds["email_change"] < 30
    assert 2 <= kinds["mfa_change"] < 60
    results = Counter(e.payload.result for e in day_events if e.type == "mfa_challenge")
    assert 0.002 < _share(results["denied"], sum(results.values())) < 0.03


def test_new_withdrawal_addresses_are_added_and_used(day: Simulation, day_events: list[Any]) -> None:
    pop = day.population
    added = [e for e in day_events if e.type == "withdrawal_address_added"]
    fresh = {
        (e.entities.customer, e.payload.address)
        for e in added
        if e.payload.address not in pop.by_id[e.entities.customer or ""].address_book
    }
    assert 0.4 < _share(len(fresh), len(added)) < 0.9
    crypto = [e for e in day_events if e.type == "withdrawal_request" and e.payload.to_address]
    unknown = [
        e
        for e in crypto
        if e.payload.to_address not in pop.by_id[e.entities.customer or ""].address_book
        and e.payload.to_address not in pop.by_id[e.entities.customer or ""].btc_address_book
    ]
    assert 0.01 < _share(len(unknown), len(crypto)) < 0.2
    # Some of the new addresses are withdrawn to the same day.
    assert any((e.entities.customer, e.payload.to_address) in fresh for e in unknown)
    # Requests carry where they were made from, as the attacks' do: device and IP from the
    # app, API key and server IP from a bot.
    placed = [e for e in crypto if e.entities.ip and (e.entities.device or e.entities.api_key)]
    assert _share(len(placed), len(crypto)) > 0.95


def test_withdraw_capable_api_keys_used_from_a_server(day_events: list[Any]) -> None:
    created = {
        e.payload.key_id: e
        for e in day_events
        if e.type == "api_key_created" and "withdraw" in e.payload.permissions
    }
    assert created
    shares = Counter(tuple(e.payload.permissions) for e in day_events if e.type == "api_key_created")
    assert _share(sum(n for p, n in shares.items() if "withdraw" in p), sum(shares.values())) < 0.25
    used = [
        e
        for e in day_events
        if e.type == "withdrawal_request" and e.entities.api_key in created and e.payload.channel == "api"
    ]
    assert used
    assert all(e.entities.ip != created[e.entities.api_key or ""].entities.ip for e in used)


def test_failure_and_decline_reasons_are_a_mix(day_events: list[Any]) -> None:
    failed = Counter(e.payload.reason for e in day_events if e.type == "failed_login")
    assert 0.6 < _share(failed["bad_password"], sum(failed.values())) < 0.85
    assert len(failed) >= 4
    declined = Counter(
        e.payload.decline_reason for e in day_events if e.type == "payment" and e.payload.status == "declined"
    )
    assert 0.2 < _share(declined["insufficient_funds"], sum(declined.values())) < 0.65
    assert len(declined) >= 4
    assert None not in declined


def test_orders_types_and_entities(day_events: list[Any]) -> None:
    orders = [e for e in day_events if e.type == "order"]
    types = Counter(e.payload.order_type for e in orders)
    assert 0.6 < _share(types["limit"], len(orders)) < 0.85
    assert types["market"] > 0
    assert types["stop"] > 0
    with_device = sum(1 for e in orders if e.entities.device and e.entities.ip)
    assert _share(with_device, len(orders)) > 0.5
    # Volumes per kind stay as they were before market orders: half cancelled, 4 in 10 filled.
    kinds = Counter(e.type for e in day_events)
    assert 0.4 < _share(kinds["order_cancel"], kinds["order"]) < 0.6


def test_round_eth_deposits_and_large_redemptions(day_events: list[Any]) -> None:
    eth = [e.payload.amount for e in day_events if e.type == "deposit" and e.payload.asset == "ETH"]
    pools = sum(1 for a in eth if a in (0.1, 1.0, 10.0, 100.0))
    assert 0.01 < _share(pools, len(eth)) < 0.1
    points = [e.payload.points for e in day_events if e.type == "loyalty_redemption"]
    assert 0.05 < _share(sum(1 for p in points if p >= 3000), len(points)) < 0.4
    assert max(points) <= 10_000


def test_activity_tail_is_capped(day_events: list[Any]) -> None:
    per_customer = Counter(e.entities.customer for e in day_events if e.entities.customer)
    logins = Counter(e.entities.customer for e in day_events if e.type == "login" and e.entities.customer)
    mean = sum(per_customer.values()) / len(per_customer)
    # A busy retail customer makes a few hundred events a day, not thousands.
    assert max(per_customer.values()) < 10 * mean
    assert max(logins.values()) < 150
