"""Each scenario's episodes carry the signal a detector needs (and look-alikes carry the decoys)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from vigil.events.base import Event
from vigil.events.records import EpisodeLabel
from vigil.sim import Simulation
from vigil.sim.population import THIN_SYMBOL
from vigil.sim.scenarios.payments import REPORTING_THRESHOLD_USD


@pytest.fixture(scope="module")
def by_id(stream: list[Event]) -> dict[str, Event]:
    return {e.event_id: e for e in stream}


def _episodes(
    sim: Simulation, by_id: dict[str, Event], scenario: str
) -> list[tuple[EpisodeLabel, list[Any]]]:
    labels = [lb for lb in sim.labels + sim.lookalikes if lb.scenario == scenario]
    assert labels, scenario
    return [(lb, sorted((by_id[i] for i in lb.event_ids), key=lambda e: e.occurred_at)) for lb in labels]


def test_supply_chain_phishes_exactly_the_exported_customers(
    sim: Simulation, by_id: dict[str, Event]
) -> None:
    for label, events in _episodes(sim, by_id, "supply_chain_compromise"):
        export = next(e for e in events if e.type == "crm_record_export")
        campaign = next(e for e in events if e.type == "email_campaign_sent")
        token_uses = [e for e in events if e.type == "crm_api_token_used"]
        vendor = sim.population.vendors[label.entity.id]
        assert token_uses[0].entities.ip not in vendor.integration_ips
        assert set(export.payload.customer_ids) <= set(vendor.customer_ids)
        assert campaign.payload.recipient_customer_ids == export.payload.customer_ids
        assert export.occurred_at < campaign.occurred_at
        victims = label.params["victims"].split(",")
        assert victims
        assert set(victims) <= set(export.payload.customer_ids)
        nested = [lb for lb in sim.labels if lb.params.get("parent_episode") == label.episode_id]
        assert sorted(lb.entity.id for lb in nested) == sorted(victims)
        assert all(lb.scenario == "account_takeover" for lb in nested)


def test_insider_exports_at_night_and_the_lookalike_by_day(sim: Simulation, by_id: dict[str, Event]) -> None:
    employees = {e.id: e for e in sim.population.employees}
    for label, events in _episodes(sim, by_id, "insider_export"):
        emp = employees[label.entity.id]
        exports = [e for e in events if e.type == "crm_record_export"]
        assert sum(e.payload.record_count for e in exports) >= 200
        assert all(e.occurred_at.hour not in emp.work_hours for e in exports)
    for label, events in _episodes(sim, by_id, "benign:employee_report"):
        emp = employees[label.entity.id]
        assert all(e.occurred_at.hour in emp.work_hours for e in events)
        assert all(e.entities.ip == emp.ip for e in events)


def test_credential_stuffing_is_many_accounts_from_few_ips_mostly_failing(
    sim: Simulation, by_id: dict[str, Event]
) -> None:
    for label, events in _episodes(sim, by_id, "credential_stuffing"):
        ips = {e.entities.ip for e in events}
        failed = [e for e in events if e.type == "failed_login"]
        assert len(ips) <= 4
        assert len(failed) / len(events) > 0.9
        assert len({e.entities.customer for e in failed if e.entities.customer}) > 50
        assert label.entity.id in ips


def test_api_key_abuse_withdraws_through_a_new_key_from_a_new_ip(
    sim: Simulation, by_id: dict[str, Event]
) -> None:
    variants = set()
    for label, events in _episodes(sim, by_id, "api_key_abuse"):
        created = next(e for e in events if e.type == "api_key_created")
        assert "withdraw" in created.payload.permissions
        req = next(e for e in events if e.type == "withdrawal_request")
        assert req.payload.channel == "api"
        assert req.entities.api_key == created.payload.key_id
        assert req.entities.ip not in sim.population.customer(label.entity.id).ips
        # The address is added after the key is made: through the key (from the IP it withdraws
        # from), or in the hijacked session that made it (its IP, no key).
        added = next(e for e in events if e.type == "withdrawal_address_added")
        assert created.occurred_at < added.occurred_at < req.occurred_at
        assert added.payload.address == req.payload.to_address
        variant = label.params["variant"]
        variants.add(variant)
        if variant == "key_adds_address":
            assert (added.entities.api_key, added.entities.ip) == (created.payload.key_id, req.entities.ip)
        else:
            assert variant == "session_adds_address"
            assert (added.entities.api_key, added.entities.ip) == (None, created.entities.ip)
    assert variants == {"key_adds_address", "session_adds_address"}


def test_card_testing_and_structuring_shapes(sim: Simulation, by_id: dict[str, Event]) -> None:
    for _, events in _episodes(sim, by_id, "card_testing"):
        assert len(events) >= 25
        assert all(e.payload.amount <= 2.0 for e in events)
        assert len({e.payload.card_fingerprint for e in events}) == len(events)
        assert sum(e.payload.status == "declined" for e in events) > len(events) / 2
    for _, events in _episodes(sim, by_id, "structuring"):
        moves = [e for e in events if e.type in ("deposit", "withdrawal_request")]
        assert len(moves) >= 4
        assert all(0.9 * REPORTING_THRESHOLD_USD <= e.payload.amount < REPORTING_THRESHOLD_USD for e in moves)


def test_money_mule_passes_funds_through_within_minutes(sim: Simulation, by_id: dict[str, Event]) -> None:
    for label, events in _episodes(sim, by_id, "money_mule"):
        deposits = [e for e in events if e.type == "deposit"]
        req = next(e for e in events if e.type == "withdrawal_request")
        assert len({d.payload.from_address for d in deposits}) == len(deposits) >= 3
        assert req.occurred_at - deposits[-1].occurred_at <= timedelta(minutes=30)
        assert req.payload.amount >= 0.9 * sum(d.payload.amount for d in deposits)
        assert label.funds_leave_at is not None


def test_market_abuse_shapes(sim: Simulation, by_id: dict[str, Event]) -> None:
    for label, events in _episodes(sim, by_id, "wash_trading"):
        trades = [e for e in events if e.type == "trade"]
        accounts = {label.entity.id} | {r.id for r in label.related if r.kind == "account"}
        assert all({t.payload.maker_account, t.payload.taker_account} <= accounts for t in trades)
        assert len({e.entities.device for e in events}) == 1
    for _, events in _episodes(sim, by_id, "spoofing"):
        cancels = [e for e in events if e.type == "order_cancel"]
        assert cancels
        for c in cancels:
            assert c.occurred_at - c.payload.placed_at < timedelta(seconds=5)
            assert c.payload.remaining_quantity * c.payload.price > 100_000
    for _, events in _episodes(sim, by_id, "pump_and_dump"):
        trades = [e for e in events if e.type == "trade"]
        assert {t.payload.symbol for t in trades} == {THIN_SYMBOL}
        assert max(t.payload.price for t in trades) > 1.3 * trades[0].payload.price
    for _, events in _episodes(sim, by_id, "benign:market_maker"):
        orders = [e for e in events if e.type == "order"]
        assert {o.payload.side for o in orders} == {"buy", "sell"}
        assert max(o.payload.price * o.payload.quantity for o in orders) < 5_000


def _benign_prices(stream: list[Event], episode_ids: set[str]) -> dict[str, list[tuple[float, float]]]:
    """Benign trades' (time, price) by symbol, in time order."""
    out: dict[str, list[tuple[float, float]]] = {}
    for e in stream:
        if e.type == "trade" and e.event_id not in episode_ids:
            p: Any = e.payload
            out.setdefault(p.symbol, []).append((e.occurred_at.timestamp(), p.price))
    return out


