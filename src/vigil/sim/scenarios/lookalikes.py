"""Benign look-alikes of attacks, labelled ``benign:<name>`` so that precision means something.

Each resembles an attack on one signal and differs on the others: the traveller logs
in from abroad but on the usual device with MFA and changes nothing; the large
withdrawal goes to an address-book counterparty; the market maker cancels most orders
but they are small and two-sided; the employee exports during working hours from the
office; the DeFi approval goes to a well-known router.
"""

from __future__ import annotations

from vigil.events.base import Entities
from vigil.events.records import EpisodeLabel
from vigil.sim.factory import UNLIMITED
from vigil.sim.population import TRAVEL_PLACES, hex_id, ip_in
from vigil.sim.scenarios.base import Episode, Scenario, ref


class Traveller(Scenario):
    name = "benign:traveller"
    entity_kind = "customer"
    per_day = 3.0
    length = 3600.0

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        c = ep.world.pick_customer(rng)
        place = rng.choice(TRAVEL_PLACES)
        ip = ip_in(rng, place)
        ents = Entities(customer=c.id, account=c.account, device=c.devices[0], ip=ip, email=c.email)
        t = ep.t0
        m.login(t, ents, place.geo(), c.user_agent, mfa=True)
        m.mfa_challenge(t + 5, ents, "approved", "push")
        for _ in range(rng.randrange(1, 4)):
            t += 60 + rng.random() * 600
            sym = rng.choice(("BTC-USD", "ETH-USD"))
            price = ep.world.market.price(sym, t)
            m.order(t, Entities(customer=c.id, account=c.account), None, sym, "buy", price, 0.01)
        m.logout(t + 300, ents)
        return [ep.label(ref("customer", c.id), related=[ref("ip", ip)], params={"country": place.country})]


class NewPhone(Scenario):
    name = "benign:new_phone"
    entity_kind = "customer"
    per_day = 3.0
    length = 1800.0

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        c = ep.world.pick_customer(rng)
        device = f"dev-{hex_id(rng, 10)}"
        ents = Entities(customer=c.id, account=c.account, device=device, ip=c.ips[0], email=c.email)
        t = ep.t0
        m.login(t, ents, c.geo, "ExchangeApp/5.12.0 (iOS 18.1)", mfa=True)
        m.mfa_change(t + 40, ents, "device_added", "push")
        m.mfa_challenge(t + 60, ents, "approved", "push")
        price = ep.world.market.price("BTC-USD", t + 300)
        m.order(t + 300, c.money_entities, None, "BTC-USD", "buy", price, 0.002)
        return [ep.label(ref("customer", c.id), related=[ref("device", device)])]


class LargeKnownWithdrawal(Scenario):
    name = "benign:large_withdrawal_known_address"
    entity_kind = "customer"
    per_day = 3.0
    length = 1800.0

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        c = ep.world.pick_customer(rng)
        t = ep.t0
        m.login(t, c.entities, c.geo, c.user_agent, mfa=True)
        t += 60 + rng.random() * 300
        dest = c.address_book[0]
        amount = round(max(c.balances["USDT"], 2000.0) * (2 + rng.random() * 8), 2)
        delay = 60 + rng.random() * 600
        m.withdrawal(
            t, c, "USDT", amount, "ethereum", dest, delay=delay, hot_wallet=ep.pop.hot_wallets["ethereum"]
        )
        return [
            ep.label(ref("customer", c.id), related=[ref("wallet", dest)], params={"amount": f"{amount:.2f}"})
        ]


class MarketMaker(Scenario):
    name = "benign:market_maker"
    entity_kind = "account"
    per_day = 2.0
    length = 1800.0

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        c = ep.world.pick_customer(rng)
        e = c.money_entities
        sym = rng.choice(("BTC-USD", "ETH-USD", "SOL-USD"))
        t = ep.t0
        qty = round(1500 / ep.world.market.price(sym, t), 5)
        for _ in range(rng.randrange(40, 120)):
            # Quotes either side of the market as it is when they are placed.
            price = ep.world.market.price(sym, t)
            for side, k in (("buy", 0.9995), ("sell", 1.0005)):
                px = round(price * k, 2)
                o = m.order(t, e, None, sym, side, px, qty)
                if rng.random() < 0.92:
                    oid = o.payload.order_id
                    m.cancel(t + 0.5 + rng.random() * 3, e, oid, sym, side, px, qty, t)
                else:
                    m.trade(t + 1, e, sym, px, qty, "sell" if side == "buy" else "buy", c.account, None)
            t += 4 + rng.random() * 10
        return [ep.label(ref("account", c.account), params={"symbol": sym})]


