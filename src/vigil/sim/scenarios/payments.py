"""Money-movement typologies: structuring, money mules, card testing."""

from __future__ import annotations

from vigil.events.base import Entities
from vigil.events.records import EpisodeLabel
from vigil.sim.population import hex_id
from vigil.sim.scenarios.base import (
    ATTACK_DECLINE_REASONS,
    BENIGN_DECLINE_REASONS,
    INSUFFICIENT_FUNDS,
    Episode,
    Scenario,
    draw_reason,
    ref,
)

#: The default reporting threshold (the US currency transaction report's).
REPORTING_THRESHOLD_USD = 10_000.0


class Structuring(Scenario):
    """Repeated cash-in (or cash-out) just under the reporting threshold."""

    name = "structuring"
    entity_kind = "customer"
    per_day = 1.5
    length = 12 * 3600.0
    defaults = {"threshold_usd": REPORTING_THRESHOLD_USD, "min_moves": 4, "max_moves": 8}

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        c = ep.world.pick_customer(rng)
        threshold = self.amount("threshold_usd")
        n = self.draw(rng, "moves")
        gap = min(3 * 3600.0, ep.room / (n + 1))
        t = ep.t0
        outgoing = ep.index % 2 == 1
        total = 0.0
        for _ in range(n):
            amount = round(threshold * (0.9 + rng.random() * 0.095), 2)
            total += amount
            if outgoing:
                m.withdrawal(t, c, "USD", amount, None, None, delay=1800 + rng.random() * 1800)
            else:
                m.fiat_deposit(t, c, amount)
            t += gap * (0.5 + rng.random())
        return [
            ep.label(
                ref("customer", c.id),
                related=[ref("account", c.account)],
                params={
                    "direction": "out" if outgoing else "in",
                    "count": str(n),
                    "threshold_usd": f"{threshold:g}",
                    "total_usd": f"{total:.2f}",
                },
            )
        ]


class MoneyMule(Scenario):
    """Several deposits from unrelated sources, passed out again within minutes."""

    name = "money_mule"
    entity_kind = "customer"
    per_day = 1.5
    length = 2 * 3600.0

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        c = ep.world.pick_customer(rng)
        t = ep.t0
        total = 0.0
        sources = []
        for _ in range(rng.randrange(3, 7)):
            src = ep.fresh_address()
            sources.append(src)
            amount = round(800 + rng.random() * 4000, 2)
            total += amount
            m.deposit(t, c, "USDT", amount, "ethereum", src, confirm_after=60 + rng.random() * 120)
            t += 120 + rng.random() * 600
        t += 120 + rng.random() * 600
        dest = ep.fresh_address()
        delay = 60 + rng.random() * 600
        out = round(total * (0.92 + rng.random() * 0.06), 2)
        m.withdrawal(
            t, c, "USDT", out, "ethereum", dest, delay=delay, hot_wallet=ep.pop.hot_wallets["ethereum"]
        )
        return [
            ep.label(
                ref("customer", c.id),
                related=[ref("wallet", dest)] + [ref("wallet", s) for s in sources],
                funds_leave_at=t + delay,
                params={"deposits": str(len(sources)), "in_usd": f"{total:.2f}", "out_usd": f"{out:.2f}"},
            )
        ]


class CardTesting(Scenario):
    """Many tiny payments with many different stolen cards, mostly declined."""

    name = "card_testing"
    entity_kind = "customer"
    per_day = 1.5
    length = 1800.0
    defaults = {"min_tries": 25, "max_tries": 89, "approval_rate": 0.15}

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        c = ep.world.pick_customer(rng)
        a = ep.attacker()
        ents = Entities(customer=c.id, account=c.account, device=a.device, ip=a.ip)
        t = ep.t0
        tries = self.draw(rng, "tries")
        approval = self.amount("approval_rate")
        approved = 0
        benign = BENIGN_DECLINE_REASONS
        for _ in range(tries):
            t += 3 + rng.expovariate(1 / 12)
            card = f"fp-{hex_id(rng, 12)}"
            ok = rng.random() < approval
            approved += ok
            m.payment(
                t,
                ents,
                round(0.5 + rng.random() * 1.5, 2),
                rng.choice(("donation-site", "app-store", "micro-merchant")),
                card,
                status="approved" if ok else "declined",
                # As benign declines give them: a reason only attacks gave would label them.
                decline_reason=None
                if ok
                else draw_reason(rng, ATTACK_DECLINE_REASONS, benign, INSUFFICIENT_FUNDS),
            )
        return [
            ep.label(
                ref("customer", c.id),
                related=[ref("device", a.device), ref("ip", a.ip)],
                params={"attempts": str(tries), "approved": str(approved)},
            )
        ]
