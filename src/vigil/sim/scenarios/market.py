"""Market abuse: wash trading, spoofing, pump-and-dump of a thin market."""

from __future__ import annotations

from vigil.events.base import Entities
from vigil.events.records import EpisodeLabel
from vigil.sim.population import THIN_SYMBOL, hex_id
from vigil.sim.scenarios.base import Episode, Scenario, ref


class WashTrading(Scenario):
    """Linked accounts (one device) trading the same size back and forth at the same price."""

    name = "wash_trading"
    entity_kind = "account"
    per_day = 1.5
    length = 3600.0
    defaults = {"min_accounts": 2, "max_accounts": 3, "min_trades": 20, "max_trades": 59, "trade_usd": 5000.0}

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        picked = [ep.world.pick_customer(rng) for _ in range(self.draw(rng, "accounts"))]
        # Distinct accounts (a small population hands customers out again), at least two.
        accts = list({c.id: c for c in picked}.values())
        if len(accts) < 2:
            accts.append(next(c for c in ep.pop.customers if c.id != accts[0].id))
        device = f"dev-{hex_id(rng, 10)}"
        ip = accts[0].ips[0]
        ents = [Entities(customer=c.id, account=c.account, device=device, ip=ip) for c in accts]
        t = ep.t0
        for c, e in zip(accts, ents, strict=True):
            m.login(t, e, c.geo, c.user_agent)
            t += 5 + rng.random() * 30
        sym = rng.choice(("SOL-USD", "ETH-USD"))
        market = ep.world.market
        qty = round(self.amount("trade_usd") / market.price(sym, t), 4)
        for i in range(self.draw(rng, "trades")):
            # At the market price, so that the prints do not stand out by price.
            price = market.price(sym, t)
            s, b = i % len(accts), (i + 1) % len(accts)
            m.order(t, ents[s], None, sym, "sell", price, qty)
            t += 0.2 + rng.random()
            m.order(t, ents[b], None, sym, "buy", price, qty)
            m.trade(t, ents[b], sym, price, qty, "buy", accts[s].account, accts[b].account)
            t += 20 + rng.random() * 90
        return [
            ep.label(
                ref("account", accts[0].account),
                related=[ref("account", c.account) for c in accts[1:]] + [ref("device", device)],
                params={"symbol": sym, "accounts": str(len(accts))},
            )
        ]


class Spoofing(Scenario):
    """Large orders on one side cancelled within seconds while small orders fill on the other."""

    name = "spoofing"
    entity_kind = "account"
    per_day = 1.5
    length = 1800.0
    defaults = {"spoof_usd": 400_000.0, "min_rounds": 10, "max_rounds": 29}

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        c = ep.world.pick_customer(rng)
        e = c.money_entities
        sym = rng.choice(("BTC-USD", "ETH-USD"))
        market = ep.world.market
        spoof_side, real_side = ("buy", "sell") if rng.random() < 0.5 else ("sell", "buy")
        t = ep.t0
        big = round(self.amount("spoof_usd") / market.price(sym, t), 4)
        rounds = self.draw(rng, "rounds")
        for _ in range(rounds):
            # The spoof rests just behind the market (it must not fill); the real order takes it.
            price = market.price(sym, t)
            px = round(price * (0.999 if spoof_side == "buy" else 1.001), 2)
            o = m.order(t, e, None, sym, spoof_side, px, big)
            oid = o.payload.order_id
            t_cancel = t + 0.5 + rng.random() * 4
            small = round(2_000 / price, 5)
            m.order(t + 0.2, e, None, sym, real_side, price, small)
            other = rng.choice(ep.pop.customers)
            m.trade(t + 0.3, e, sym, price, small, real_side, other.account, c.account)
            m.cancel(t_cancel, e, oid, sym, spoof_side, px, big, t)
            t = t_cancel + 20 + rng.random() * 60
        return [
            ep.label(
                ref("account", c.account),
                related=[ref("customer", c.id)],
                params={"symbol": sym, "rounds": str(rounds), "spoof_side": spoof_side},
            )
        ]


class PumpAndDump(Scenario):
    """Quiet accumulation of a thin market, then a coordinated buying burst that lifts the
    organiser's asks; the organiser sells what it has left as the price collapses.  It never
    sells more than it bought.  The pump moves the market itself: benign quotes follow it."""

    name = "pump_and_dump"
    entity_kind = "account"
    per_day = 0.7
    length = 4 * 3600.0
    defaults = {"min_crew": 5, "max_crew": 11}

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        market = ep.world.market
        org = ep.world.pick_customer(rng)
        # Never the organiser (a small population hands customers out again): no self-trades.
        crew = [
            c for c in (ep.world.pick_customer(rng) for _ in range(self.draw(rng, "crew"))) if c is not org
        ]
        crew = crew or [next(c for c in ep.pop.customers if c is not org)]
        t = ep.t0
        start_price = market.price(THIN_SYMBOL, t)
        held = 0.0
        for _ in range(rng.randrange(4, 8)):
            # Bought from whoever sells, at the market.
            price = market.price(THIN_SYMBOL, t)
            qty = round(rng.uniform(50_000, 150_000), 0)
            m.order(t, org.money_entities, None, THIN_SYMBOL, "buy", price, qty)
            seller = rng.choice(ep.pop.customers)
            if seller is org:  # no self-trades
                seller = crew[0]
            m.trade(t + 1, org.money_entities, THIN_SYMBOL, price, qty, "buy", seller.account, org.account)
            held += qty
            t += min(ep.room / 20, 600 + rng.random() * 1200)
        pump_start = t
        base = peak = market.price(THIN_SYMBOL, t)
        # The pump: the crew's market buys lift the organiser's asks, each a few percent higher.
        # The organiser sells part of what it holds into them, the rest in the dump after.
        buys = [c for c in crew for _ in range(rng.randrange(2, 5))]
        weights = [0.5 + rng.random() for _ in buys]
        into_pump = held * (0.4 + 0.3 * rng.random())
        left = held
        for c, w in zip(buys, weights, strict=True):
            peak = round(peak * (1.03 + rng.random() * 0.06), 6)
            qty = min(left, round(into_pump * w / sum(weights), 0))
            left -= qty
            m.order(t, c.money_entities, None, THIN_SYMBOL, "buy", peak, qty, "market")
            m.trade(t + 0.5, c.money_entities, THIN_SYMBOL, peak, qty, "buy", org.account, c.account)
            t += 5 + rng.random() * 40
        top = peak
        t += 60
        # The dump: whatever the organiser still holds, in tranches, each at a lower price.
        rounds = rng.randrange(3, 6)
        tranche = round(left / rounds, 0)
        for k in range(rounds):
            qty = left if k == rounds - 1 else tranche
            left -= qty
            m.order(t, org.money_entities, None, THIN_SYMBOL, "sell", peak, qty)
            buyer = rng.choice(crew).account
            m.trade(t + 0.5, org.money_entities, THIN_SYMBOL, peak, qty, "sell", buyer, org.account)
            peak = round(peak * 0.85, 6)
            t += 20 + rng.random() * 60
        # Benign quotes follow the pumped market while it lasts (halfway to the top, on average).
        market.move(THIN_SYMBOL, pump_start, t, (1 + top / base) / 2)
        return [
            ep.label(
                ref("account", org.account),
                related=[ref("account", c.account) for c in crew],
                params={"symbol": THIN_SYMBOL, "crew": str(len(crew)), "start_price": f"{start_price:g}"},
            )
        ]