class EmployeeReport(Scenario):
    name = "benign:employee_report"
    entity_kind = "employee"
    per_day = 2.0
    length = 900.0

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        e = ep.world.pick_employee(rng, lambda x: x.role in ("crm", "marketing", "compliance"))
        t = ep.within(e.work_hours, ep.t0, length=120)
        ents = Entities(employee=e.id, vendor=e.crm, ip=e.ip, email=e.email)
        m.crm_login(t, ents, e.crm, e.email, None, "Mozilla/5.0 (Windows NT 10.0; Win64; x64)")
        ids = ep.pop.vendors[e.crm].customer_ids
        chunk = sorted(rng.sample(ids, min(len(ids), max(100, len(ids) // 4))))
        m.crm_export(t + 120, ents, e.crm, chunk, e.email, None)
        return [ep.label(ref("employee", e.id), params={"records": str(len(chunk))})]


class DefiApproval(Scenario):
    name = "benign:defi_approval"
    entity_kind = "wallet"
    per_day = 3.0
    length = 600.0

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        c = ep.world.pick_customer(rng)
        spenders = ep.pop.counterparties.defi_spenders
        name = rng.choice(sorted(spenders))
        spender = spenders[name]
        t = ep.t0
        m.token_approval(t, c.own_wallet, spender, "USDT", UNLIMITED, m.tx_hash("approve"))
        amount = round(200 + rng.random() * 3000, 2)
        m.chain_transfer(
            t + 30, "ethereum", c.own_wallet, spender, "USDT", amount, m.tx_hash("swap"), log_index=0
        )
        return [
            ep.label(
                ref("wallet", c.own_wallet), related=[ref("counterparty", spender)], params={"spender": name}
            )
        ]


class VendorBulkSync(Scenario):
    name = "benign:vendor_bulk_sync"
    entity_kind = "vendor"
    per_day = 1.0
    length = 600.0

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        v = ep.pop.vendors["hubspot"]
        ip = v.integration_ips[0]
        ents = Entities(vendor=v.id, ip=ip, api_key=v.api_tokens[0])
        t = ep.t0
        for _ in range(rng.randrange(3, 8)):
            m.crm_token(
                t,
                ents,
                v.platform,
                v.api_tokens[0],
                "crm.objects.contacts.batch.read",
                1000,
                None,
                "exchange-sync/2.3",
            )
            t += 10 + rng.random() * 30
        return [ep.label(ref("vendor", v.id), related=[ref("ip", ip)])]


class ColdStorageSweep(Scenario):
    """Treasury moving hot-wallet surplus to cold storage: large, fast, out of the hot wallet, but to
    the exchange's own cold wallet, in working hours, with no cloud-credential anomaly."""

    name = "benign:cold_storage_sweep"
    entity_kind = "wallet"
    per_day = 1.0
    length = 900.0

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        hot, cold = ep.pop.hot_wallets["ethereum"], ep.pop.cold_wallets["ethereum"]
        e = ep.world.pick_employee(rng, lambda x: x.role == "finance")
        t = ep.within(e.work_hours, ep.t0, length=120)
        m.cloudtrail(t, e.id, e.ip, "Sign")
        for i in range(rng.randrange(1, 3)):
            asset = "ETH" if i == 0 else "USDT"
            amount = round(rng.uniform(300, 1500), 4) if asset == "ETH" else round(rng.uniform(1e6, 4e6), 2)
            m.chain_transfer(t + 60 + 30 * i, "ethereum", hot, cold, asset, amount, m.tx_hash("sweep", i))
        return [ep.label(ref("wallet", hot), related=[ref("wallet", cold), ref("employee", e.id)])]


class NewAddressTestFirst(Scenario):
    """A customer adds a new withdrawal address from the usual device, sends a small test,
    then the real amount: new address and withdrawal, but no new device, IP or credential change."""

    name = "benign:new_address_test_first"
    entity_kind = "customer"
    per_day = 2.0
    length = 3600.0

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        c = ep.world.pick_customer(rng)
        hot = ep.pop.hot_wallets["ethereum"]
        t = ep.t0
        m.login(t, c.entities, c.geo, c.user_agent, mfa=True)
        t += 60 + rng.random() * 120
        dest = ep.fresh_address()
        m.withdrawal_address_added(t, c, dest, "USDT", "ethereum")
        t += 120 + rng.random() * 300
        m.withdrawal(t, c, "USDT", 10.0, "ethereum", dest, delay=60 + rng.random() * 300, hot_wallet=hot)
        t += 900 + rng.random() * 900
        amount = round(max(c.balances["USDT"], 500.0) * (0.3 + rng.random() * 0.4), 2)
        m.withdrawal(t, c, "USDT", amount, "ethereum", dest, delay=60 + rng.random() * 300, hot_wallet=hot)
        return [ep.label(ref("customer", c.id), related=[ref("wallet", dest)])]


class ForgotPassword(Scenario):
    """A password reset from the usual device and IP, then a withdrawal to a known address."""

    name = "benign:forgot_password"
    entity_kind = "customer"
    per_day = 2.0
    length = 3600.0

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        c = ep.world.pick_customer(rng)
        t = ep.t0
        m.failed_login(t, c.entities, c.email, c.geo, c.user_agent, "bad_password")
        m.password_reset(t + 30, c.entities, "email", "requested")
        m.password_reset(t + 200 + rng.random() * 300, c.entities, "email", "completed")
        t += 700
        m.login(t, c.entities, c.geo, c.user_agent, mfa=True)
        t += 120 + rng.random() * 600
        amount = round(max(c.balances["ETH"], 0.1) * (0.2 + rng.random() * 0.5), 6)
        m.withdrawal(
            t,
            c,
            "ETH",
            amount,
            "ethereum",
            c.address_book[0],
            delay=60 + rng.random() * 300,
            hot_wallet=ep.pop.hot_wallets["ethereum"],
        )
        return [ep.label(ref("customer", c.id), related=[ref("wallet", c.address_book[0])])]