def _market_near(prices: list[tuple[float, float]], ts: float) -> float:
    """The median benign trade price within ten minutes of ``ts``."""
    near = sorted(p for t, p in prices if abs(t - ts) <= 600)
    assert near, "benign trades of the symbol near the episode"
    return near[len(near) // 2]


def test_episodes_trade_at_the_market_benign_traffic_quotes(
    sim: Simulation, stream: list[Event], by_id: dict[str, Event]
) -> None:
    # Prices drift through a day; an episode quoting the day's opening price hours later would
    # stand out from the market by price alone (several percent), which no real one does.
    episode_ids = {i for lb in sim.labels + sim.lookalikes for i in lb.event_ids}
    benign = _benign_prices(stream, episode_ids)
    checked = 0
    for scenario in ("wash_trading", "spoofing", "benign:market_maker"):
        for _, events in _episodes(sim, by_id, scenario):
            for e in events:
                if e.type not in ("order", "trade"):
                    continue
                market = _market_near(benign[e.payload.symbol], e.occurred_at.timestamp())
                assert abs(e.payload.price / market - 1) < 0.006, (scenario, e.payload, market)
                checked += 1
    assert checked > 100
    # A spoof rests behind the market, on its own side: it must not fill.
    for _, events in _episodes(sim, by_id, "spoofing"):
        for c in (e for e in events if e.type == "order_cancel"):
            market = sim.market.price(c.payload.symbol, c.payload.placed_at.timestamp())
            assert (c.payload.price < market) if c.payload.side == "buy" else (c.payload.price > market)


def test_the_pump_organiser_never_sells_more_than_it_bought(sim: Simulation, by_id: dict[str, Event]) -> None:
    for label, events in _episodes(sim, by_id, "pump_and_dump"):
        org = label.entity.id
        bought = sold = 0.0
        for t in (e for e in events if e.type == "trade"):
            p = t.payload
            taker, maker = p.taker_account, p.maker_account
            buyer, seller = (taker, maker) if p.taker_side == "buy" else (maker, taker)
            assert buyer != seller
            bought += p.quantity if buyer == org else 0.0
            sold += p.quantity if seller == org else 0.0
            assert sold <= bought + 1e-6, "sold what it did not hold"
        assert sold == pytest.approx(bought), "and sold it all by the end"


def test_benign_trades_never_match_an_account_with_itself(stream: list[Event]) -> None:
    trades = [e for e in stream if e.type == "trade" and e.payload.maker_account is not None]
    assert len(trades) > 1000
    assert all(e.payload.maker_account != e.payload.taker_account for e in trades)


def test_benign_newsletter_clicks_come_from_its_recipients(sim: Simulation, stream: list[Event]) -> None:
    episode_ids = {i for lb in sim.labels + sim.lookalikes for i in lb.event_ids}
    sent: dict[str, set[str]] = {}
    clicks = 0
    for e in stream:
        if e.event_id in episode_ids:
            continue
        if e.type == "email_campaign_sent":
            sent[e.payload.campaign_id] = set(e.payload.recipient_customer_ids)
        elif e.type == "email_link_clicked":
            assert e.entities.customer in sent[e.payload.campaign_id]
            clicks += 1
    assert clicks > 50


def test_hot_wallet_drain_moves_funds_without_withdrawals(sim: Simulation, by_id: dict[str, Event]) -> None:
    hot = sim.population.hot_wallets["ethereum"]
    for label, events in _episodes(sim, by_id, "hot_wallet_drain"):
        assert label.entity.id == hot
        drains = [e for e in events if e.type == "chain_transfer" and e.payload.from_address == hot]
        assert len(drains) >= 3
        assert not [e for e in events if e.type.startswith("withdrawal")]
        assert events[0].type == "security_event"
    for _, events in _episodes(sim, by_id, "benign:cold_storage_sweep"):
        sweeps = [e for e in events if e.type == "chain_transfer"]
        assert {e.payload.to_address for e in sweeps} == {sim.population.cold_wallets["ethereum"]}


def test_mixer_and_loyalty_shapes(sim: Simulation, by_id: dict[str, Event]) -> None:
    mixers = set(sim.population.counterparties.mixers)
    variants = set()
    for label, events in _episodes(sim, by_id, "mixer_laundering"):
        deposits = [e for e in events if e.type == "deposit"]
        senders = {d.payload.from_address for d in deposits}
        assert all(d.payload.amount in (0.1, 1.0, 10.0) for d in deposits)
        assert sorted(senders) == sorted(label.params["senders"].split(","))
        assert senders <= {r.id for r in label.related if r.kind == "counterparty"}
        variant = label.params["variant"]
        variants.add(variant)
        if variant == "one_address":
            assert senders == {label.params["mixer"]}
        elif variant == "pool_per_size":
            # One listed pool address per denomination.
            assert senders <= mixers
            assert len(senders) == len({d.payload.amount for d in deposits})
        else:
            # Relayers: a fresh address for each payout.
            assert variant == "relayers"
            assert not senders & mixers
            assert len(senders) == len(deposits)
        hops = [e for e in events if e.type == "chain_transfer" and e.payload.from_address not in senders]
        assert int(label.params["peel_hops"]) >= 3
        assert len(hops) >= 2 * 3
    assert {"one_address", "relayers"} <= variants
    for label, events in _episodes(sim, by_id, "loyalty_theft"):
        login = events[0]
        assert login.type == "login"
        assert login.entities.device not in sim.population.customer(label.entity.id).devices
        assert sum(e.payload.points for e in events if e.type == "loyalty_redemption") >= 3000


def test_lookalike_traveller_and_defi(sim: Simulation, by_id: dict[str, Event]) -> None:
    for label, events in _episodes(sim, by_id, "benign:traveller"):
        cust = sim.population.customer(label.entity.id)
        login = events[0]
        assert login.payload.geo.country != cust.country
        assert login.entities.device in cust.devices
        assert not {"password_reset", "mfa_change", "withdrawal_address_added"} & {e.type for e in events}
    spenders = set(sim.population.counterparties.defi_spenders.values())
    for _, events in _episodes(sim, by_id, "benign:defi_approval"):
        approval = next(e for e in events if e.type == "token_approval")
        assert approval.payload.unlimited
        assert approval.payload.spender in spenders
