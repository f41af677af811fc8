"""Market abuse: wash trading, spoofing, pump-and-dump of a thin market."""

from __future__ import annotations

from vigil.events.base import Entities
from vigil.events.records import EpisodeLabel
from vigil.sim.population import SYMBOL_PRICES, THIN_SYMBOL, hex_id
from vigil.sim.scenarios.base import Episode, Scenario, ref


class WashTrading(Scenario):
    """Linked accounts (one device) trading the same size back and forth at the same price."""

    name = "wash_trading"
    entity_kind = "account"
    per_day = 1.5
    length = 3600.0

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        accts = [ep.world.pick_customer(rng) for _ in range(rng.randrange(2, 4))]
        device = f"dev-{hex_id(rng, 10)}"
        ip = accts[0].ips[0]
        ents = [Entities(customer=c.id, account=c.account, device=device, ip=ip) for c in accts]
        t = ep.t0
        for c, e in zip(accts, ents, strict=True):
            m.login(t, e, c.geo, c.user_agent)
            t += 5 + rng.random() * 30
        sym = rng.choice(("SOL-USD", "ETH-USD"))
        price = SYMBOL_PRICES[sym]
        qty = round(5000 / price, 4)
        for i in range(rng.randrange(20, 60)):
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

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        c = ep.world.pick_customer(rng)
        e = c.money_entities
        sym = rng.choice(("BTC-USD", "ETH-USD"))
        price = SYMBOL_PRICES[sym]
        spoof_side, real_side = ("buy", "sell") if rng.random() < 0.5 else ("sell", "buy")
        t = ep.t0
        big = round(400_000 / price, 4)
        rounds = rng.randrange(10, 30)
        for _ in range(rounds):
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
    """Quiet accumulation of a thin market, a coordinated buying burst, then the organiser sells."""

    name = "pump_and_dump"
    entity_kind = "account"
    per_day = 0.7
    length = 4 * 3600.0

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        org = ep.world.pick_customer(rng)
        crew = [ep.world.pick_customer(rng) for _ in range(rng.randrange(5, 12))]
        price = SYMBOL_PRICES[THIN_SYMBOL]
        t = ep.t0
        held = 0.0
        for _ in range(rng.randrange(4, 8)):
            qty = round(rng.uniform(50_000, 150_000), 0)
            m.order(t, org.money_entities, None, THIN_SYMBOL, "buy", price, qty)
            m.trade(
                t + 1,
                org.money_entities,
                THIN_SYMBOL,
                price,
                qty,
                "buy",
                rng.choice(ep.pop.customers).account,
                org.account,
            )
            held += qty
            t += min(ep.room / 20, 600 + rng.random() * 1200)
        peak = price
        for c in crew:
            for _ in range(rng.randrange(2, 5)):
                peak = round(peak * (1.03 + rng.random() * 0.06), 6)
                qty = round(rng.uniform(10_000, 60_000), 0)
                m.order(t, c.money_entities, None, THIN_SYMBOL, "buy", peak, qty, "market")
                m.trade(t + 0.5, c.money_entities, THIN_SYMBOL, peak, qty, "buy", org.account, c.account)
                t += 5 + rng.random() * 40
        t += 60
        for _ in range(rng.randrange(3, 6)):
            qty = round(held / 4, 0)
            m.order(t, org.money_entities, None, THIN_SYMBOL, "sell", peak, qty)
            m.trade(
                t + 0.5,
                org.money_entities,
                THIN_SYMBOL,
                peak,
                qty,
                "sell",
                org.account,
                rng.choice(crew).account,
            )
            peak = round(peak * 0.85, 6)
            t += 20 + rng.random() * 60
        return [
            ep.label(
                ref("account", org.account),
                related=[ref("account", c.account) for c in crew],
                params={"symbol": THIN_SYMBOL, "crew": str(len(crew)), "start_price": f"{price:g}"},
            )
        ]
